"""Speed and memory of the mock generator, against a per-cluster loop measured in the same run.

    .venv/bin/python benchmarks/bench_simulate.py [--n 10000] [--memory-n 100000] [--naive-n 200]

Rows (markdown table): the baseline, a per-cluster loop (`simulate_chunk` called with n=1,
`--naive-n` times, extrapolated to `--n`); one vectorised chunk without I/O; `write_mock` at `--n`
(vectorised chunks plus compressed HDF5); and the peak resident memory of `write_mock` at
`--memory-n` in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emit import emit

from hpo.data.sim.config import SimConfig
from hpo.data.sim.simulator import CHUNK_CLUSTERS
from hpo.data.sim.simulator import simulate_chunk
from hpo.data.sim.simulator import write_mock

_CHILD = (
    "import sys; from hpo.data.sim.simulator import write_mock; "
    "write_mock(sys.argv[1], int(sys.argv[2]), 0)"
)


def naive_rate(n: int) -> float:
    """Clusters per second of a per-cluster loop through the same physics."""
    cfg, rng = SimConfig(), np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(n):
        simulate_chunk(rng, 1, cfg)
    return n / (time.perf_counter() - start)


def chunk_rate(n: int) -> float:
    """Clusters per second of simulate_chunk on n clusters at once (no file I/O)."""
    cfg, rng = SimConfig(), np.random.default_rng(0)
    start = time.perf_counter()
    simulate_chunk(rng, n, cfg)
    return n / (time.perf_counter() - start)


def write_rate(n: int, folder: Path) -> tuple[float, float]:
    """(seconds, file MB) of write_mock for n clusters."""
    start = time.perf_counter()
    path = write_mock(folder / "bench.h5", n, 0, SimConfig())
    return time.perf_counter() - start, path.stat().st_size / 1e6


def peak_memory_mb(n: int, folder: Path) -> tuple[float, float]:
    """(peak resident MB, seconds) of write_mock for n clusters in a fresh interpreter."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder / "mem.h5"), str(n)],
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    seconds = time.perf_counter() - start
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, seconds  # KiB on Linux


def main(argv: list[str] | None = None) -> str:
    """Runs the three measurements; prints and saves a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="Clusters for the speed run.")
    parser.add_argument(
        "--memory-n", type=int, default=100_000, help="Clusters for the memory run."
    )
    parser.add_argument(
        "--naive-n", type=int, default=200, help="Clusters for the per-cluster loop."
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        naive = naive_rate(args.naive_n)
        chunk = chunk_rate(CHUNK_CLUSTERS)
        seconds, size_mb = write_rate(args.n, folder)
        peak_mb, mem_seconds = peak_memory_mb(args.memory_n, folder)
    rate = args.n / seconds
    out: list[str] = []
    out.append(f"cpu cores: {os.cpu_count()}, python {sys.version.split()[0]}\n")
    out.append("| run | clusters | seconds | clusters/s | notes |")
    out.append("| --- | ---: | ---: | ---: | --- |")
    out.append(
        f"| per-cluster loop (baseline) | {args.naive_n} | {args.naive_n / naive:.1f} | "
        f"{naive:.0f} | extrapolated to {args.n}: {args.n / naive:.0f} s |"
    )
    out.append(
        f"| simulate_chunk, vectorised, no I/O | {CHUNK_CLUSTERS} | "
        f"{CHUNK_CLUSTERS / chunk:.1f} | "
        f"{chunk:.0f} | {chunk / naive:.1f}x the loop |"
    )
    out.append(
        f"| write_mock | {args.n} | {seconds:.1f} | {rate:.0f} | {rate / naive:.1f}x the loop; "
        f"file {size_mb:.1f} MB |"
    )
    out.append(
        f"| write_mock, fresh process | {args.memory_n} | {mem_seconds:.1f} | "
        f"{args.memory_n / mem_seconds:.0f} | peak RSS {peak_mb:.0f} MB |"
    )
    return emit("simulate", "\n".join(out))


if __name__ == "__main__":
    main()
