"""N trials fused into one program (hpo/training/fused.py) against the same N trained one after
another by the device loop, on Keras' JAX backend.

    .venv/bin/python benchmarks/bench_fused.py [--train-clusters 2000] [--epochs 3] [--ns 1,2,4]
    benchmarks/gpu/run.sh fused      # on a GPU (--dispatch epoch --json ...)

Every member is the combined study's champion (benchmarks/gpu/champion.yaml: 12 filters of 5 x 5,
average pooling, dense 256-128-64, a sigma head, batch 200, cosine schedule, flips) with its own
seed and learning rate, built and compiled as train() builds a trial, on the same in-memory
clusters. Sequential: each member by fit_on_device, one after the other (each traces and compiles
its own program, as a worker's trials do without a persistent compilation cache); fused: all N
by one fit_fused. An N-epoch (every member one epoch) is timed from the first member's epoch
begin to the last member's epoch end; the rate is N-epochs per second of the fastest N-epoch
after the first (which compiles), over the repeats, fused and sequential alternating so that a
neighbour's load falls on both; the first N-epoch (compiles included) beside it. Writes
benchmarks/results/fused.json (every epoch's time) and fused.md.
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

import keras  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from emit import emit  # noqa: E402
from emit import RESULTS  # noqa: E402

from hpo.config import apply_overrides  # noqa: E402
from hpo.data.contract import load_dataset  # noqa: E402
from hpo.data.sim.config import SimConfig  # noqa: E402
from hpo.data.sim.simulator import write_mock  # noqa: E402
from hpo.model.builder import build_model  # noqa: E402
from hpo.model.builder import InputStats  # noqa: E402
from hpo.model.losses import LOSSES  # noqa: E402
from hpo.training.optimizers import build_optimizer  # noqa: E402

HERE = Path(__file__).resolve().parent
LR_FACTORS = (1.0, 0.5, 2.0, 0.7, 1.4, 0.35, 2.8, 1.0)  # member i's learning rate x champion's


class Clock(keras.callbacks.Callback):
    """Marks epoch begins and ends on a shared list: (time, epoch, 'begin' or 'end')."""

    def __init__(self, marks: list[tuple[float, int, str]]) -> None:
        super().__init__()
        self.marks = marks

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.marks.append((time.perf_counter(), epoch, "begin"))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.marks.append((time.perf_counter(), epoch, "end"))


def members(ds, cfgs, split, marks):  # noqa: ANN001, ANN201
    from hpo.training.device_loop import DeviceEvaluator
    from hpo.training.fused import Member

    out = []
    train, val = split
    for cfg in cfgs:
        keras.utils.set_random_seed(cfg.train.seed)
        stats = InputStats.fit(ds.images[train[:4096]], ds.redshift[train], ds.log_mass[train],
                               cfg.model.input.transform)
        sigma = cfg.train.loss.sigma_param if cfg.train.loss.type == "gaussian_nll" else None
        model = build_model(cfg.model, image_shape=ds.image_shape, stats=stats, sigma_head=sigma,
                            augment=cfg.train.augment, seed=cfg.train.seed)
        steps = math.ceil(len(train) / cfg.train.batch_size)
        model.compile(optimizer=build_optimizer(cfg.train.optimizer, cfg.train.schedule, steps,
                                                cfg.train.epochs),
                      loss=LOSSES[cfg.train.loss.type])
        evaluator = DeviceEvaluator(ds.log_mass[val], monitor="val_rmse")
        out.append(Member(model, evaluator, cfg.train.seed, callbacks=[Clock(marks)]))
    return out


def n_epochs(marks: list[tuple[float, int, str]], n: int, epochs: int) -> list[float]:
    """Seconds of each N-epoch: the first begin of an epoch to the last end of it (sequential:
    the sum of the members' own epochs)."""
    out = []
    for e in range(epochs):
        begins = [t for t, ep, k in marks if ep == e and k == "begin"]
        ends = [t for t, ep, k in marks if ep == e and k == "end"]
        if len(begins) < n or len(ends) < n:
            break
        out.append(sum(b - a for a, b in zip(begins, ends, strict=True))
                   if n > 1 and begins[1] > ends[0] else max(ends) - min(begins))
    return out


def main() -> str:
    from hpo.training.device_data import place
    from hpo.training.device_loop import fit_on_device
    from hpo.training.fused import fit_fused

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-clusters", type=int, default=2000)
    parser.add_argument("--val-clusters", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ns", default="1,2,4")
    parser.add_argument("--dispatch", default="auto", choices=("auto", "epoch", "step"))
    parser.add_argument("--strategies", default="vmap,unroll",
                        help="fused programs to time: vmap, unroll (fused.py's strategy)")
    parser.add_argument("--data", type=Path, default=None, help="a data file (default: simulate one)")
    parser.add_argument("--json", type=Path, default=RESULTS / "fused.json")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    args = parser.parse_args()
    if keras.backend.backend() != "jax":
        raise SystemExit(f"fused training runs on the JAX backend; KERAS_BACKEND is "
                         f"{keras.backend.backend()}")
    import jax

    n_total = args.train_clusters + args.val_clusters
    data = args.data
    if data is None:
        data = Path(tempfile.mkdtemp(prefix="bench_fused_")) / "mock.h5"
        write_mock(data, n_total, 0, SimConfig())
    ds = load_dataset(data)
    train, val = np.arange(args.train_clusters), np.arange(args.train_clusters, n_total)
    on_device = place(ds, train, val, exposure=False)
    champion = yaml.safe_load((HERE / "gpu" / "champion.yaml").read_text())
    ns = [int(n) for n in args.ns.split(",")]
    strategies = args.strategies.split(",")

    def cfgs(n: int) -> list:
        return [apply_overrides({**champion, "train.seed": i, "train.epochs": args.epochs,
                                 "train.optimizer.learning_rate":
                                     champion["train.optimizer.learning_rate"] * LR_FACTORS[i]})
                for i in range(n)]

    runs: dict[str, dict[str, list[list[float]]]] = {}
    val_rmse: dict[str, list[list[float]]] = {}
    for _ in range(args.repeats):
        for n in ns:
            for how in ("sequential", *strategies):
                marks: list[tuple[float, int, str]] = []
                group = members(ds, cfgs(n), (train, val), marks)
                loss = group[0].model.loss
                if how != "sequential":
                    fit_fused(group, on_device, loss=loss, batch_size=cfgs(1)[0].train.batch_size,
                              initial_epoch=0, epochs=args.epochs, dispatch=args.dispatch,
                              strategy=how)
                    failed = [m.error for m in group if m.error is not None]
                    if failed:
                        raise failed[0]
                else:
                    for m in group:
                        fit_on_device(m.model, on_device, loss=loss,
                                      batch_size=cfgs(1)[0].train.batch_size, seed=m.seed,
                                      initial_epoch=0, epochs=args.epochs, evaluator=m.evaluator,
                                      callbacks=m.callbacks, dispatch=args.dispatch)
                seconds = n_epochs(sorted(marks), n, args.epochs)
                runs.setdefault(f"{n}", {}).setdefault(how, []).append(seconds)
                val_rmse.setdefault(f"{n} {how}", []).append(
                    [m.evaluator.history["val_rmse"][-1] for m in group])
                print(f"N={n} {how}: N-epochs {', '.join(f'{s:.2f}' for s in seconds)} s",
                      flush=True)

    device = jax.devices()[0].device_kind
    rows = []
    for n in ns:
        r = runs[f"{n}"]
        best = {how: min(s for rep in r[how] for s in rep[1:]) for how in r}
        first = {how: float(np.median([rep[0] for rep in r[how]])) for how in r}
        rows.append(f"| {n} | {best['sequential']:.2f} | {first['sequential']:.1f} | " + " | ".join(
            f"{best[how]:.2f} | {best['sequential'] / best[how]:.2f} | {first[how]:.1f}"
            for how in strategies) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": device, "cores": os.cpu_count(), "config": champion,
            "n_train": len(train), "n_val": len(val), "epochs": args.epochs,
            "dispatch": args.dispatch, "n_epoch_seconds": runs, "val_rmse_last": val_rmse},
            indent=1, default=str))
    from hpo.training.device_loop import resolve_dispatch

    table = "\n".join([
        f"N champion trials (own seed and learning rate each) fused into one program against the "
        f"same N one after another on the device loop, Keras' JAX backend ({device}, "
        f"{os.cpu_count()} cores), {len(train)} training clusters, batch 200, "
        f"`device_dispatch: {resolve_dispatch(args.dispatch)}`, epochs 2-{args.epochs} of "
        f"{args.repeats} runs of each, alternating. An N-epoch is one epoch of every member; "
        f"speed-up: sequential time over fused:",
        "",
        "| N | sequential: s per N-epoch (fastest) | first N-epoch, s (compiles) | " + " | ".join(
            f"fused, {how}: s per N-epoch | speed-up | first N-epoch, s" for how in strategies)
        + " |",
        "| ---: | ---: | ---: | " + " | ".join("---: | ---: | ---:" for _ in strategies) + " |",
        *rows,
    ])
    if args.no_save:
        print(table, flush=True)
        return table
    return emit("fused", table)


if __name__ == "__main__":
    main()
