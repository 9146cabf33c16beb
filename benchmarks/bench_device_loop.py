"""The device-resident loop (train.loop: device) against Keras' model.fit, both on the JAX backend.

    .venv/bin/python benchmarks/bench_device_loop.py [--train-clusters 2000] [--epochs 3] [--repeats 2]
    benchmarks/gpu/run.sh loops      # on a GPU: the champion (--config champion.yaml --json ...)

Every row is the same `hpo.training.train` of one config (by default the default network,
batch 64, augmentation and dropout on; --config: a file of run-config overrides) on the same
in-memory clusters in one JAX process; only `train.loop` differs: model.fit (the baseline), and
the device loop with one compiled call per optimizer step (train.device_dispatch step, the CPU
default) and with one call per epoch (epoch: the steps in a lax.scan, the GPU default). An epoch is timed from the callbacks' epoch begin to the end of the last
callback's epoch end, so it includes the validation scoring a trial does every epoch (model.fit:
Keras' predict over the validation split after the epoch; device: the forward pass in the
epoch's own dispatch). The rate is epochs per second of the fastest epoch after the first
(which compiles), over all repeats, the two alternating so that a neighbour's load falls on
both; the median is printed beside it, and the first epoch (compile included) after them.
Prints a markdown table. On a CPU the step itself (convolutions) is most of an epoch, so the
step-per-call row measures what Keras' per-step batch copies and dispatch cost there; the
epoch-per-call row shows XLA:CPU's slow gradient convolutions inside a loop body
(jax-ml/jax#12868), which is why a CPU dispatches per step. The GPU figures come from
benchmarks/gpu/run.sh (stage loops).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import yaml  # noqa: E402

from bench_training import EpochTimer  # noqa: E402  (its epoch includes the other callbacks' work: add it last)
from emit import emit  # noqa: E402

from hpo.config import apply_overrides  # noqa: E402
from hpo.data.contract import load_dataset  # noqa: E402
from hpo.data.sim.config import SimConfig  # noqa: E402
from hpo.data.sim.simulator import write_mock  # noqa: E402
from hpo.training.loop import train  # noqa: E402

# name: overrides; the device loop with each train.device_dispatch
LOOPS = {"fit": {"train.loop": "fit"},
         "device, a step per call": {"train.loop": "device", "train.device_dispatch": "step"},
         "device, an epoch per call": {"train.loop": "device", "train.device_dispatch": "epoch"}}


def main() -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-clusters", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", type=Path, default=None, help="a data file (default: simulate one)")
    parser.add_argument("--config", type=Path, default=None,
                        help="a YAML file of run-config overrides (default: the default config)")
    parser.add_argument("--json", type=Path, default=None, help="also write every epoch's time here")
    parser.add_argument("--no-save", action="store_true",
                        help="print the table only (not benchmarks/results/device_loop.md)")
    args = parser.parse_args()
    if keras.backend.backend() != "jax":
        raise SystemExit(f"this benchmark compares loops on the JAX backend; KERAS_BACKEND is "
                         f"{keras.backend.backend()}")

    n = int(round(args.train_clusters / 0.8))
    data = args.data
    if data is None:
        data = Path(tempfile.mkdtemp(prefix="bench_device_loop_")) / "mock.h5"
        write_mock(data, n, 0, SimConfig())
    ds = load_dataset(data)
    overrides = yaml.safe_load(args.config.read_text()) if args.config else {}
    base = {**overrides, "data.path": str(data), "data.max_clusters": min(n, len(ds)),
            "train.epochs": args.epochs, "train.early_stopping_patience": None}

    timers: dict[str, list[EpochTimer]] = {loop: [] for loop in LOOPS}
    val_std: dict[str, list[float]] = {loop: [] for loop in LOOPS}
    n_train = 0
    for _ in range(args.repeats):
        for loop in LOOPS:
            timer = EpochTimer()
            result = train(apply_overrides({**base, **LOOPS[loop]}), ds, callbacks=[timer])
            timers[loop].append(timer)
            val_std[loop].append(result.history["val_residual_std"][-1])
            n_train = len(result.split.train)
            print(f"{loop}: epochs {', '.join(f'{t:.1f}' for t in timer.seconds)} s", flush=True)

    rows = []
    for loop in LOOPS:
        steady = [s for t in timers[loop] for s in t.seconds[1:]]
        first = statistics.median(t.seconds[0] for t in timers[loop])
        rows.append((loop, 1 / min(steady), 1 / statistics.median(steady), first,
                     statistics.median(val_std[loop])))
    fit_fast, fit_med = rows[0][1], rows[0][2]
    names = {"fit": "Keras `model.fit` (baseline)",
             "device, a step per call": "device loop, `device_dispatch: step` (CPU default)",
             "device, an epoch per call": "device loop, `device_dispatch: epoch` (GPU default)"}
    import jax

    device = jax.devices()[0].device_kind
    what = f"the config of {args.config.name}" if args.config else "the default model"
    batch = apply_overrides(base).train.batch_size
    if args.json:
        args.json.write_text(json.dumps({
            "device": device, "cores": os.cpu_count(), "config": base, "n_train": n_train,
            "epoch_seconds": {loop: [t.seconds for t in timers[loop]] for loop in LOOPS},
            "val_residual_std": val_std}, indent=1, default=str))
    table = "\n".join([
        f"Training loops on Keras' JAX backend ({device}, {os.cpu_count()} cores): {what}, "
        f"{n_train} training clusters, batch {batch}, epochs 2-{args.epochs} of "
        f"{args.repeats} run{'s' if args.repeats > 1 else ''} of each, alternating:",
        "",
        "| loop | epochs/s (fastest) | clusters/s | ratio | epochs/s (median) | ratio "
        "| first epoch, s (compile) | val residual std, last epoch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {names[loop]} | {fast:.3f} | {fast * n_train:.0f} | {fast / fit_fast:.2f} "
          f"| {med:.3f} | {med / fit_med:.2f} | {first:.1f} | {std:.3f} |"
          for loop, fast, med, first, std in rows),
    ])
    if args.no_save:
        print(table, flush=True)
        return table
    return emit("device_loop", table)


if __name__ == "__main__":
    main()
