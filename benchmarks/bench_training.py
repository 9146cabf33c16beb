"""Training throughput of `hpo`'s loop (pruning and MLflow callbacks on) against a bare model.fit.

    .venv/bin/python benchmarks/bench_training.py [--train-clusters 7151] [--epochs 6]

Both runs train the same network (the default config) on the same in-memory arrays at the lab
report's size of 7151 training clusters. The baseline is `model.fit` with no callbacks and no
validation; ours is `hpo.training.train` with the per-epoch validation scoring, the Optuna
pruning callback and per-epoch MLflow logging. The rate is training clusters per second over
the epochs after the first (which compiles). Prints a markdown table; target ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import optuna

from hpo.config import apply_overrides
from hpo.data.contract import load_dataset
from hpo.data.simulator import write_mock
from hpo.data.sim_config import SimConfig
from hpo.model.builder import InputStats
from hpo.model.builder import build_model
from hpo.model.losses import LOSSES
from hpo.objective.pruning import PruningCallback
from hpo.tracking.callback import MlflowEpochLogger
from hpo.tracking.runs import Tracker
from hpo.training.loop import prepare
from hpo.training.loop import train


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._t0)


def rate(n_train: int, timer: EpochTimer) -> float:
    return n_train / statistics.median(timer.seconds[1:])


def main() -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-clusters", type=int, default=7151)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_training_"))
    n = int(round(args.train_clusters / 0.8))
    write_mock(tmp / "mock.h5", n, 0, SimConfig())
    ds = load_dataset(tmp / "mock.h5")
    cfg = apply_overrides({"data.path": str(tmp / "mock.h5"), "train.epochs": args.epochs})
    _, split = prepare(cfg, ds)
    n_train = len(split.train)

    # ------------------------------------------------------------ baseline: bare model.fit
    keras.utils.set_random_seed(0)
    tr = ds.subset(split.train)
    stats = InputStats.fit(tr.images[:4096], tr.redshift, tr.log_mass, cfg.model.input.transform)
    model = build_model(cfg.model, image_shape=ds.image_shape, stats=stats, augment=cfg.train.augment, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(cfg.train.optimizer.learning_rate), loss=LOSSES["mse"])
    bare = EpochTimer()
    model.fit({"images": tr.images, "redshift": tr.redshift.reshape(-1, 1)}, tr.log_mass,
              batch_size=cfg.train.batch_size, epochs=args.epochs, callbacks=[bare], verbose=0)
    del model

    # ------------------------------------------------------------ ours: the hpo training loop
    tracker = Tracker(f"sqlite:///{tmp / 'mlflow.db'}")
    run_id = tracker.start_single_run("bench", cfg, "bench")
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner())
    trial = study.ask()
    ours = EpochTimer()
    train(cfg, ds, callbacks=[PruningCallback(trial), MlflowEpochLogger(tracker, run_id), ours])
    tracker.end_run(run_id)

    base_rate, our_rate = rate(n_train, bare), rate(n_train, ours)
    table = "\n".join([
        f"Training throughput, {n_train} training clusters, batch {cfg.train.batch_size}, "
        f"median of epochs 2-{args.epochs}:",
        "",
        "| run | clusters/s | ratio |",
        "| --- | ---: | ---: |",
        f"| baseline: bare `model.fit`, same model, in-memory arrays | {base_rate:.0f} | 1.00 |",
        f"| `hpo` loop: validation scoring + pruning + MLflow per epoch | {our_rate:.0f} | {our_rate / base_rate:.2f} |",
    ])
    print(table)
    return table


if __name__ == "__main__":
    main()
