"""Native-library start-up noise (absl, oneDNN, CUDA probing) kept off a command's terminal.

    hpo status              # only our output
    hpo --debug status      # or HPO_VERBOSE=1: everything TensorFlow, JAX and gRPC print

TensorFlow 2.21 writes its start-up lines through absl before any log level is read, so the
environment alone cannot hide them: the first import of tensorflow (and its device probe, where
"failed call to cuInit" comes from) or jax runs with file descriptor 2 caught, and what was
caught goes back to stderr without the native log lines.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

ENV = {
    # TensorFlow's and XLA's C++ log lines once loaded, errors too (grappler's harmless "remapper
    # failed"): a real failure reaches us as an exception.
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "GRPC_VERBOSITY": "ERROR",  # the storage proxy's gRPC
}
MODULES = ("tensorflow", "jax")
# absl / glog lines ("I0000 00:00:17.0 123 port.cc:153] ..."), absl's preamble, and the second
# line of TensorFlow's CPU-feature notice.
NOISE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|To enable the following instructions: )"
)


def verbose() -> bool:
    """Whether the user asked for everything: --debug (HPO_DEBUG) or HPO_VERBOSE set and not 0."""
    return any(os.environ.get(k, "") not in ("", "0") for k in ("HPO_DEBUG", "HPO_VERBOSE"))


def install() -> None:
    """Sets the quiet environment (kept by workers this process starts) and catches the first
    import of tensorflow and jax; does nothing when the user asked for verbose output."""
    if verbose():
        return
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Runs the block with fd 2 caught; then writes back to stderr every line but the noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if not NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of MODULES so their first import runs filtered."""

    def find_spec(
        self, name: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps its own loader (importlib.resources and pickling look at it).
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with native_stderr_filtered():
            self.loader.exec_module(module)
            if module.__name__ == "tensorflow":
                module.config.list_physical_devices()  # the CUDA probe, while still filtered
