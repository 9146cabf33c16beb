"""GPUs for workers: the devices this machine shows, handed out round robin, K workers per GPU.

hpo launch search_spaces/dropout.yaml --workers 4   # 2 GPUs: workers 0, 2 on GPU 0; 1, 3 on GPU 1
hpo launch search_spaces/combined.yaml --workers-per-gpu 4   # 4 workers on each visible GPU

Workers that share a GPU each get a bounded share of its memory, through each backend's own
settings: JAX's XLA_PYTHON_CLIENT_MEM_FRACTION (no preallocation), and for TensorFlow
HPO_GPU_MEMORY_MB, which the worker turns into a logical-device memory limit.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Callable
from collections.abc import Mapping


def nvidia_smi_gpus() -> list[str]:
    """Indices of the GPUs `nvidia-smi` lists; none when it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def visible_gpus(
    env: Mapping[str, str] | None = None, list_gpus: Callable[[], list[str]] = nvidia_smi_gpus
) -> list[str]:
    """The GPUs workers may use, as CUDA_VISIBLE_DEVICES entries (indices or GPU-/MIG- UUIDs).

    CUDA_VISIBLE_DEVICES, when set, decides: its entries up to the first invalid one, as CUDA
    reads it (empty or "-1" means no GPU). Otherwise every GPU `list_gpus` finds.
    """
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" not in env:
        return list_gpus()
    devices = []
    for entry in (e.strip() for e in env["CUDA_VISIBLE_DEVICES"].split(",")):
        if not entry or entry.startswith("-"):
            break  # CUDA ignores this entry and every one after it
        devices.append(entry)
    return devices


def round_robin(n_workers: int, gpus: list[str]) -> list[str | None]:
    """The GPU of each worker: worker i gets gpus[i % len(gpus)]; all None without GPUs."""
    if not gpus:
        return [None] * n_workers
    return [gpus[i % len(gpus)] for i in range(n_workers)]


MEMORY_HEADROOM = 0.9  # of a GPU's memory handed to its workers; the rest is the driver's and CUDA's


def sharing(assigned: list[str | None]) -> dict[str, int]:
    """{gpu: number of workers placed on it}, from round_robin's result."""
    out: dict[str, int] = {}
    for gpu in assigned:
        if gpu is not None:
            out[gpu] = out.get(gpu, 0) + 1
    return out


def gpu_env(gpu: str, workers_on_it: int, memory_mb: int | None = None) -> dict[str, str]:
    """Environment of one worker on `gpu` that shares it with `workers_on_it` - 1 others.

    Args:
        gpu: a CUDA_VISIBLE_DEVICES entry.
        workers_on_it: workers placed on that GPU (1: the worker may take all of it).
        memory_mb: the GPU's memory, for TensorFlow's limit; None leaves TensorFlow growing.
    """
    # JAX takes memory as the trial needs it, not 75% of the card at start (a lone worker's
    # preallocation held 105 GiB of an H200 for a network of a few MB).
    env = {"CUDA_VISIBLE_DEVICES": gpu, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    if workers_on_it > 1:
        fraction = math.floor(MEMORY_HEADROOM / workers_on_it * 1000) / 1000  # never above the headroom
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.3f}"
        if memory_mb:
            env["HPO_GPU_MEMORY_MB"] = str(int(memory_mb * fraction))
    return env


def gpu_memory_mb() -> dict[str, int]:
    """{GPU index: total memory in MiB} as nvidia-smi reports it; empty without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = (line.split(",") for line in out.splitlines() if line.count(",") == 1)
    return {i.strip(): int(float(m)) for i, m in rows if i.strip().isdigit()}
