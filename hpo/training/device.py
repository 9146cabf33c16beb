"""The Keras backend and devices of a training process: threads, GPU memory share, what runs record.

    KERAS_BACKEND=jax hpo worker --study combined --storage sqlite:///hpo.db

Keras 3 picks its backend from KERAS_BACKEND (default tensorflow) when it is first imported.
Everything in the training path uses keras.ops and a keras.utils.PyDataset, so the same code
trains on TensorFlow and on JAX; only the thread and memory settings below are per backend.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from functools import lru_cache
from pathlib import Path

import keras

_logger = logging.getLogger(__name__)


def configure(threads: int | None = None, memory_mb: int | None = None) -> None:
    """Applies a worker's share of the machine before its first model is built.

    Args:
        threads: CPU threads for the backend's op pools (default HPO_THREADS, else all).
        memory_mb: GPU memory this process may take, TensorFlow only (default HPO_GPU_MEMORY_MB);
            JAX reads its share from XLA_PYTHON_CLIENT_MEM_FRACTION, set by the launcher.
    """
    threads = threads or int(os.environ.get("HPO_THREADS") or 0) or None
    memory_mb = memory_mb or int(os.environ.get("HPO_GPU_MEMORY_MB") or 0) or None
    if keras.backend.backend() == "jax":
        compilation_cache()
    if keras.backend.backend() != "tensorflow":
        return  # JAX/XLA take their thread and memory settings from the environment
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, threads))
    gpus = tf.config.list_physical_devices("GPU")
    if memory_mb and gpus:
        tf.config.set_logical_device_configuration(
            gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=memory_mb)]
        )


def compilation_cache(folder: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache, so that a program (a trial's epoch, a fused
    group's) compiles once per machine and every later worker and trial of that shape loads it.

    The folder: `folder`, else JAX_COMPILATION_CACHE_DIR, else HPO_JAX_CACHE, else
    ~/.cache/xray-hpo/jax (the user's own: a cache is trusted code, never a folder others can
    write); HPO_JAX_CACHE=off leaves it off. A folder that cannot be made, is no folder, cannot
    be written or can be written by others turns it off with one warning line: the trials run,
    compiling every program themselves. Programs that compile in under a second are not kept.
    Returns the folder, or None when off.
    """
    import jax

    folder = (folder or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get("HPO_JAX_CACHE")
              or str(Path.home() / ".cache" / "xray-hpo" / "jax"))
    if folder == "off":
        return None
    why = _unusable(Path(folder))
    if why:
        _logger.warning("JAX compilation cache off: %s %s; every worker compiles its programs",
                        folder, why)
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return folder


def _unusable(folder: Path) -> str:
    """Why `folder` cannot hold the compilation cache, '' when it can (made if missing)."""
    if folder.exists() and not folder.is_dir():
        return "is not a folder"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot be made ({exc.strerror or exc})"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "cannot be written by this user"
    # Entries are compiled code that workers load and run: one planted by another user would run
    # as this one.
    if folder.stat().st_mode & stat.S_IWOTH:
        return "can be written by other users (a cache holds compiled code that workers run)"
    return ""


def backend() -> str:
    """The Keras backend this process trains on (KERAS_BACKEND when Keras was first imported)."""
    return keras.backend.backend()


def describe() -> dict[str, str]:
    """What a run records about where it trained: Keras backend and versions, and the device."""
    backend = keras.backend.backend()
    module = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend))
    return {
        "keras_backend": backend,
        "keras_version": keras.__version__,
        "backend_version": str(getattr(module, "__version__", "?")),
        "device": gpu_name() or "cpu",
    }


@lru_cache(maxsize=1)
def gpu_name() -> str | None:
    """The name of this process's GPU (the first visible one), or None without one."""
    exe = shutil.which("nvidia-smi")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if exe is None or visible in ("", "-1"):
        return None
    cmd = [exe, "--query-gpu=name", "--format=csv,noheader"]
    if visible:
        cmd += ["-i", visible.split(",")[0]]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None
