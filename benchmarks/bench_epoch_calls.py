"""What a trial's per-epoch calls to its stores cost the device loop, with and without pipelining.

    .venv/bin/python benchmarks/bench_epoch_calls.py [--network small] [--train-clusters 800] [--epochs 12]
    benchmarks/gpu/run.sh epochcalls      # on a GPU (--json ...)

At every epoch end a trial logs its metrics to MLflow (EpochLog) and reports its value to the
study, whose pruner then reads the study (PruningCallback); at GPU speed an epoch takes a
fraction of a second and these calls, tens of milliseconds, would be a large share of it. The
device loop dispatches the next epoch before the callbacks of the last one run
(`fit_on_device(pipeline=True)`, the default), so that they run while the device computes.

One network (--network small on a CPU, whose epochs then take about a second; the champion's,
benchmarks/gpu/champion.yaml, on a GPU), three ways, alternating: `compute only` (the evaluator alone: the baseline), `calls,
in turn` (an MLflow run in a SQLite store and a trial of a SQLite study with 20 finished trials
and a median pruner; pipeline off) and `calls, pipelined` (the same calls, pipeline on). Per
way: seconds per epoch over epochs 2.. (the first compiles), the fastest of the repeats; the
calls' own milliseconds per epoch; the overhead against compute only. Writes
benchmarks/results/epoch_calls.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import yaml  # noqa: E402

from emit import emit  # noqa: E402

from hpo.config import apply_overrides  # noqa: E402
from hpo.data.contract import load_dataset  # noqa: E402
from hpo.data.sim.config import SimConfig  # noqa: E402
from hpo.data.sim.simulator import write_mock  # noqa: E402
from hpo.model.builder import build_model  # noqa: E402
from hpo.model.builder import InputStats  # noqa: E402
from hpo.model.losses import LOSSES  # noqa: E402
from hpo.training.optimizers import build_optimizer  # noqa: E402

HERE = Path(__file__).resolve().parent
WAYS = ("compute only", "calls, in turn", "calls, pipelined")


class Timed(keras.callbacks.Callback):
    """Runs `inner` callbacks at each epoch end and adds up the seconds they take."""

    def __init__(self, inner: list[keras.callbacks.Callback]) -> None:
        super().__init__()
        self.inner, self.seconds = inner, 0.0

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        for c in self.inner:
            c.set_model(model)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        t0 = time.perf_counter()
        for c in self.inner:
            c.on_epoch_end(epoch, logs)
        self.seconds += time.perf_counter() - t0


class Ends(keras.callbacks.Callback):
    """The time of each epoch end (after every other callback)."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[float] = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.at.append(time.perf_counter())

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.at.append(time.perf_counter())


def study_calls(work: Path, run_no: int) -> list[keras.callbacks.Callback]:
    """An MLflow run's epoch log and a study trial's pruning report, on SQLite stores."""
    from hpo.engines.pruning import PruningCallback
    from hpo.tracking.recorder import MlflowRecorder
    from hpo.tracking.runs import Tracker
    from hpo.trial.runner import EpochLog

    storage = f"sqlite:///{work / 'hpo.db'}"
    study = optuna.create_study(storage=storage, study_name=f"calls-{run_no}",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3,
                                                                   n_warmup_steps=2))
    for i in range(20):
        t = study.ask()
        for e in range(100):
            t.report(10.0 + 0.01 * i - 0.001 * e, e)  # worse than any real trial: never prunes
        study.tell(t, 9.0)
    recorder = MlflowRecorder.standalone(Tracker(f"sqlite:///{work / 'mlflow.db'}"), "calls", None)
    recorder.start(apply_overrides({}))
    return [EpochLog(recorder), PruningCallback(study.ask(), "val_rmse")]


def main() -> str:
    from hpo.training.device_data import place
    from hpo.training.device_loop import DeviceEvaluator
    from hpo.training.device_loop import fit_on_device
    from hpo.training.device_loop import resolve_dispatch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-clusters", type=int, default=800)
    parser.add_argument("--val-clusters", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--network", choices=("champion", "small"), default="small",
                        help="small: 2 x 8 filters and one dense layer of 32, the MSE loss (a CPU "
                        "epoch of a fraction of a second, as a champion epoch on a GPU)")
    parser.add_argument("--data", type=Path, default=None, help="a data file (default: simulate one)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    args = parser.parse_args()
    if keras.backend.backend() != "jax":
        raise SystemExit(f"the device loop runs on the JAX backend; KERAS_BACKEND is "
                         f"{keras.backend.backend()}")
    import jax

    work = Path(tempfile.mkdtemp(prefix="bench_epoch_calls_"))
    n_total = args.train_clusters + args.val_clusters
    data = args.data
    if data is None:
        data = work / "mock.h5"
        write_mock(data, n_total, 0, SimConfig())
    ds = load_dataset(data)
    train, val = np.arange(args.train_clusters), np.arange(args.train_clusters, n_total)
    on_device = place(ds, train, val, exposure=False)
    champion = yaml.safe_load((HERE / "gpu" / "champion.yaml").read_text())
    small = {"model.conv_blocks": [[8], [8]], "model.filters": None, "model.dense": [32],
             "train.loss.type": "mse", "train.augment.tta": False}
    cfg = apply_overrides({**champion, **(small if args.network == "small" else {}),
                           "train.epochs": args.epochs})

    epoch_s: dict[str, list[list[float]]] = {w: [] for w in WAYS}
    calls_ms: dict[str, list[float]] = {w: [] for w in WAYS}
    for rep in range(args.repeats):
        for way in WAYS:
            keras.utils.set_random_seed(0)
            stats = InputStats.fit(ds.images[train], ds.redshift[train], ds.log_mass[train],
                                   cfg.model.input.transform)
            model = build_model(cfg.model, image_shape=ds.image_shape, stats=stats,
                                sigma_head=(cfg.train.loss.sigma_param
                                            if cfg.train.loss.type == "gaussian_nll" else None),
                                augment=cfg.train.augment,
                                seed=0)
            steps = math.ceil(len(train) / cfg.train.batch_size)
            model.compile(optimizer=build_optimizer(cfg.train.optimizer, cfg.train.schedule,
                                                    steps, args.epochs),
                          loss=LOSSES[cfg.train.loss.type])
            timed = Timed([] if way == "compute only" else study_calls(work, rep * 10 + len(way)))
            ends = Ends()
            fit_on_device(model, on_device, loss=model.loss, batch_size=cfg.train.batch_size,
                          seed=0, initial_epoch=0, epochs=args.epochs,
                          evaluator=DeviceEvaluator(ds.log_mass[val], monitor="val_rmse"),
                          callbacks=[timed, ends], pipeline=way != "calls, in turn")
            epoch_s[way].append(list(np.diff(ends.at)))
            calls_ms[way].append(1000 * timed.seconds / args.epochs)
            print(f"{way}: {np.median(np.diff(ends.at)[1:]):.3f} s per epoch, calls "
                  f"{calls_ms[way][-1]:.1f} ms per epoch", flush=True)

    device = jax.devices()[0].device_kind
    # Per way: the median epoch (after the first, which compiles) of the fastest repeat.
    per = {w: min(float(np.median(r[1:])) for r in epoch_s[w]) for w in WAYS}
    base = per["compute only"]
    rows = [f"| {w}{' (baseline)' if w == 'compute only' else ''} | {per[w]:.3f} | "
            f"{min(calls_ms[w]):.1f} | {min(calls_ms[w]) / 10 / per[w]:.1f}% | "
            f"{100 * (per[w] - base) / base:+.1f}% |" for w in WAYS]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "cores": os.cpu_count(),
                                         "n_train": len(train), "epochs": args.epochs,
                                         "epoch_seconds": epoch_s, "calls_ms": calls_ms},
                                        indent=1))
    table = "\n".join([
        f"The {args.network} network on {len(train)} training clusters (batch 200, "
        f"`device_dispatch: {resolve_dispatch('auto')}`), Keras' JAX backend ({device}, "
        f"{os.cpu_count()} cores), {args.epochs} epochs x {args.repeats} runs of each way, "
        "alternating; an epoch's calls are its MLflow epoch log (SQLite store) and its study "
        "report with the median pruner's verdict (SQLite study of 20 finished trials):",
        "",
        "| way | s per epoch (median, fastest run) | calls, ms per epoch | calls / epoch | "
        "epoch vs compute only |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
    ])
    return table if args.no_save else emit("epoch_calls", table)


if __name__ == "__main__":
    main()
