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
4. that model on eFEDS and eRASS1 mocks (other seeds): how far a model travels;
5. the section of benchmarks/depth.py (one model for every depth), from docs/results/depth.json.
Every derived space file is written to docs/results/spaces/, so a reader sees what ran.

With `--combined-from STORE` (docs/results/gpu-store), stages 2-4 come from the product's own
stores of a GPU run instead (benchmarks/gpu/run.sh: `hpo launch`, `hpo refit`, `hpo promote`):
the study and its refits from STORE/hpo.db, their validation metrics and the champion's single
test score from STORE/mlflow.db, and the champion model from its registry for the transfer.
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
from hpo.config.space import decode_choice
from hpo.config.space import load_space
from hpo.data.baseline import floors
from hpo.data.contract import load_dataset
from hpo.data.sim.config import load_sim_config
from hpo.data.sim.simulator import write_mock
from hpo.keys import CONFIG_KEY
from hpo.tracking.scan_plot import scan
from hpo.tracking.scan_plot import scanned_param
from hpo.training.evaluate import score
from hpo.trial.recorder import NullRecorder
from hpo.trial.runner import run_trial

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
    "`hpo promote` keeps the test split out of every choice. It picks the study's winner on validation (`study.metric`, or `--select-by`; search_spaces/combined.yaml selects on **validation rmse**, since a residual std ignores a constant bias and early stopping on it can keep an epoch whose predictions are all shifted; the GPU study above ran before that change and selected on validation residual std, its champion's bias +0.021 dex), scores that one model once on the test split and records the scores on its registered version beside the floors and the cluster count. The alias `champion` then moves only through a gate:",
    '',
    "- **Like with like.** The champion is scored on the same test clusters only when its version carries the same data fingerprint and split settings (`hpo.data_sha256`, `hpo.split.*`). With split seed 1 instead of 0, 49 of the 60 test clusters of a 600-cluster file are in the other model's training set; with a regenerated file, all of them may be. Promote then refuses, saying what differs; `--compare-on FILE` scores both on a labelled file neither trained on.",
    "- **Paired, with an interval.** Both models predict the same clusters; the gain is the champion's score minus the challenger's, and its 95% interval comes from 2000 resamples of the clusters, the same resample for both models, so what they share (hard clusters, easy ones) cancels.",
    '- **By a margin.** The challenger must be better by more than `--min-gain` and the interval must exclude 0. The default margin, **0.005 dex**, is the spread of one configuration retrained with another seed: the refits above differ by up to 0.003 dex in validation residual std between seeds 1 and 2 of one configuration, and the finals of the earlier GPU study by up to 0.004 dex in test residual std (0.156 and 0.152), so a smaller gain says nothing about the configuration.',
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
    parser.add_argument("--combined-from", type=Path, default=None,
                        help="the stores of a GPU run (benchmarks/gpu/run.sh): hpo.db and mlflow.db, with "
                             "the MLflow artifacts where the run wrote them")
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
        combined, final, transfer = from_store(args.combined_from.resolve(), work)
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


STORE_STUDY = "combined-gpu"  # the study benchmarks/gpu/run.sh launches, and its refit study
REGISTERED = "xray-cluster-mass"


def from_store(store: Path, work: Path) -> tuple[dict, dict, list[dict]]:
    """Stages 2-4 from the product's own stores of a GPU run (benchmarks/gpu/run.sh): the study
    and its refits from the Optuna storage, their validation metrics and the champion's one test
    score from MLflow, the champion model itself (the registry's @champion) for the transfer."""
    import optuna
    from mlflow import MlflowClient

    from hpo.keys import EPOCHS_RUN_KEY
    from hpo.model.metrics import residual_metrics
    from hpo.keys import MLFLOW_RUN_ID_KEY
    from hpo.registry import models

    storage = f"sqlite:///{store / 'hpo.db'}"
    study = optuna.load_study(study_name=STORE_STUDY, storage=storage)
    refit = optuna.load_study(study_name=f"{STORE_STUDY}-refit", storage=storage)
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "epochs": int(t.user_attrs.get(EPOCHS_RUN_KEY, 0)),
               "enqueued": "fixed_params" in t.system_attrs}
              for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    done = [t for t in trials if t["state"] == "COMPLETE"]
    best = min(done, key=lambda t: t["value"])
    champion_version = client.get_model_version_by_alias(REGISTERED, "champion")
    tags = client.get_run(champion_version.run_id).data.tags
    finals = []
    for t in refit.get_trials(deepcopy=False):
        if t.state.name != "COMPLETE":
            continue
        run = client.get_run(t.user_attrs[MLFLOW_RUN_ID_KEY])
        source = next(s["number"] for s in done if all(
            s["params"].get(k) == v for k, v in t.params.items() if k != "train.seed"))
        finals.append({
            "trial": source, "refit": t.number, "seed": t.params["train.seed"], "tta": True,
            "val": {k[len("final_val_"):]: v for k, v in run.data.metrics.items() if k.startswith("final_val_")},
            "epochs_run": int(t.user_attrs.get(EPOCHS_RUN_KEY, 0)), "best_epoch": int(t.user_attrs["best_epoch"]),
            "params": {k: v for k, v in t.params.items() if k != "train.seed"},
            "champion": t.user_attrs[MLFLOW_RUN_ID_KEY] == champion_version.run_id,
        })
    finals.sort(key=lambda f: f["val"]["residual_std"])
    champion = next(f for f in finals if f["champion"])
    prefix = "test_tta_"
    champion["test"] = {k[len(prefix):]: float(v) for k, v in champion_version.tags.items() if k.startswith(prefix)}
    champion["n_test"] = int(champion_version.tags["hpo.test_clusters"])
    champion["version"] = champion_version.version
    spec = load_space(ROOT / "benchmarks" / "gpu" / "combined-gpu.yaml")
    workers = len({t.user_attrs.get("worker") for t in study.get_trials(deepcopy=False)} - {None})
    combined = {
        "trials": trials, "pruned": sum(t["state"] == "PRUNED" for t in trials),
        "failed": sum(t["state"] == "FAIL" for t in trials), "epochs": sum(t["epochs"] for t in trials),
        "space": "combined-gpu.yaml", "space_link": "../benchmarks/gpu/combined-gpu.yaml",
        "best": SimpleNamespace(number=best["number"], value=best["value"], params=best["params"]),
        "where": f"as trials of up to {spec.resolved_base().train.epochs} epochs in {workers} workers of "
                 f"`hpo launch --workers-per-gpu {workers}` sharing one {tags.get('hpo.device', 'GPU')} for "
                 f"{spec.study.timeout_s:.0f} s each (Keras {tags.get('hpo.keras_version')} on "
                 f"{tags.get('hpo.keras_backend')} {tags.get('hpo.backend_version')}, Optuna {optuna.__version__})",
        "finals": finals, "sources": [str(_relative(store))],
        "note": f"The study started from the {sum(t['enqueued'] for t in trials)} best points of the earlier "
                "GPU study (`study.enqueue`, from [its journal](results/combined-gpu.journal)); TPE drew the rest.",
    }
    final = {**champion, "final_epochs": max(f["epochs_run"] for f in finals)}
    # The registered champion as the repository ships it (models/): the store's artifact paths are
    # those of the GPU machine.
    model = models.load(str(ROOT / "models" / REGISTERED))
    transfer = []
    for preset, seed in TRANSFER.items():
        other = load_dataset(mock(work / f"{preset.replace(':', '')}_3k.h5", 3000, seed, preset))
        mu, sigma = models.predict_arrays(model, other.images, other.redshift, tta=True)
        transfer.append({"preset": preset, "n": len(other), **residual_metrics(mu, other.log_mass, sigma),
                         **floors(other)})
    return combined, final, transfer


def final_model(combined: dict, ds: Any, floor: dict, args: argparse.Namespace) -> dict[str, Any]:
    """The best combined configuration trained for --final-epochs, scored once on the test split."""
    cfg = apply_overrides({"train.epochs": args.final_epochs},
                          base=apply_overrides(combined["best"].user_attrs[CONFIG_KEY]))
    t0 = time.perf_counter()
    result = run_trial(cfg, ds, NullRecorder()).result
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
        f"{' --combined-from ' + combined['sources'][0] if gpu else ''}` "
        f"(this page: {os.cpu_count()} CPU cores, {platform.machine()}, the eight scans "
        f"{sum(r.get('seconds', 0) for r in rows) / 60:.0f} min"
        f"{'; the combined study, its refits and the promotion on a GPU, by the product itself: benchmarks/gpu/run.sh' if gpu else ', no GPU'}).",
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
        # The anchor of a heading `### kernel_size` is `kernel_size`, on GitHub and in the site.
        *(f"| [{r['name']}](#{r['name']}) | {r['points']} | {r['best']:.3f} | "
          f"{r['best'] / of:.2f} | {r['best'] / cb:.2f} | {r['best_params']} |" for r in rows),
        "",
        *sections,
        "",
        "## The combined study",
        "",
        f"TPE with median pruning over every axis at once ([`{combined['space']}`]"
        f"({combined.get('space_link', 'results/spaces/' + combined['space'])})), the loss fixed to the "
        "Gaussian likelihood, "
        f"{combined['where']}: {len(combined['trials'])} trials ({combined['pruned']} pruned"
        f"{', %d cut short by the time box' % combined['time_boxed'] if combined.get('time_boxed') else ''}"
        f"{', %d failed' % combined['failed'] if combined.get('failed') else ''}), {combined['epochs']} epochs. "
        f"{combined['note'] + ' ' if combined.get('note') else ''}Best validation residual std "
        f"**{combined['best'].value:.3f} dex** (trial {combined['best'].number}):",
        "",
        "```yaml",
        yaml.safe_dump({k: decode_choice(v) for k, v in combined["best"].params.items()}, sort_keys=False).rstrip(),
        "```",
        "",
        *([f"The study, its refits and the champion live in the product's own stores, beside this page "
           f"([`{combined['sources'][0]}`]({combined['sources'][0].removeprefix('docs/')}): the Optuna "
           "storage `hpo.db` and the MLflow store `mlflow.db`, whose runs are nested under each study's "
           "parent run); the champion model ships in the repository ([`models/xray-cluster-mass`]"
           "(../models/xray-cluster-mass)).", ""] if gpu else []),
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
    depth = DOCS / "results" / "depth.json"
    if depth.exists():  # benchmarks/depth.py's section, from its own measurements
        from depth import section

        lines += section(json.loads(depth.read_text()))
    (DOCS / "results.md").write_text("\n".join(lines))
    (DOCS / "results" / "summary.json").write_text(json.dumps({
        "floors": floor, "experiments": rows, "combined_best": combined["best"].value,
        "combined_where": combined["where"], "final_epochs": epochs,
        "test": t, "transfer": transfer}, indent=1, default=float))
    print(f"wrote {DOCS / 'results.md'}")


def _finals(finals: list[dict], of: float) -> list[str]:
    """The refits of a GPU run, by validation; the champion's test score follows, alone."""
    champion = next(f for f in finals if f["champion"])
    sources = sorted({f["trial"] for f in finals})
    seeds = sorted({f["seed"] for f in finals})
    return [
        f"`hpo refit` then trained the {len(sources)} best configurations (trials "
        f"{', '.join(map(str, sources))}) again, once per seed ({', '.join(map(str, seeds))}), for up to "
        f"{max(f['epochs_run'] for f in finals)} epochs with early stopping (best weights restored), "
        "validation scored with test-time augmentation (TTA: the mean over the 8 flips and right-angle "
        "rotations of each image), as a study of its own on the same workers; `hpo promote --top-k 1` "
        "registered the refit with the lowest validation residual std and scored it, and only it, once "
        "on the test split. No test number chose anything.",
        "",
        "| source trial | seed | epochs (best) | val residual std | val bias | val rmse | val coverage |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {f['trial']}{' (champion)' if f['champion'] else ''} | {f['seed']} | {f['epochs_run']} "
          f"({f['best_epoch'] + 1}) | {f['val']['residual_std']:.3f} | {f['val']['bias']:+.3f} | "
          f"{f['val']['rmse']:.3f} | {f['val'].get('coverage68', float('nan')):.3f} |" for f in finals),
        "",
        f"The champion, registered as `{REGISTERED}` version {champion['version']} with alias `champion` "
        f"(trial {champion['trial']}'s configuration, train.seed {champion['seed']}):",
        "",
        "```yaml",
        yaml.safe_dump({k: decode_choice(v) for k, v in champion["params"].items()}, sort_keys=False).rstrip(),
        "```",
        "",
        f"scored once on the {champion['n_test']} test clusters with test-time augmentation:",
    ]


def _relative(path: Path) -> Path:
    try:
        return path.resolve().relative_to(ROOT)
    except ValueError:
        return path


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


if __name__ == "__main__":
    main()
