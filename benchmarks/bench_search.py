"""Search efficiency per epoch: Optuna TPE + median pruning, keras-tuner Hyperband, random search.

    .venv/bin/python benchmarks/bench_search.py [--clusters 800] [--max-epochs 12]
        [--budget-epochs 136] [--seeds 0,1,2] [--data data/results/erass8_10k.h5]
        [--with-artifacts]

Space: search_spaces/dropout.yaml's study (its data, its base run config, dropout after every
dense layer) with the params replaced by a small mixed space, built here (PARAMS): dropout rate
(float 0-0.5), Adam learning rate (log-float 1e-4 to 3e-3) and filters per conv layer (log-int
8-32); train.epochs = --max-epochs on the first --clusters clusters of the mock.

Methods, each run until it has trained --budget-epochs epochs in all (every epoch counts,
those of pruned and failed trials included):
  - random search, no pruning (the baseline): Optuna's RandomSampler, every trial --max-epochs;
  - Optuna TPE (5 random startup trials, not Optuna's 10: the budget holds few full trials)
    with median pruning (n_startup_trials 3, no pruning before epoch max(1, max_epochs // 9),
    as Hyperband's second rung);
  - keras-tuner Hyperband through `engine: keras_tuner` (factor 3, max_epochs = --max-epochs,
    promoted trials resume their parent's weights), with as many Hyperband iterations as make
    its natural budget >= the budget.
An Optuna study stops (study.stop in a callback) once the budget is spent, Hyperband stops
starting trials (run_search's epoch_budget); the trial that crosses the budget still ends, and
every curve is cut at the budget: a trial counts once all its epochs fit in it. Best-so-far is
the lowest val_residual_std of a trial each engine calls complete (Optuna: COMPLETE, not
PRUNED; keras-tuner: every COMPLETED trial, its 1-epoch ones too). Seeds (--seeds) set the
sampler or oracle seed and train.seed.

Trials are the engines' own (Objective, run_search) with MLflow tracking to a temporary SQLite
store; per-trial plots and model logging are skipped unless --with-artifacts (they cost seconds
per trial, Hyperband runs many short trials, and the x axis is epochs, not time).
Writes docs/figures/bench_search.png (median best-so-far against epochs spent, min-max band
over seeds) and prints the table, also saved as benchmarks/results/search.md.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from emit import emit

from hpo.config.space import parse_space
from hpo.config.space import SearchSpace
from hpo.config.space import TunerSpec
from hpo.data.lazy import open_dataset
from hpo.data.sim.config import SimConfig
from hpo.data.sim.simulator import write_mock
from hpo.engines.objective import Objective
from hpo.errors import TrialFailed
from hpo.keys import EPOCHS_RUN_KEY
from hpo.launch.keras_tuner import run_search
from hpo.study.pruners import make_pruner
from hpo.study.samplers import make_sampler
from hpo.tracking.recorder import trial_recorders
from hpo.tracking.runs import Tracker

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "search_spaces" / "dropout.yaml"
FIGURE = ROOT / "docs" / "figures" / "bench_search.png"
PARAMS = {
    "model.dropout.rate": {"float": [0.0, 0.5]},
    "train.optimizer.learning_rate": {"float": [1.0e-4, 3.0e-3], "log": True},
    "model.filters": {"int": [8, 32], "log": True},
}
BASELINE = "random search (Optuna, no pruning)"
METHODS = (BASELINE, "Optuna TPE + median pruning", "keras-tuner Hyperband")
NEAR_BEST_DEX = 0.01
Curve = list[tuple[int, float | None]]  # per trial, in order: (epochs it trained, value or None)


def make_space(method: str, seed: int, args: argparse.Namespace, data: Path) -> SearchSpace:
    """dropout.yaml with PARAMS, the benchmark's data and epochs, and `method`'s study block."""
    raw = yaml.safe_load(SOURCE.read_text())
    raw["data"] = {**raw.get("data", {}), "path": str(data), "max_clusters": args.clusters}
    train = raw.setdefault("base", {}).setdefault("train", {})
    train.update({"epochs": args.max_epochs, "seed": seed})
    raw["base"].setdefault("model", {})["dropout"] = {"placement": "every_dense"}
    raw["params"] = PARAMS
    name = f"search-{method.split()[0].lower()}-{seed}"
    if method == BASELINE:
        study = {"sampler": {"type": "random", "seed": seed}, "pruner": {"type": "none"}}
    elif method.startswith("Optuna TPE"):
        warmup = max(1, args.max_epochs // 9)
        study = {"sampler": {"type": "tpe", "seed": seed, "options": {"n_startup_trials": 5}},
                 "pruner": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": warmup}}
    else:
        per_iteration = TunerSpec().hyperband_budget(args.max_epochs)[1]
        iterations = max(1, math.ceil(args.budget_epochs / per_iteration))
        study = {"engine": "keras_tuner",
                 "tuner": {"type": "hyperband", "factor": 3, "seed": seed,
                           "hyperband_iterations": iterations}}
    raw["study"] = {"name": name, "repeats": 1, **study}
    return parse_space(raw, source=f"{SOURCE.name} ({method}, seed {seed})")


def run_optuna(space: SearchSpace, ds: Any, tracker: Tracker, budget: int) -> Curve:
    """An in-memory Optuna study of `space`, stopped once its trials trained `budget` epochs."""

    def epochs(t: optuna.trial.FrozenTrial) -> int:
        return int(t.user_attrs.get(EPOCHS_RUN_KEY, len(t.intermediate_values)))

    def stop_at_budget(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        ended = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        if sum(epochs(t) for t in ended) >= budget:
            study.stop()

    study = optuna.create_study(direction="minimize", sampler=make_sampler(space),
                                pruner=make_pruner(space.study.pruner))
    experiment = tracker.experiment_id(space.study.name)
    objective = Objective(space, ds, trial_recorders(tracker, experiment_id=experiment, parent_run_id=None,
                                                     study=space.study.name))
    study.optimize(objective, catch=(TrialFailed,), callbacks=[stop_at_budget],
                   gc_after_trial=True)
    done = optuna.trial.TrialState.COMPLETE
    return [(epochs(t), t.value if t.state == done else None)
            for t in study.get_trials(deepcopy=False) if t.state.is_finished()]


def run_hyperband(space: SearchSpace, ds: Any, tracker: Tracker, budget: int, work: Path) -> Curve:
    records = run_search(space, ds, tracker, directory=work / "kt", epoch_budget=budget,
                         data_info={"path": str(space.resolved_base().data.path)})
    return [(r.epochs_run, r.value if r.state == "COMPLETE" else None) for r in records]


def best_so_far(curve: Curve, budget: int) -> np.ndarray:
    """Best value after 1..budget epochs spent (NaN until a trial completes); cut at the budget."""
    out = np.full(budget, np.nan)
    spent, best = 0, math.inf
    for epochs, value in curve:
        spent += epochs
        if spent > budget:
            break
        if value is not None and value < best:
            best = value
        if math.isfinite(best):
            out[spent - 1:] = best
    return out


def epochs_to(curve: np.ndarray, target: float) -> float:
    hit = np.flatnonzero(curve <= target)
    return float(hit[0] + 1) if hit.size else math.inf


def spread(values: list[float], fmt: str) -> str:
    """median [min-max]; inf (never reached) shows as "never"."""

    def show(v: float) -> str:
        return f"{v:{fmt}}" if math.isfinite(v) else "never"

    text = show(statistics.median(values))
    return text if len(values) == 1 else f"{text} [{show(min(values))}-{show(max(values))}]"


def plot(curves: dict[str, list[np.ndarray]], budget: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = np.arange(1, budget + 1)
    for (method, runs), style in zip(curves.items(), ("-", "--", "-."), strict=False):
        stack = np.vstack(runs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all NaN before a first result
            med = np.nanmedian(stack, axis=0)
            lo, hi = np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)
        (line,) = ax.step(x, med, where="post", label=method, linestyle=style)
        ax.fill_between(x, lo, hi, step="post", alpha=0.2, color=line.get_color())
    ax.set_xlabel("epochs spent")
    ax.set_ylabel("best val residual std so far (dex)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=120)
    plt.close(fig)


def _light_artifacts(tracker: Tracker, run_id: str, result: Any, ds: Any) -> str:
    """The final metrics of log_trial_artifacts, without its plots and model."""
    tracker.log_metrics(run_id, {f"final_val_{k}": v for k, v in result.val_metrics.items()})
    tracker.log_metrics(run_id, {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch})
    return ""


def main() -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=800)
    parser.add_argument("--max-epochs", type=int, default=12, help="epochs of a full trial")
    parser.add_argument("--budget-epochs", type=int, default=None,
                        help="epochs per method and seed (default: one Hyperband iteration's)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data", type=Path, default=None,
                        help="an existing mock to reuse (default: simulate --clusters clusters)")
    parser.add_argument("--with-artifacts", action="store_true",
                        help="log each trial's plots and model, as a real study does")
    args = parser.parse_args()
    if args.budget_epochs is None:
        args.budget_epochs = TunerSpec().hyperband_budget(args.max_epochs)[1]
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    budget = args.budget_epochs

    work = Path(tempfile.mkdtemp(prefix="bench_search_"))
    data = args.data.resolve() if args.data else work / "mock.h5"
    if args.data is None:
        write_mock(data, args.clusters, 0, SimConfig())
    os.chdir(work)  # MLflow's artifact root (./mlartifacts) and keras-tuner's state go here
    if not args.with_artifacts:
        import hpo.engines.objective
        import hpo.engines.keras_tuner

        hpo.engines.objective.log_trial_artifacts = _light_artifacts
        hpo.engines.keras_tuner.log_trial_artifacts = _light_artifacts
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracker = Tracker(f"sqlite:///{work / 'mlflow.db'}")
    ds = open_dataset(data)

    curves: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    trials: dict[str, list[int]] = {m: [] for m in METHODS}
    t0 = time.perf_counter()
    for seed in seeds:
        for method in METHODS:
            space = make_space(method, seed, args, data)
            t1 = time.perf_counter()
            if space.study.engine == "keras_tuner":
                curve = run_hyperband(space, ds, tracker, budget, work / f"seed{seed}")
            else:
                curve = run_optuna(space, ds, tracker, budget)
            best = best_so_far(curve, budget)
            curves[method].append(best)
            trials[method].append(len(curve))
            spent = sum(e for e, _ in curve)
            print(f"seed {seed}, {method}: {len(curve)} trials, {spent} epochs, best at budget "
                  f"{best[-1]:.4f}, {time.perf_counter() - t1:.0f} s", flush=True)
    wall = time.perf_counter() - t0

    overall = float(np.nanmin([c[-1] for runs in curves.values() for c in runs]))
    target = overall + NEAR_BEST_DEX
    at_budget = {m: [float(c[-1]) if np.isfinite(c[-1]) else math.inf for c in runs]
                 for m, runs in curves.items()}
    to_target = {m: [epochs_to(c, target) for c in runs] for m, runs in curves.items()}
    base_best = statistics.median(at_budget[BASELINE])
    base_epochs = statistics.median(to_target[BASELINE])

    def ratio(value: float, base: float) -> str:
        return f"{value / base:.2f}" if math.isfinite(value) and math.isfinite(base) else "-"

    n_train = round(args.clusters * 0.8)
    rows = [
        f"Search efficiency at {budget} epochs per run, {len(seeds)} seed(s) ({args.seeds}); "
        f"mixed space (dropout rate, learning rate, filters) on ~{n_train} training clusters, "
        f"{args.max_epochs} epochs per full trial. Median [min-max] over seeds; target = overall "
        f"best {overall:.4f} + {NEAR_BEST_DEX} dex; ratios against {BASELINE} "
        f"(< 1 is better). Wall time {wall / 60:.1f} min.",
        "",
        "| method | trials | best val residual std at budget (dex) | ratio | "
        "epochs to within 0.01 dex of best | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in METHODS:
        best_med = statistics.median(at_budget[m])
        ep_med = statistics.median(to_target[m])
        rows.append(
            f"| {m} | {statistics.median(trials[m]):.0f} | {spread(at_budget[m], '.4f')} | "
            f"{ratio(best_med, base_best)} | {spread(to_target[m], '.0f')} | "
            f"{ratio(ep_med, base_epochs)} |"
        )
    plot(curves, budget, f"best-so-far val residual std, {len(seeds)} seed(s), "
                         f"{args.clusters} clusters, max {args.max_epochs} epochs per trial")
    rows += ["", f"Figure: {FIGURE.relative_to(ROOT)}"]
    return emit("search", "\n".join(rows))


if __name__ == "__main__":
    main()
