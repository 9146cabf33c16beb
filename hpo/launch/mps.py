"""NVIDIA MPS for workers that share a GPU: their kernels run side by side, not time-sliced.

    hpo launch search_spaces/combined.yaml --workers-per-gpu 8     # MPS started when it can be

K worker processes on one GPU otherwise take turns on it (time slicing); under the Multi-Process
Service their small kernels run at once. When some GPU gets more than one of the local workers,
`hpo launch` (and `hpo worker --workers-per-gpu K`) starts a private MPS control daemon (its
pipe and log folders in a temporary folder of its own, so it neither needs root nor touches a
daemon someone else runs), hands its pipe folder to the workers (CUDA_MPS_PIPE_DIRECTORY) and
stops it when they have exited. Before any worker starts, one CUDA client per shared GPU is
started under the daemon (a context created and a megabyte allocated through the driver), so a
daemon that starts but cannot serve (a GPU in a compute mode MPS refuses, a container without
its devices) is stopped instead of failing every worker. It says so in one line, and says why
when it cannot: no `nvidia-cuda-mps-control` on PATH, the daemon refused to start, a client
could not start under it, or HPO_MPS=off. A daemon the user runs already
(CUDA_MPS_PIPE_DIRECTORY set) is used as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from hpo.errors import first_line
from hpo.launch.gpus import sharing

CONTROL = "nvidia-cuda-mps-control"
MPS_ENV = "HPO_MPS"  # off: never start it
PROBE_TIMEOUT_S = 60

# A CUDA client through the driver alone (no JAX import: a second, not ten): under MPS creating
# the context is what starts the daemon's server, so a server that cannot start fails here.
_PROBE = r"""
import ctypes, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    sys.exit(f"no CUDA driver ({exc})")
def check(rc, what):
    if rc:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(rc, ctypes.byref(name))
        sys.exit(f"{what}: {(name.value or b'error').decode()} ({rc})")
dev, ctx, mem = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
check(cuda.cuInit(0), "cuInit")
check(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
check(cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
check(cuda.cuMemAlloc_v2(ctypes.byref(mem), ctypes.c_size_t(1 << 20)), "cuMemAlloc")
check(cuda.cuMemFree_v2(mem), "cuMemFree")
check(cuda.cuDevicePrimaryCtxRelease_v2(dev), "cuDevicePrimaryCtxRelease")
"""


@contextmanager
def mps_for(gpus: Sequence[str | None], echo: Callable[[str], None]) -> Iterator[dict[str, str]]:
    """The environment the workers on `gpus` (each worker's CUDA_VISIBLE_DEVICES, None for a
    CPU worker) need for MPS: empty when no GPU is shared or MPS cannot run here (said by
    `echo`). A daemon started here is stopped on exit."""
    shared = list(_shared(gpus))
    if not shared:
        yield {}
        return
    if os.environ.get(MPS_ENV, "").lower() in ("off", "0", "false", "no"):
        echo(f"MPS: off ({MPS_ENV}); the workers sharing a GPU take turns on it")
        yield {}
        return
    if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        echo(f"MPS: using the daemon of CUDA_MPS_PIPE_DIRECTORY={os.environ['CUDA_MPS_PIPE_DIRECTORY']}")
        yield {}
        return
    control = shutil.which(CONTROL)
    if control is None:
        echo(f"MPS: not started (no {CONTROL} on PATH); the workers sharing a GPU take turns on it")
        yield {}
        return
    folder = Path(tempfile.mkdtemp(prefix="hpo-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"),
           "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    for path in env.values():
        Path(path).mkdir()
    started = _run([control, "-d"], env)
    if started:
        echo(f"MPS: not started ({started}); the workers sharing a GPU take turns on it")
        shutil.rmtree(folder, ignore_errors=True)
        yield {}
        return
    refused = next((f"GPU {gpu}: {why}" for gpu in shared if (why := client_starts(gpu, env))), "")
    if refused:
        echo(f"MPS: not used (a CUDA client could not start under it, {refused}); "
             "the workers sharing a GPU take turns on it")
        _stop(control, env, folder, echo)
        yield {}
        return
    echo(f"MPS: daemon started for the workers sharing GPU {', '.join(shared)} ({folder})")
    try:
        yield env
    finally:
        _stop(control, env, folder, echo)


def across_containers(gpus: Sequence[str | None]) -> str:
    """What to say when worker containers (each's GPU in `gpus`) share a GPU: MPS is started
    inside a container for its own workers, not across containers, so those take turns."""
    shared = _shared(gpus)
    if not shared:
        return ""
    each = ", ".join(f"GPU {g}: {n} containers" for g, n in shared.items())
    return (f"MPS: not used across worker containers ({each}), which take turns on their GPU; "
            "--workers-per-gpu K runs K workers side by side in one container, under MPS where "
            f"its image has {CONTROL}")


def _shared(gpus: Sequence[str | None]) -> dict[str, int]:
    """{gpu: how many of `gpus` name it} for the GPUs named more than once."""
    return {g: n for g, n in sharing(list(gpus)).items() if n > 1}


def client_starts(gpu: str, env: dict[str, str]) -> str:
    """'' when a CUDA client on `gpu` starts under the MPS daemon of `env`, else why not."""
    return _run([sys.executable, "-c", _PROBE], {**env, "CUDA_VISIBLE_DEVICES": gpu},
                timeout=PROBE_TIMEOUT_S)


def _stop(control: str, env: dict[str, str], folder: Path, echo: Callable[[str], None]) -> None:
    """Tells the daemon to quit; its folder goes with it, or stays (named) for its log."""
    stopped = _run([control], env, stdin="quit\n")
    if stopped:
        echo(f"MPS: the daemon did not stop cleanly ({stopped}); see {env['CUDA_MPS_LOG_DIRECTORY']}")
    else:
        shutil.rmtree(folder, ignore_errors=True)


def _run(argv: list[str], env: dict[str, str], stdin: str | None = None,
         timeout: float = 30) -> str:
    """Runs an MPS control command; '' when it succeeded, else why not in a few words."""
    try:
        out = subprocess.run(argv, env={**os.environ, **env}, input=stdin, capture_output=True,
                             text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return first_line(exc)
    if out.returncode != 0:
        return f"exit {out.returncode}: {first_line(out.stderr.strip() or out.stdout.strip())}"
    return ""
