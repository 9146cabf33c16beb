"""The lab report's experiments on mock data at a CPU budget; writes docs/results.md (one command).

    .venv/bin/python benchmarks/make_results.py                  # about 1 h on 2 cores
    .venv/bin/python benchmarks/make_results.py --clusters 10000 --epochs 200 --combined-trials 100

Stages, each resumable (a finished study is joined, not rerun; work in data/results/):
1. the eight one-at-a-time studies of search_spaces/ (filters, kernel_size, optimizer, loss,
   dropout, regularizers, batch_size, augmentation), each grid point once, on the first
   `--clusters` clusters of a 10,000-cluster eRASS:8 mock, `--epochs` epochs, no pruning (a
   scan needs every point); a scan plot each, against the counts baseline and oracle floor;
2. search_spaces/combined.yaml (TPE + median pruning) on all 10,000 clusters, the loss fixed to
   the Gaussian likelihood so that every trial has a calibrated sigma to score;
3. its best configuration trained again for `--final-epochs` and scored once on the test split
   (residual std, bias, 68% coverage, with test-time augmentation as configured);
4. that model on eFEDS and eRASS1 mocks (other seeds): how far a model travels.
Every derived space file is written to docs/results/spaces/, so a reader sees what ran.

With `--combined-from gpu.json [more.json ...]`, stages 2-4 come from benchmarks/gpu_study.py's
output instead (a GPU machine without TensorFlow or MLflow): the study of the first file, the
final trainings of all, the champion the lowest validation rmse among them; the files are copied
to docs/results/ beside the page.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import yaml
from studies import ROOT
from studies import derive_space
from studies import epochs_spent
from studies import finished
from studies import run_study

from hpo.config.overrides import apply_overrides
from hpo.config.overrides import flatten
from hpo.data.baseline import floors
from hpo.data.contract import load_dataset
from hpo.data.sim_config import load_sim_config
from hpo.data.simulator import write_mock
from hpo.objective.keys import CONFIG_KEY
from hpo.objective.space import load_space
from hpo.tracking.scan_plot import scan
from hpo.tracking.scan_plot import scanned_param
from hpo.training.evaluate import score
from hpo.training.loop import train

EXPERIMENTS = ["filters", "kernel_size", "optimizer", "loss", "dropout", "regularizers",
               "batch_size", "augmentation"]
DOCS = ROOT / "docs"
FIGURES = DOCS / "figures" / "results"
SPACES = DOCS / "results" / "spaces"
TRANSFER = {"eFEDS": 1, "eRASS1": 2}  # preset: simulator seed (not the training file's 0)
# The report ran the optimiser scan at batch 512 for 300 epochs; at a CPU budget of a few
# epochs on a small file that is a handful of steps, so the scan runs at the default batch.
# The regulariser scan keeps the report's strength 1e-4 only (12 points, not 36).
_REG = yaml.safe_load((ROOT / "search_spaces" / "regularizers.yaml").read_text())["params"]
EXTRA = {
    "optimizer": {"base.train.batch_size": 64},
    "regularizers": {"params": {**_REG, "model.regularizer": {"categorical": [{"l1": 1.0e-4, "l2": 1.0e-4}]}}},
}
# What the CPU budget changes in a scan, said beside its result.
CAVEATS = {
    "optimizer": "At this budget the scan runs at batch 64, not the report's 512 (a few epochs at "
                 "512 are a handful of optimizer steps).",
    "loss": "The warm-start variant's 20 MSE epochs are more than this budget's epochs, so it "
            "trains as MSE throughout; the likelihood's advantage is its calibrated sigma "
            "(see the combined study), not a lower residual std.",
    "filters": "Wide layers (61-91 filters) are the least trained at a fixed epoch budget.",
    "dropout": "Dropout pays off late, against overfitting; a few epochs cannot show it.",
    "regularizers": "At this budget only the report's strength (1e-4) is scanned, not 1e-5 and "
                    "1e-3. Regularisers, like dropout, act against overfitting, which a few "
                    "epochs barely reach; type `none` is the same network at every target.",
}


# How hpo promote chooses and gates a champion (static text; the margin's reason is the finals' seed spread).
CHAMPION_SECTION = [
    '## How a champion is chosen',
    '',
    "`hpo promote` keeps the test split out of every choice. It picks the study's winner on validation (`study.metric`, or `--select-by`; the combined study selects on **validation rmse**, for the reason above), scores that one model once on the test split and records the scores on its registered version beside the floors and the cluster count. The alias `champion` then moves only through a gate:",
    '',
    "- **Like with like.** The champion is scored on the same test clusters only when its version carries the same data fingerprint and split settings (`hpo.data_sha256`, `hpo.split.*`). With split seed 1 instead of 0, 49 of the 60 test clusters of a 600-cluster file are in the other model's training set; with a regenerated file, all of them may be. Promote then refuses, saying what differs; `--compare-on FILE` scores both on a labelled file neither trained on.",
    "- **Paired, with an interval.** Both models predict the same clusters; the gain is the champion's score minus the challenger's, and its 95% interval comes from 2000 resamples of the clusters, the same resample for both models, so what they share (hard clusters, easy ones) cancels.",
    '- **By a margin.** The challenger must be better by more than `--min-gain` and the interval must exclude 0. The default margin, **0.005 dex**, is the spread of one configuration retrained with another seed: the finals above differ by up to 0.004 dex in test residual std between seeds 1 and 2 of one trial (trial 25: 0.156 and 0.152), so a smaller gain says nothing about the configuration.',
    '',
    'Both scores, the gain, its interval, the margin, the cluster count and the verdict are tags of the new version (`hpo.gate.*`), on its page in the MLflow UI. Promotes run at once take turns on a lock, so a run is registered once and the alias never moves to a model that lost the comparison.',
    "",
]

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "results")
    parser.add_argument("--clusters", type=int, default=1000, help="clusters of the eight studies")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trial of the eight studies")
    parser.add_argument("--combined-trials", type=int, default=6)
    parser.add_argument("--combined-epochs", type=int, default=12)
    parser.add_argument("--final-epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated experiments (default: all)")
    parser.add_argument("--combined-from", type=Path, nargs="*", default=[],
                        help="gpu_study.py outputs: the combined study and final model from a GPU run")
    args = parser.parse_args()
    os.chdir(ROOT)  # the derived spaces name their data relative to the repository
    work = args.work.resolve()

    main_file = _relative(mock(work / "erass8_10k.h5", 10_000, 0, "eRASS:8"))
    ds = load_dataset(main_file)
    floor = floors(ds)
    print(f"floors of {main_file.name}: {floor}", flush=True)

    sections, rows = [], []
    names = args.only.split(",") if args.only else EXPERIMENTS
    for name in names:
        section, row = experiment(name, main_file, floor, work, args)
        sections.append(section)
        rows.append(row)

    if args.combined_from:
        combined, final, transfer = from_gpu(args.combined_from, work)
        return page(args, floor, rows, sections, combined, final, transfer)
    combined = combined_study(main_file, work, args)
    # The final training is the one stage a study cannot resume: its scores are kept, keyed by
    # what produced them, so that rewriting the page does not train it again.
    key = {"best_trial": combined["best"].number, "best_value": combined["best"].value,
           "final_epochs": args.final_epochs, "data": str(main_file)}
    cache = work / "final.json"
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    if saved.get("key") == key:
        final, transfer = saved["final"], saved["transfer"]
    else:
        final = {**final_model(combined, ds, floor, args), "final_epochs": args.final_epochs}
        model = final.pop("model")
        transfer = [travel(model, final["tta"], preset, seed, work) for preset, seed in TRANSFER.items()]
        cache.write_text(json.dumps({"key": key, "final": final, "transfer": transfer}, default=float))
    page(args, floor, rows, sections, combined, final, transfer)


def mock(path: Path, n: int, seed: int, preset: str) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mock(path, n, seed, load_sim_config(preset=preset))
    return path


def experiment(name: str, data: Path, floor: dict, work: Path, args: argparse.Namespace) -> tuple[str, dict]:
    """One of the report's scans at the CPU budget: its scan plot, best point, and a section."""
    src = ROOT / "search_spaces" / f"{name}.yaml"
    space_file = derive_space(src, SPACES / f"{name}.yaml", {
        "study.name": f"{name}-cpu", "study.repeats": 1, "study.pruner": {"type": "none"},
        "data.path": str(data), "data.max_clusters": args.clusters, "base.train.epochs": args.epochs,
        **EXTRA.get(name, {}),
    })
    study = run_study(space_file, work / "studies", workers=args.workers)
    space = load_space(space_file)
    trials = finished(study)
    # From the trials, not this call's clock: a finished study is joined in seconds.
    seconds = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    done = [t for t in trials if t.value is not None]
    x = scanned_param(done, list(space.params))
    grid = space.grid()
    fig = scan(trials, x, x_order=grid.get(x, ()), floors=floor,
               title=f"{name}: val residual std, {args.clusters} eRASS:8 clusters, {args.epochs} epochs")
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES / f"{name}.png", dpi=90)
    best = min(done, key=lambda t: t.value)
    worst = max(done, key=lambda t: t.value)
    about = [line[2:] for line in src.read_text().splitlines() if line.startswith("# ")]
    params = ", ".join(f"`{k}` = {_short(v)}" for k, v in best.params.items())
    section = "\n".join([
        f"### {name}", "",
        " ".join(about[: next((i for i, a in enumerate(about) if a.startswith(("Data:", "Budget:"))), len(about))]),
        "",
        f"{len(done)} grid points, one seed each; {epochs_spent(trials)} epochs in {seconds / 60:.1f} min. "
        f"Best: {params}: **{best.value:.3f} dex** ({best.value / floor['oracle_floor']:.2f} x the oracle floor, "
        f"{best.value / floor['counts_baseline']:.2f} x the counts baseline); worst {worst.value:.3f} dex. "
        f"Space: [`docs/results/spaces/{name}.yaml`](results/spaces/{name}.yaml). {CAVEATS.get(name, '')}".rstrip(),
        "", f"![{name}](figures/results/{name}.png)", "",
    ])
    row = {"name": name, "points": len(done), "best": best.value, "worst": worst.value,
           "best_params": params, "seconds": seconds}
    print(f"{name}: best {best.value:.4f} ({params}) in {seconds:.0f} s", flush=True)
    return section, row


def combined_study(data: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The combined TPE study, the loss fixed to the Gaussian likelihood."""
    src = ROOT / "search_spaces" / "combined.yaml"
    raw = yaml.safe_load(src.read_text())
    params = {k: v for k, v in raw["params"].items() if k != "train.loss.type"}
    warmup = max(3, args.combined_epochs // 4)
    space_file = derive_space(src, SPACES / "combined.yaml", {
        "study.name": "combined-cpu", "study.n_trials": args.combined_trials,
        "study.sampler.options.n_startup_trials": max(4, args.combined_trials // 3),
        "study.pruner": {"type": "median", "n_startup_trials": 4, "n_warmup_steps": warmup},
        "data.path": str(data), "base.train.epochs": args.combined_epochs,
        "base.train.loss.type": "gaussian_nll", "params": params,
    })
    study = run_study(space_file, work / "studies", workers=args.workers)
    trials = finished(study)
    best = study.best_trial
    print(f"combined: best {best.value:.4f} (trial {best.number})", flush=True)
    return {"study": study, "best": best, "trials": trials, "epochs": epochs_spent(trials),
            "pruned": sum(t.state.name == "PRUNED" for t in trials),
            "space": "combined.yaml", "where": f"{args.combined_trials} trials of up to {args.combined_epochs} "
            "epochs on this CPU"}


def from_gpu(paths: list[Path], work: Path) -> tuple[dict, dict, list[dict]]:
    """Stages 2-4 from gpu_study.py's JSON files: the study of the run that holds most trials, the finals of all."""
    runs = [json.loads(path.read_text()) for path in paths]
    study = max(runs, key=lambda run: len(run["trials"]))  # a resumed study's run holds it all
    leases = [run["study_seconds"] for run in runs if run["study_seconds"] > 1]  # not finals-only
    params = {t["number"]: t["params"] for t in study["trials"]}
    finals = [{**f, "pass": i + 1, "params": params[f["trial"]]}
              for i, run in enumerate(runs) for f in run["finals"]]
    champion = min(finals, key=lambda f: f["val"]["rmse"])  # as gpu_study.py chooses
    trials = study["trials"]
    done = [t for t in trials if t["state"] == "COMPLETE"]
    best = min(done, key=lambda t: t["value"])
    for path in paths:
        (DOCS / "results" / path.name).write_text(path.read_text())
    space = Path(study["space"]).name
    spec = load_space(study["space"])
    combined = {
        "trials": trials, "time_boxed": sum(bool(t.get("time_boxed")) for t in trials),
        "pruned": sum(t["state"] == "PRUNED" and not t.get("time_boxed") for t in trials),
        "failed": sum(t["state"] == "FAIL" for t in trials), "epochs": sum(t["epochs"] for t in trials),
        "space": space,
        "best": SimpleNamespace(number=best["number"], value=best["value"], params=best["params"]),
        "where": f"as trials of up to {spec.resolved_base().train.epochs} epochs in "
                 f"{study['workers']} worker processes sharing one {study['device']} for "
                 f"{sum(leases) / 60:.0f} min{f' in {len(leases)} leases' if len(leases) > 1 else ''} "
                 f"(Keras {study['keras']} on {study['backend']} "
                 f"{study['backend_version']}, Optuna {study['optuna']})",
        "finals": sorted(finals, key=lambda f: f["val"]["rmse"]),
        "sources": [path.name for path in paths],
    }
    startup = spec.study.pruner.n_startup_trials
    notes = []
    if combined["pruned"] == 0 and len(done) <= startup:
        notes.append(f"The median pruner waits for {startup} finished trials; {len(done)} "
                     "finished inside the time box, so it pruned none.")
    notes += _axis_added(trials, spec)
    late = [t for t in trials if t["state"] == "PRUNED" and not t.get("time_boxed")
            and t["epochs"] >= 0.9 * spec.resolved_base().train.epochs]
    if late:
        notes.append(f"{len(late)} trials (e.g. {', '.join(str(t['number']) for t in late[:3])}) were pruned after "
                     f"{min(t['epochs'] for t in late)}+ epochs: at late epochs the median pruner compares a trial "
                     "only with the few trials that ran that long (early stopping ends most sooner), and a "
                     "pruned trial cannot become a finalist.")
    combined["note"] = " ".join(notes)
    final = {**champion, "final_epochs": champion["epochs"]}
    transfer = []
    for item in champion["transfer"]:
        seed = TRANSFER[item["preset"]]
        other = load_dataset(mock(work / f"{item['preset'].replace(':', '')}_3k.h5", 3000, seed, item["preset"]))
        transfer.append({**item, **floors(other)})
    return combined, final, transfer


def _axis_added(trials: list[dict], spec: Any) -> list[str]:
    """Says where the study's space gained an axis, and which trials tried it at the best points."""
    first_params = trials[0]["params"] if trials else {}
    new_axes = [path for path in spec.params if path not in first_params]
    enqueued = [t for t in trials if t.get("enqueued_from") is not None]
    if not new_axes:
        return []
    first = min(t["number"] for t in trials if all(a in t["params"] for a in new_axes))
    base = flatten(spec.resolved_base().model_dump(mode="json"))
    before = ", ".join(f"`{a}` = {base[a]}" for a in new_axes)
    out = [f"The space gained `{'`, `'.join(new_axes)}` after trial {first - 1} (trials up to it ran with "
           f"the base config's {before})."]
    if enqueued:
        pairs = ", ".join(f"{t['number']} (from {t['enqueued_from']})" for t in enqueued)
        values = ", ".join(f"`{a}` = {enqueued[0]['params'][a]}" for a in new_axes)
        out.append(f"The resumed study first ran its {len(enqueued)} best configurations again with {values} "
                   f"(enqueued trials {pairs}); TPE then drew the axis like any other.")
    return out


def final_model(combined: dict, ds: Any, floor: dict, args: argparse.Namespace) -> dict[str, Any]:
    """The best combined configuration trained for --final-epochs, scored once on the test split."""
    cfg = apply_overrides({"train.epochs": args.final_epochs},
                          base=apply_overrides(combined["best"].user_attrs[CONFIG_KEY]))
    t0 = time.perf_counter()
    result = train(cfg, ds)
    metrics = score(result.model, ds.subset(result.split.test), tta=cfg.train.augment.tta)
    print(f"final: test {metrics} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"model": result.model, "tta": cfg.train.augment.tta, "val": result.val_metrics,
            "test": metrics, "n_test": len(result.split.test), "best_epoch": result.best_epoch,
            "seconds": time.perf_counter() - t0}


def travel(model: Any, tta: bool, preset: str, seed: int, work: Path) -> dict[str, Any]:
    """The champion on another exposure preset: residual metrics beside that file's floors."""
    path = mock(work / f"{preset.replace(':', '')}_3k.h5", 3000, seed, preset)
    other = load_dataset(path)
    out = {"preset": preset, "n": len(other), **score(model, other, tta=tta), **floors(other)}
    print(f"transfer {preset}: {out}", flush=True)
    return out


def page(args: argparse.Namespace, floor: dict, rows: list[dict], sections: list[str],
         combined: dict, final: dict, transfer: list[dict]) -> None:
    of, cb = floor["oracle_floor"], floor["counts_baseline"]
    t = final["test"]
    ratio = t["residual_std"] / of
    gpu = "finals" in combined
    epochs = final.get("final_epochs", args.final_epochs)
    lines = [
        "# Results: the lab report's experiments on mock data",
        "",
        "Regenerated by `.venv/bin/python benchmarks/make_results.py"
        f"{' --combined-from ' + ' '.join('docs/results/' + n for n in combined['sources']) if gpu else ''}` "
        f"(this page: {os.cpu_count()} CPU cores, {platform.machine()}, the eight scans "
        f"{sum(r.get('seconds', 0) for r in rows) / 60:.0f} min"
        f"{'; the combined study and final model on a GPU, by benchmarks/gpu_study.py' if gpu else ', no GPU'}).",
        "",
        "**The numbers depend on the budget.** The report trained for 200-400 epochs on 8,939 clusters; "
        f"a 2-core CPU affords here {args.epochs} epochs per trial on {args.clusters} clusters for the "
        "eight scans. At this budget the networks are under-trained and the validation split of the "
        f"scans is small ({int(0.1 * args.clusters)} clusters: a residual std is uncertain by about "
        f"{0.2 / np.sqrt(2 * 0.1 * args.clusters):.3f} dex), so differences between neighbouring grid "
        "points are mostly noise; the shapes that survive are what to read. The combined study ran "
        f"{combined['where']} on 10,000 clusters; the final model trained up to {epochs} epochs. "
        "The search spaces' own budgets (`--clusters 10000 --epochs 200 --combined-trials 100 "
        "--combined-epochs 200 --final-epochs 400`) are a GPU job of a few hours.",
        "",
        "Data: one eRASS:8 mock of 10,000 clusters (`hpo simulate --n 10000 --seed 0 --preset eRASS:8`); "
        f"its floors ([docs/simulator.md](simulator.md)): oracle floor **{of:.3f} dex**, counts baseline **{cb:.3f} dex**.",
        "",
        "## The eight experiments",
        "",
        "| experiment | grid points | best val residual std | x oracle floor | x counts baseline | best point |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        *(f"| [{r['name']}](#{r['name'].replace('_', '')}) | {r['points']} | {r['best']:.3f} | "
          f"{r['best'] / of:.2f} | {r['best'] / cb:.2f} | {r['best_params']} |" for r in rows),
        "",
        *sections,
        "",
        "## The combined study",
        "",
        f"TPE with median pruning over every axis at once ([`docs/results/spaces/{combined['space']}`]"
        f"(results/spaces/{combined['space']})), the loss fixed to the Gaussian likelihood, "
        f"{combined['where']}: {len(combined['trials'])} trials ({combined['pruned']} pruned"
        f"{', %d cut short by the time box' % combined['time_boxed'] if combined.get('time_boxed') else ''}"
        f"{', %d failed' % combined['failed'] if combined.get('failed') else ''}), {combined['epochs']} epochs. "
        f"{combined['note'] + ' ' if combined.get('note') else ''}Best validation residual std "
        f"**{combined['best'].value:.3f} dex** (trial {combined['best'].number}):",
        "",
        "```yaml",
        yaml.safe_dump({k: _plain(v) for k, v in combined["best"].params.items()}, sort_keys=False).rstrip(),
        "```",
        "",
        *(["The GPU machine lent to this project has neither TensorFlow nor MLflow, so "
           "[`benchmarks/gpu_study.py`](../benchmarks/gpu_study.py) ran the pieces of `hpo launch` "
           "(this space file, its sampler and pruner, `config_for_trial`, the pruning callback and "
           "`hpo.training.train`) under Keras' JAX backend, with Optuna's journal file as the "
           "storage and no MLflow runs; its outputs are beside this page "
           f"({', '.join(f'[`{n}`](results/{n})' for n in combined['sources'])}).", ""] if gpu else []),
        *(_finals(combined["finals"], of) if gpu else [
            f"That configuration trained again for {epochs} epochs (best epoch "
            f"{final['best_epoch'] + 1}), scored once on the {final['n_test']} test clusters"
            f"{' with test-time augmentation' if final['tta'] else ''}:"]),
        "",
        "| metric | test | target |",
        "| --- | ---: | --- |",
        f"| residual std | {t['residual_std']:.3f} dex ({ratio:.2f} x oracle floor, "
        f"{t['residual_std'] / cb:.2f} x counts baseline) | <= 1.7 x oracle floor = {1.7 * of:.3f} dex: "
        f"**{'met' if ratio <= 1.7 else 'not met at this budget'}** |",
        f"| bias | {t['bias']:+.3f} dex | |",
        f"| 68% coverage of mu +- sigma | {t.get('coverage68', float('nan')):.3f} | 0.63-0.73: "
        f"**{'met' if 0.63 <= t.get('coverage68', -1) <= 0.73 else 'not met'}** |",
        f"| outlier fraction (> 0.5 dex) | {t['outlier_frac']:.3f} | |",
        "",
        *CHAMPION_SECTION,
        "## How far a model travels",
        "",
        "The final model (trained on eRASS:8) applied unchanged to mocks of other surveys, each "
        "beside its own floors. eFEDS is about as deep as eRASS:8 (exposures of 1.2-2.2 ks against "
        "1.6-2.5 ks), so its counts shift a little; eRASS1 (150-250 s) gives each cluster about a tenth "
        "of the counts the network was trained on.",
        "",
        "| data | clusters | residual std | bias | 68% coverage | oracle floor | counts baseline |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| eRASS:8 (training preset, test split) | {final['n_test']} | {t['residual_std']:.3f} | "
        f"{t['bias']:+.3f} | {t.get('coverage68', float('nan')):.3f} | {of:.3f} | {cb:.3f} |",
        *(f"| {r['preset']} (seed {TRANSFER[r['preset']]}) | {r['n']} | {r['residual_std']:.3f} | "
          f"{r['bias']:+.3f} | {r.get('coverage68', float('nan')):.3f} | {r['oracle_floor']:.3f} | "
          f"{r['counts_baseline']:.3f} |" for r in transfer),
        "",
    ]
    (DOCS / "results.md").write_text("\n".join(lines))
    (DOCS / "results" / "summary.json").write_text(json.dumps({
        "floors": floor, "experiments": rows, "combined_best": combined["best"].value,
        "combined_where": combined["where"], "final_epochs": epochs,
        "test": t, "transfer": transfer}, indent=1, default=float))
    print(f"wrote {DOCS / 'results.md'}")


def _finals(finals: list[dict], of: float) -> list[str]:
    """The GPU run's final trainings, and why the champion is the one with the lowest val rmse."""
    champion = finals[0]
    shifted = max(finals, key=lambda f: abs(f["val"]["bias"]))
    passes = "; ".join(
        f"pass {k}: trials {', '.join(str(n) for n in sorted({f['trial'] for f in finals if f['pass'] == k}))}"
        f"{_seeds({f.get('seed', 0) for f in finals if f['pass'] == k})} for up to "
        f"{max(f['epochs'] for f in finals if f['pass'] == k)} epochs"
        for k in sorted({f["pass"] for f in finals}))
    views = any("views" in f for f in finals)
    return [
        f"The best configurations trained again ({passes}; each time-boxed), with early stopping "
        "(patience 40, best weights restored)."
        f"{_VIEWS if views else ''} The champion is the lowest **validation rmse**, not residual std: the "
        "residual std ignores a bias, and stopping on it can keep an epoch whose predictions are "
        f"all shifted (trial {shifted['trial']}, pass {shifted['pass']}: residual std "
        f"{shifted['val']['residual_std']:.3f} but bias {shifted['val']['bias']:+.3f} dex, coverage "
        f"{shifted['val']['coverage68']:.2f}).",
        "",
        "| trial | pass | seed | view | epochs (best) | val residual std | val bias | val rmse | test residual std | test bias | test coverage |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {f['trial']}{' (champion)' if f is champion else ''} | {f['pass']} | {f.get('seed', 0)} | "
          f"{'TTA' if f['tta'] else 'plain'} | {f['epochs_run']} "
          f"({f['best_epoch'] + 1}) | {f['val']['residual_std']:.3f} | {f['val']['bias']:+.3f} | "
          f"{f['val']['rmse']:.3f} | {f['test']['residual_std']:.3f} ({f['test']['residual_std'] / of:.2f} x) | "
          f"{f['test']['bias']:+.3f} | {f['test']['coverage68']:.3f} |" for f in finals),
        "",
        f"The champion, trial {champion['trial']}{_seed(champion)}:",
        "",
        "```yaml",
        yaml.safe_dump({k: _plain(v) for k, v in champion["params"].items()}, sort_keys=False).rstrip(),
        "```",
        "",
        f"scored once on the {champion['n_test']} test clusters"
        f"{' with test-time augmentation' if champion['tta'] else ''}:",
    ]


_VIEWS = (" Each final was scored twice, by the plain forward pass and by test-time augmentation "
          "(TTA: the mean over the 8 flips and right-angle rotations of each image), and keeps the "
          "view with the lower validation rmse.")


def _seed(final: dict) -> str:
    return f" (train.seed {final['seed']})" if "seed" in final else ""


def _seeds(seeds: set[int]) -> str:
    return f" (seeds {', '.join(map(str, sorted(seeds)))} each)" if len(seeds) > 1 else ""


def _relative(path: Path) -> Path:
    try:
        return path.resolve().relative_to(ROOT)
    except ValueError:
        return path


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


if __name__ == "__main__":
    main()
