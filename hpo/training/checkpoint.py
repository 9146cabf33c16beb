"""A trial's checkpoint: the whole training state at an epoch end, written so a copy can resume.

    study: {checkpoint: every_epoch, checkpoint_dir: checkpoints}    # a search space

What a checkpoint holds is what the next epoch depends on: every model variable (weights,
batch-norm statistics, the states of the dropout and augmentation seed generators), the
optimizer's variables (its iteration count drives the learning-rate schedule), the epoch, the
evaluator's state (best value, best epoch, the best epoch's weights, the history that early
stopping and the pruner read) and whether training had stopped. The shuffle of an epoch is a
function of (seed, epoch) on both training paths (pipeline.py, device_loop.py), so it needs no
state. A resumed run therefore trains the epochs the lost one had left as it would have.

A checkpoint is one `checkpoint.npz` in the trial's folder, replaced whole (written to a
temporary file, flushed, renamed): a worker killed while writing leaves the previous one. The
copy to the host is made at the epoch end (for the device loop by the writing thread: its arrays
are never changed in place); the write runs on a thread of its own while the next epoch trains, and a
trial waits for it only before it reads, removes or is interrupted.

A checkpoint that cannot be used (truncated, another configuration, another data file, another
format) is refused with one line in the log, and the trial starts from epoch 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import zipfile
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from hpo.config.tree import RunConfig
from hpo.errors import first_line
from hpo.training.callbacks import learning_rate

_logger = logging.getLogger(__name__)

FORMAT = 1
FILE = "checkpoint.npz"


@dataclass
class TrainingState:
    """The state of a run after `epoch` epochs (0-based epochs 0 .. epoch - 1 done).

    Attributes:
        variables: the model's variables, in `model.variables` order (host arrays, or a JAX
            backend's device arrays until written).
        optimizer: the optimizer's variables, in `optimizer.variables` order (as variables).
        best: the evaluator's best epoch weights, as it exports them (None before a best epoch).
        history: the evaluator's metrics of each epoch done (what early stopping reads).
        learning_rate: the learning rate of each epoch done (logged beside the history).
        stopped: early stopping ended training at this epoch.
        run_id: the run that wrote it (the resumed run names it).
    """

    epoch: int
    variables: list[np.ndarray]
    optimizer: list[np.ndarray]
    best_value: float
    best_epoch: int
    best: list[np.ndarray] | None
    history: dict[str, list[float]]
    learning_rate: list[float] = field(default_factory=list)
    stopped: bool = False
    run_id: str | None = None
    trial: int | None = None


def identity(cfg: RunConfig, data_sha256: str) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: its format, the run's config and data file."""
    config = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()
    return {"format": FORMAT, "config_sha256": config, "data_sha256": data_sha256}


@dataclass
class CheckpointFile:
    """A trial's checkpoint in `folder`, kept for a run of config `ident` (see `identity`).

    Args:
        every: epochs between checkpoints (1: every epoch).
        run_id, trial: written into each checkpoint, for the run that resumes it.
    """

    folder: Path
    ident: dict[str, Any]
    every: int = 1
    run_id: str | None = None
    trial: int | None = None
    seconds: float = 0.0  # spent by the trial's own thread on checkpoints (the copy to the host)
    write_seconds: float = 0.0  # spent by the writing thread (not in the trial's way)
    saved: int = 0  # checkpoints written
    superseded: bool = False  # a later copy of the trial writes this folder
    _writer: threading.Thread | None = field(default=None, repr=False)
    _error: BaseException | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return self.folder / FILE

    def load(self) -> TrainingState | None:
        """The checkpoint to resume, or None: there is none, or it is refused (logged)."""
        self.wait()
        if not self.path.exists():
            return None
        try:
            state = self._read()
        except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile,
                EOFError) as exc:  # a truncated, foreign or hand-edited file
            why = f"cannot be read ({first_line(exc)})"
        else:
            if self._by_later_copy(state[0].trial):
                # Copies of a trial share its folder and are numbered after it: this attempt
                # was failed as lost while it was away, and its copy trains on.
                self.superseded = True
                _logger.warning("checkpoint %s was written by trial %d, a later copy of trial %d "
                                "(a peer failed this attempt as lost): it is left to the copy, and "
                                "this attempt writes no checkpoint", self.path, state[0].trial,
                                self.trial)
                return None
            why = self._mismatch(state[1])
            if not why:
                return state[0]
        _logger.warning("checkpoint %s is refused: %s; the trial starts from epoch 0", self.path, why)
        return None

    def save(self, state: TrainingState) -> None:
        """Writes `state` on a thread of its own, after the previous write has ended (nothing
        once a later copy of the trial was found to own the folder)."""
        self.wait()
        if self.superseded:
            return
        meta = {**self.ident, "epoch": state.epoch, "best_value": state.best_value,
                "best_epoch": state.best_epoch, "stopped": state.stopped,
                "history": state.history, "learning_rate": state.learning_rate,
                "run_id": self.run_id, "trial": self.trial,
                "n_best": -1 if state.best is None else len(state.best), "written": time.time()}
        arrays = {f"v{i}": a for i, a in enumerate(state.variables)}
        arrays |= {f"o{i}": a for i, a in enumerate(state.optimizer)}
        arrays |= {f"b{i}": a for i, a in enumerate(state.best or [])}
        arrays["meta"] = np.array(json.dumps(meta))
        self._writer = threading.Thread(target=self._write, args=(arrays,), daemon=True,
                                        name=f"checkpoint {self.folder.name}")
        self._writer.start()

    def wait(self) -> None:
        """Waits for the write under way, if any; a write that failed is logged, not raised."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            _logger.warning("checkpoint %s not written: %s", self.path, first_line(self._error))
            self._error = None

    def remove(self) -> None:
        """Deletes the checkpoint, its folder and the study's folder above it if that is left
        empty (the trial has ended and needs it no more); a folder that a later copy of the
        trial writes is the copy's, and stays."""
        self.wait()
        if self.superseded or self._by_later_copy(self._writer_on_disk()):
            return
        for leftover in [self.path, *self.folder.glob(f".{FILE}.*")]:
            leftover.unlink(missing_ok=True)
        for folder in (self.folder, self.folder.parent):
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (another trial's checkpoints, a foreign file) or gone

    def _by_later_copy(self, writer: Any) -> bool:
        """Whether trial `writer` (of a checkpoint's meta) is a later copy of this trial."""
        return self.trial is not None and isinstance(writer, int) and writer > self.trial

    def _writer_on_disk(self) -> Any:
        """The trial that wrote the checkpoint on disk; None when there is none or it cannot
        be read (no copy's to keep)."""
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                return json.loads(str(npz["meta"])).get("trial")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None

    def _write(self, arrays: dict[str, Any]) -> None:
        tmp = self.folder / f".{FILE}.{os.getpid()}.{threading.get_ident()}"
        t0 = time.perf_counter()
        try:
            arrays = {k: np.asarray(v) for k, v in arrays.items()}  # device arrays to the host
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self.saved += 1
            self.write_seconds += time.perf_counter() - t0
        except BaseException as exc:  # noqa: BLE001  a full disk costs the checkpoint, not the trial
            self._error = exc
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # no folder to hold it (a file in the way): nothing was written

    def _read(self) -> tuple[TrainingState, dict[str, Any]]:
        with np.load(self.path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            names = set(npz.files)
            n_v = sum(1 for k in names if k.startswith("v"))
            n_o = sum(1 for k in names if k.startswith("o"))
            n_b = int(meta["n_best"])
            state = TrainingState(
                epoch=int(meta["epoch"]),
                variables=[npz[f"v{i}"] for i in range(n_v)],
                optimizer=[npz[f"o{i}"] for i in range(n_o)],
                best_value=float(meta["best_value"]),
                best_epoch=int(meta["best_epoch"]),
                best=None if n_b < 0 else [npz[f"b{i}"] for i in range(n_b)],
                history={k: [float(x) for x in v] for k, v in meta["history"].items()},
                learning_rate=[float(x) for x in meta["learning_rate"]],
                stopped=bool(meta["stopped"]),
                run_id=meta.get("run_id"),
                trial=meta.get("trial"),
            )
        return state, meta

    def _mismatch(self, meta: dict[str, Any]) -> str:
        if meta.get("format") != FORMAT:
            return f"format {meta.get('format')}, this version reads {FORMAT}"
        if meta.get("data_sha256") != self.ident["data_sha256"]:
            return (f"it was written for data fingerprint {meta.get('data_sha256')}, the study's "
                    f"is {self.ident['data_sha256']}")
        if meta.get("config_sha256") != self.ident["config_sha256"]:
            return "it was written for another configuration"
        return ""


class Checkpointing(keras.callbacks.Callback):
    """Saves a checkpoint at the end of every `file.every`-th epoch (and of the last one run).

    Placed after the callbacks that record the epoch and before a stop request
    (loop.checkpoint_after_record): a checkpoint holds an epoch the study was told of, and the
    epoch a stop request ends the trial at.

    Args:
        file: where the checkpoint goes.
        evaluator: the run's EpochEvaluator (its best epoch and history are saved with it).
    """

    def __init__(self, file: CheckpointFile, evaluator: Any,
                 learning_rate: list[float] | None = None) -> None:
        super().__init__()
        self.file, self.evaluator = file, evaluator
        self.learning_rate = list(learning_rate or [])  # of the epochs a resumed run did not train

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        del self.learning_rate[epoch:]
        self.learning_rate.append(learning_rate(self.model))
        done = epoch + 1
        if done % self.file.every and not self.model.stop_training:
            return
        t0 = time.perf_counter()
        self.file.save(capture(self.model, self.evaluator, done, self.learning_rate))
        self.file.seconds += time.perf_counter() - t0


def capture(model: keras.Model, evaluator: Any, epoch: int,
            rates: list[float] | None = None) -> TrainingState:
    """The training state of `model` and `evaluator` after `epoch` epochs.

    The device loop's variables hold immutable JAX arrays that its next epoch replaces (its
    calls donate no buffer), so the state holds those arrays and the writing thread copies them
    to the host. Elsewhere they are copied here: Keras' own JAX trainer donates its state to
    the next step, and a TensorFlow variable changes in place.
    """
    by_reference = bool(getattr(evaluator, "arrays_stay", False))
    return TrainingState(
        epoch=epoch,
        variables=_values(model.variables, by_reference),
        optimizer=_values(model.optimizer.variables, by_reference),
        best_value=float(evaluator.best_value),
        best_epoch=int(evaluator.best_epoch),
        best=evaluator.export_best(),
        history={k: list(v) for k, v in evaluator.history.items()},
        learning_rate=list(rates or []),
        stopped=bool(getattr(model, "stop_training", False)),
    )


def _values(variables: list[Any], by_reference: bool) -> list[Any]:
    if by_reference:
        return [v.value for v in variables]
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]


def mismatch(model: keras.Model, state: TrainingState) -> str:
    """Why `state` cannot be restored into `model` ('' when it can): another network."""
    if len(model.variables) != len(state.variables):
        return (f"it holds {len(state.variables)} variables, the network "
                f"{len(model.variables)}")
    for var, value in zip(model.variables, state.variables, strict=True):
        if tuple(var.shape) != value.shape:
            return f"variable {var.path} is {tuple(var.shape)}, {value.shape} in it"
    return ""


def restore(model: keras.Model, evaluator: Any, state: TrainingState, *,
            with_optimizer: bool = True) -> None:
    """Sets `model` (compiled for the phase of `state.epoch`), its optimizer (unless the state
    is another phase's, `with_optimizer` False) and `evaluator` to `state`.

    Raises:
        ValueError: the optimizer's variables do not fit (a state `mismatch` did not check).
    """
    for var, value in zip(model.variables, state.variables, strict=True):
        var.assign(value)
    optimizer = model.optimizer
    if with_optimizer:
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        if [tuple(v.shape) for v in optimizer.variables] != [a.shape for a in state.optimizer]:
            raise ValueError("the optimizer's variables differ from the checkpoint's")
        for var, value in zip(optimizer.variables, state.optimizer, strict=True):
            var.assign(value)
    evaluator.best_value, evaluator.best_epoch = state.best_value, state.best_epoch
    evaluator.import_best(state.best)
    evaluator.history = {k: list(v) for k, v in state.history.items()}
    model.stop_training = state.stopped
