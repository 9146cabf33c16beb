"""Training throughput of `hpo`'s loop (pruning and MLflow callbacks on) against a bare model.fit.

    .venv/bin/python benchmarks/bench_training.py [--train-clusters 7151] [--epochs 6]

Both runs train the same network (the default config) on the same in-memory arrays at the lab
report's size of 7151 training clusters. The baseline is `model.fit` with no callbacks and no
validation; ours is `hpo.training.train` with the per-epoch validation scoring, the Optuna
pruning callback and per-epoch MLflow logging. The rate is training clusters per second of the
fastest epoch after the first (which compiles), over all repeats: on a shared VM an epoch is
only ever slowed by the neighbours, never sped up, so the fastest epoch is the cost of the work
itself; the median is printed beside it. Prints a markdown table; target ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import keras
import optuna

from emit import emit

from hpo.config import apply_overrides
from hpo.data.contract import load_dataset
from hpo.data.sim.config import SimConfig
from hpo.data.sim.simulator import write_mock
from hpo.engines.pruning import PruningCallback
from hpo.model.builder import build_model
from hpo.model.builder import InputStats
from hpo.model.losses import LOSSES
from hpo.tracking.recorder import MlflowRecorder
from hpo.tracking.runs import Tracker
from hpo.training.loop import prepare
from hpo.trial.runner import run_trial


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._t0)


def steady(timers: list[EpochTimer]) -> list[float]:
    """Epoch times after each run's first (compiling) epoch."""
    return [s for t in timers for s in t.seconds[1:]]


def bare_fit(cfg, ds, tr, epochs: int) -> EpochTimer:  # noqa: ANN001
    """The baseline: the same network, compiled as Keras compiles by default, plain model.fit."""
    keras.utils.set_random_seed(0)
    stats = InputStats.fit(tr.images[:4096], tr.redshift, tr.log_mass, cfg.model.input.transform)
    model = build_model(cfg.model, image_shape=ds.image_shape, stats=stats, augment=cfg.train.augment, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(cfg.train.optimizer.learning_rate), loss=LOSSES["mse"])
    timer = EpochTimer()
    model.fit({"images": tr.images, "redshift": tr.redshift.reshape(-1, 1)}, tr.log_mass,
              batch_size=cfg.train.batch_size, epochs=epochs, callbacks=[timer], verbose=0)
    return timer


def our_fit(cfg, ds, tracker: Tracker) -> EpochTimer:  # noqa: ANN001
    """hpo's loop with the callbacks a trial has: pruning and per-epoch MLflow logging."""
    trial = optuna.create_study(pruner=optuna.pruners.MedianPruner()).ask()
    timer = EpochTimer()  # last, so its epoch includes the other callbacks' work
    run_trial(cfg, ds, MlflowRecorder.standalone(tracker, "bench", "bench"),
              callbacks=[PruningCallback(trial), timer], log_model=False)
    return timer


def main() -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-clusters", type=int, default=7151)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_training_"))
    n = int(round(args.train_clusters / 0.8))
    write_mock(tmp / "mock.h5", n, 0, SimConfig())
    ds = load_dataset(tmp / "mock.h5")
    cfg = apply_overrides({"data.path": str(tmp / "mock.h5"), "train.epochs": args.epochs})
    _, split = prepare(cfg, ds)
    n_train = len(split.train)

    # The two alternate, `--repeats` times each, and each keeps its best: on a shared machine the
    # load drifts, and alternating puts both through the same drift.
    tr = ds.subset(split.train)
    tracker = Tracker(f"sqlite:///{tmp / 'mlflow.db'}")
    bare, ours = [], []
    for _ in range(args.repeats):
        bare.append(bare_fit(cfg, ds, tr, args.epochs))
        ours.append(our_fit(cfg, ds, tracker))

    rows = []
    for name, timers in (("baseline: bare `model.fit`, same model, in-memory arrays", bare),
                         ("`hpo` loop: validation scoring + pruning + MLflow per epoch", ours)):
        secs = steady(timers)
        rows.append((name, n_train / min(secs), n_train / statistics.median(secs)))
    base_fast, base_med = rows[0][1], rows[0][2]
    table = "\n".join([
        f"Training throughput, {n_train} training clusters, batch {cfg.train.batch_size}, epochs 2-{args.epochs} "
        f"of {args.repeats} alternating runs each ({len(steady(bare))} epochs per row):",
        "",
        "| run | clusters/s (fastest epoch) | ratio | clusters/s (median epoch) | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {name} | {fast:.0f} | {fast / base_fast:.2f} | {med:.0f} | {med / base_med:.2f} |"
          for name, fast, med in rows),
    ])
    return emit("training", table)


if __name__ == "__main__":
    main()
