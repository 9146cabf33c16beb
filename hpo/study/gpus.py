"""GPUs for workers: the devices this machine shows, handed out round robin, one per worker.

hpo launch search_spaces/dropout.yaml --workers 4   # 2 GPUs: workers 0, 2 on GPU 0; 1, 3 on GPU 1
"""

from __future__ import annotations

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
