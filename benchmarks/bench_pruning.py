"""Pruning: the dropout study with and without median pruning, at the same trial count.

    .venv/bin/python benchmarks/bench_pruning.py [--data data/results/erass8_10k.h5] [--clusters 2000]
        [--epochs 24] [--workers 2]

Both runs are search_spaces/dropout.yaml (8 rates x 2 placements, one seed) on the first
`--clusters` clusters of one eRASS:8 mock, `--epochs` epochs per trial, same grid order and
seeds. The baseline is the study without a pruner; the other prunes with the file's median
pruner, its warm-up scaled by the file's own ratio (20 of 400 epochs: 1 of 24). Prints epochs
spent and the best val_residual_std of each; targets: >= 40% fewer epochs, best within 0.005 dex.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from studies import ROOT
from studies import best_value
from studies import derive_space
from studies import epochs_spent
from studies import finished
from studies import run_study

from emit import emit

from hpo.data.sim.config import SimConfig
from hpo.data.sim.simulator import write_mock


def main() -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data/results/erass8_10k.h5")
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_pruning_"))
    if not args.data.exists():
        write_mock(args.data, max(args.clusters, 10_000), 0, SimConfig())
    src = ROOT / "search_spaces/dropout.yaml"
    raw = yaml.safe_load(src.read_text())
    pruner = raw["study"]["pruner"]
    warmup = max(1, round(pruner["n_warmup_steps"] * args.epochs / raw["base"]["train"]["epochs"]))
    common = {
        "data.path": str(args.data.resolve()),
        "data.max_clusters": args.clusters,
        "base.train.epochs": args.epochs,
        "study.repeats": 1,
    }
    rows = {}
    for name, spec in (("no pruning", {"type": "none"}),
                       ("median pruning", {**pruner, "n_warmup_steps": warmup})):
        slug = "pruned" if spec["type"] != "none" else "unpruned"
        space = derive_space(src, work / f"{slug}.yaml",
                             {**common, "study.name": f"dropout-{slug}", "study.pruner": spec})
        study = run_study(space, work / slug, workers=args.workers)
        trials = finished(study)
        rows[name] = (len(trials), sum(t.state.name == "PRUNED" for t in trials),
                      epochs_spent(trials), best_value(study))

    base_epochs, base_best = rows["no pruning"][2], rows["no pruning"][3]
    lines = [
        f"Pruning, dropout study (16 grid points, one seed), {args.clusters} eRASS:8 clusters, "
        f"{args.epochs} epochs per trial, {args.workers} workers; median pruner with "
        f"{pruner['n_startup_trials']} startup trials and a {warmup}-epoch warm-up:",
        "",
        "| run | trials | pruned | epochs spent | epochs vs baseline | best val residual std | vs baseline |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (n, pruned, epochs, best) in rows.items():
        label = f"baseline: {name}" if name == "no pruning" else name
        lines.append(f"| {label} | {n} | {pruned} | {epochs} | {epochs / base_epochs:.2f} | "
                     f"{best:.4f} | {best - base_best:+.4f} dex |")
    saved = 1 - rows["median pruning"][2] / base_epochs
    gap = rows["median pruning"][3] - base_best
    lines += ["", f"Epochs saved: {saved:.0%} (target >= 40%); best differs by {gap:+.4f} dex "
              f"(target within 0.005)."]
    table = "\n".join(lines)
    return emit("pruning", table)


if __name__ == "__main__":
    main()
