"""Training throughput of the default model on Keras' JAX backend against TensorFlow, on this CPU.

    .venv/bin/python benchmarks/bench_backends.py [--train-clusters 4000] [--epochs 5] [--repeats 2]

The same `hpo.training.train` of the default config on the same in-memory clusters, once per
backend per repeat, alternating (TensorFlow, JAX, TensorFlow, JAX, ...) so that a neighbour's
load on the VM falls on both; each run is a fresh process, because Keras fixes its backend at
import. The rate is training clusters per second of the fastest epoch after the first (which
compiles), over all repeats; the median is printed beside it. Baseline: TensorFlow, the CPU
default. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from emit import emit

RUN = """
import json, sys, time
import keras
from hpo.config import apply_overrides
from hpo.data.contract import load_dataset
from hpo.trial.recorder import NullRecorder
from hpo.trial.runner import run_trial

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None): self.t0 = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None): seconds.append(time.perf_counter() - self.t0)

seconds = []
ds = load_dataset(sys.argv[1])
cfg = apply_overrides({"train.epochs": int(sys.argv[2]), "data.val_fraction": 0.1, "data.test_fraction": 0.1})
result = run_trial(cfg, ds, NullRecorder(), callbacks=[Timer()]).result
print(json.dumps({"backend": keras.backend.backend(), "train": len(result.split.train), "seconds": seconds,
                  "val_residual_std": result.val_metrics["residual_std"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-clusters", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from hpo.data.sim.simulator import load_sim_config
    from hpo.data.sim.simulator import write_mock

    backends = ("tensorflow", "jax")
    with tempfile.TemporaryDirectory() as tmp:
        data = write_mock(Path(tmp) / "mock.h5", int(args.train_clusters / 0.8), 0, load_sim_config(None, "eRASS:8"))
        runs: dict[str, list[dict]] = {b: [] for b in backends}
        for _ in range(args.repeats):
            for backend in backends:
                env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
                out = subprocess.run([sys.executable, "-c", RUN, str(data), str(args.epochs)], env=env,
                                     capture_output=True, text=True, check=True).stdout
                runs[backend].append(json.loads(out.strip().splitlines()[-1]))
    n = runs["tensorflow"][0]["train"]
    rows = []
    for backend in backends:
        steady = [s for r in runs[backend] for s in r["seconds"][1:]]
        rows.append((backend, n / min(steady), n / statistics.median(steady),
                     statistics.median(r["val_residual_std"] for r in runs[backend])))
    base = rows[0]
    lines = [
        f"Keras backends on this CPU ({os.cpu_count()} cores): the default model, {n} training clusters, "
        f"epochs 2-{args.epochs} of {args.repeats} alternating runs each:",
        "",
        "| backend | clusters/s (fastest epoch) | ratio | clusters/s (median epoch) | ratio | val residual std (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, fast, med, val in rows:
        label = f"{name} (baseline)" if name == base[0] else name
        lines.append(f"| {label} | {fast:.0f} | {fast / base[1]:.2f} | {med:.0f} | {med / base[2]:.2f} | {val:.3f} |")
    emit("backends", "\n".join(lines))


if __name__ == "__main__":
    main()
