"""Runs every benchmark and writes docs/benchmarks.md from their tables (one command).

    .venv/bin/python benchmarks/make_benchmarks.py              # all of them, about 1 h on 2 cores
    .venv/bin/python benchmarks/make_benchmarks.py --only training,pruning
    .venv/bin/python benchmarks/make_benchmarks.py --reuse      # rebuild the page from saved tables

Each benchmark prints its table with ratios against a baseline measured in the same run and
saves it as benchmarks/results/<name>.md; this page is those tables in order, with what each
measures. Speed is never asserted in tests, only measured here.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from emit import RESULTS

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "docs" / "benchmarks.md"
MOCK = HERE.parent / "data" / "results" / "erass8_10k.h5"  # shared with make_results.py
ARGS = {"search": ["--data", str(MOCK)], "pruning": ["--data", str(MOCK)],
        "gpu": ["--out", os.devnull, "--table-from", str(HERE.parent / "docs/results/gpu-store/kbench.json")]}
GPU_ONLY = {"gpu"}  # measured on a GPU machine; a full CPU run reuses its saved table

# name, script, what it answers, its target
BENCHMARKS = [
    ("training", "bench_training.py",
     "Training throughput of `hpo`'s loop (per-epoch validation scoring, Optuna pruning callback, "
     "MLflow logging per epoch) against a bare `model.fit` of the same network on the same "
     "in-memory arrays, at the lab report's 7151 training clusters. What the profile found: the "
     "one real cost of the loop is scoring the validation split every epoch (a forward pass over "
     "894 clusters, 0.24 s of a 6.3 s epoch); it went through `model.predict`, whose per-call "
     "set-up (a data adapter and a callback list) added another 0.06-0.1 s, and now goes through "
     "`predict_on_batch` in chunks of 512. The streaming train metric, the pruning report and "
     "the MLflow write are each a few milliseconds. Epoch times on this VM vary by up to 50% with "
     "the neighbours' load, so rates come from each run's fastest epoch.",
     "at least 0.95 of the bare rate"),
    ("pruning", "bench_pruning.py",
     "The dropout study with and without median pruning, at the same trial count.",
     "at least 40% fewer epochs for a best val residual std within 0.005 dex"),
    ("search", "bench_search.py",
     "Search efficiency on one space and one epoch budget: Optuna TPE with median pruning, "
     "keras-tuner Hyperband (`engine: keras_tuner`), and random search as the baseline; best val "
     "residual std against epochs spent, over 3 seeds.",
     "TPE + pruning reaches a better residual std than random search for the same epochs"),
    ("simulate", "bench_simulate.py",
     "`hpo simulate`: clusters per second against a per-cluster loop, and peak memory at 100,000 "
     "clusters.",
     "memory bounded (chunked writing), independent of N"),
    ("backends", "bench_backends.py",
     "Keras' JAX backend against TensorFlow (the CPU default) for the default model on this CPU: "
     "the same `hpo.training.train` in fresh processes, alternating.",
     "a measured ratio (TensorFlow stays the CPU default unless JAX is clearly faster)"),
    ("device_loop", "bench_device_loop.py",
     "The device-resident loop (issue 24, part 1; `train.loop: device`): the same network trained "
     "through Keras' `model.fit` and through the device loop, on the JAX backend, same process, "
     "same data, alternating. On a CPU `device_dispatch: epoch` (the whole epoch one compiled "
     "lax.scan) is slow: XLA:CPU runs the gradient convolutions inside a loop body about ten "
     "times slower (jax-ml/jax#12868), so the CPU default is one call per step; the GPU figures "
     "come from `benchmarks/gpu/run.sh loops`.",
     "a measured ratio, with why"),
    ("gpu", "gpu/kbench.py",
     "Several trials per GPU: `hpo launch --workers-per-gpu K` on one GPU (run on a GPU machine by "
     "`benchmarks/gpu/run.sh kbench`; this page rebuilds its table with `kbench.py --table-from "
     "docs/results/gpu-store/kbench.json`).",
     "at least 3x the trials per hour of K = 1 at K = 8, and a best value no worse at the same trial count"),
    ("checkpoint", "bench_checkpoint.py",
     "What a trial's checkpoint at every epoch end (`study.checkpoint: every_epoch`, the default) "
     "costs against none, in one process on the same clusters: the variables copied to the host "
     "on the trial's thread, written on a thread of its own beside the next epoch. The cost is "
     "fixed per epoch (a 5.5 MB file for the default network: about 15 ms of copy and 20 ms of "
     "writing here), so it is a share of an epoch only for epochs of a second or more; at 400 "
     "training clusters (0.5 s epochs) it was 6%: for very short epochs use `study.checkpoint: "
     "every_k`. Epoch times on this VM spread by tens of per cent with the neighbours' load, "
     "more than the cost, so the CPU time an epoch takes (all threads of the process) and the "
     "direct measure answer the target, not the wall-clock ratios.",
     "at most 3% of an epoch"),
    ("fused", "bench_fused.py",
     "Several trials in one program (issue 24, part 2; `hpo/training/fused.py`): N trials of one "
     "network shape, each with its own seed and learning rate, trained as one compiled program "
     "against the same N one after another on the device loop, Keras' JAX backend, this CPU. "
     "`vmap` batches the members' steps, so each convolution over the stack becomes one grouped "
     "convolution (`feature_group_count` N), which XLA:CPU runs at about a third of the speed of "
     "N plain ones (measured alone: one 5 x 5 convolution's gradient over 200 images of 50 x 50 x "
     "12, 0.57 s; two members vmapped, 3.3 s; four, 8.2 s); `unroll` puts each member's step in "
     "the program one after the other (plain convolutions), and is the CPU default. Measured: "
     "`unroll` trains N = 2 and 4 members in 0.98-1.01 of the time they take one after another "
     "(on 2 cores a step is all convolution work, which fusing does not reduce; what it saves, "
     "the per-call dispatch and N - 1 compilations, is small here), `vmap` in 3-4 times it. "
     "N = 1 through the fused program came out 1.17-1.19 by the fastest epoch, but the same "
     "fused epoch spread from 3.2 to 5.4 s in a rerun (the plain loop's from 5.0 to 5.3), so "
     "read it as no difference: the same step, with a leading axis of one. "
     "Where fusion should pay is a GPU, where one small trial leaves the card mostly idle: "
     "`benchmarks/gpu/run.sh fused` measures it there (N = 1, 2, 4, 8, both strategies); "
     "until it has run, fusion's GPU figure is open.",
     "a measured ratio (on a CPU fusion pays only what dispatch costs)"),
    ("epoch_calls", "bench_epoch_calls.py",
     "What a trial's per-epoch calls to its stores (the MLflow epoch log, the study report and "
     "the pruner's verdict, a few tens of milliseconds on SQLite) cost the device loop, which "
     "dispatches each epoch before the previous epoch's callbacks run so that they overlap the "
     "device's work (`fit_on_device(pipeline=True)`). A callback that then ran a device "
     "operation (the learning rate of a schedule) waited behind the whole next epoch: the loop "
     "reads it before dispatching. On this CPU the two cores that compute the epoch are the "
     "ones the callbacks run on, so the overlap buys nothing measurable here (the calls are "
     "1-2% of a CPU epoch, inside this VM's noise) and costs the epoch a stopped run dispatched "
     "ahead: pipelining is on for accelerators only (`resolve_pipeline`). At GPU speed (epochs "
     "of a few tenths of a second) the same calls are the share the target is about, measured "
     "by `benchmarks/gpu/run.sh epochcalls`.",
     "the calls under 2% of an epoch at GPU speed"),
    ("shapes", "bench_shapes.py",
     "How often the trials a worker would ask at once can fuse: the combined study's own sampler "
     "(multivariate TPE, 15 random start-up trials, 100 trials) replayed with a worker asking N "
     "at once, a synthetic objective in place of training. The fusion key "
     "(`hpo/training/fusion.py`) splits on everything that shapes the program: of "
     "combined.yaml's axes only the learning rate, the dropout rate and the L2 strength (and the "
     "seed) are a member's own; filters (57 values), kernel (4), pooling, transform, dense "
     "layers, dropout on or off, regulariser on or off, batch norm, optimizer, schedule, batch "
     "size, loss and the two augmentation flags are each another program. Shapes rarely repeat: "
     "at N = 8 a program holds 1.07 trials on average. Keying on variable shapes alone (as if "
     "every other setting became a per-member array) gives 1.10; padding conv filters and "
     "kernels to the largest with masks gives 3.3, but a member of 12 filters of 3 x 3 padded "
     "to 64 of 5 x 5 does about 80 times its convolution work, so padding cannot pay. What the "
     "product does: fusion is for trials that differ in the per-member numbers only (`hpo "
     "refit`'s seeds, a grid's seeds (`study.repeats`), a space that tunes the optimizer and regularisation of a "
     "fixed network), and a worker of a space like combined.yaml trains its trials one at a time "
     "(N = 1).",
     "measured; fusion where a program holds more than one trial"),
    ("storage", "bench_storage.py",
     "Coordination cost of the study storages (SQLite, PostgreSQL, the gRPC proxy) with 1-8 "
     "workers, as a share of a real trial.",
     "a few per cent of a trial at most"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated names to rerun; the rest are reused")
    parser.add_argument("--reuse", action="store_true", help="rerun nothing; rebuild the page")
    args = parser.parse_args()
    names = [b[0] for b in BENCHMARKS]
    rerun = [] if args.reuse else (args.only.split(",") if args.only else [n for n in names if n not in GPU_ONLY])
    unknown = sorted(set(rerun) - set(names))
    if unknown:
        sys.exit(f"--only: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")

    if {"search", "pruning"} & set(rerun) and not MOCK.exists():
        from hpo.data.sim.config import load_sim_config
        from hpo.data.sim.simulator import write_mock

        MOCK.parent.mkdir(parents=True, exist_ok=True)
        write_mock(MOCK, 10_000, 0, load_sim_config(preset="eRASS:8"))
    for name, script, *_ in BENCHMARKS:
        if name in rerun:
            print(f"== {name}: {script}", flush=True)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(HERE / script), *ARGS.get(name, [])],
                           check=True, cwd=HERE.parent)
            print(f"== {name}: {time.perf_counter() - t0:.0f} s", flush=True)

    parts = [
        "# Benchmarks",
        "",
        "Regenerated by `.venv/bin/python benchmarks/make_benchmarks.py` (see its `--only` and "
        "`--reuse`). Every table compares against a baseline measured in the same run; the "
        "absolute numbers depend on the machine, the ratios much less.",
        "",
        f"Machine of the last full run: {os.cpu_count()} CPU cores, {platform.machine()}, "
        f"Python {platform.python_version()}, no GPU unless a table says so.",
    ]
    for name, script, what, target in BENCHMARKS:
        saved = RESULTS / f"{name}.md"
        parts += ["", f"## {name.replace('_', ' ').capitalize()}", "", what, "", f"Target: {target}. "
                  f"Script: [`benchmarks/{script}`](../benchmarks/{script}).", ""]
        parts.append(saved.read_text().rstrip() if saved.exists()
                     else f"_Not measured yet: run `benchmarks/make_benchmarks.py --only {name}`._")
        figure = PAGE.parent / "figures" / f"bench_{name}.png"
        if figure.exists():
            parts += ["", f"![{name}](figures/{figure.name})"]
    PAGE.write_text("\n".join(parts) + "\n")
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
