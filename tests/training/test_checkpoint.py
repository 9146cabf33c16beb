"""Checkpoints of a run: a run interrupted after epoch e and resumed from its checkpoint ends
where the same run trained without interruption ends; a checkpoint that cannot be used is
refused in one line and the run starts from epoch 0.

    .venv/bin/python -m pytest tests/training/test_checkpoint.py     (and with KERAS_BACKEND=jax)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from hpo.config import apply_overrides
from hpo.data import load_dataset
from hpo.training import train
from hpo.training.checkpoint import CheckpointFile
from hpo.training.checkpoint import identity
from hpo.training.checkpoint import TrainingState
from hpo.training.stop import StopCheck
from hpo.training.stop import StopRequest

ON_JAX = keras.backend.backend() == "jax"
# The resume logic around the loop is the same on both backends: make test's JAX pass runs the
# two loops' resumes, the TensorFlow pass the rest.
on_tensorflow_pass = pytest.mark.skipif(ON_JAX, reason="backend-independent resume logic, run on "
                                        "the TensorFlow pass of make test")

# Dropout and augmentation on: their seed generators are part of what a checkpoint must keep.
SMALL = {
    "model.conv_blocks": [[8], [8]],
    "model.pool.size": 2,
    "model.dense": [32, 16],
    "model.dropout.rate": 0.2,
    "train.batch_size": 32,
    "train.epochs": 4,
    "train.optimizer.learning_rate": 3e-3,
}
DATA_SHA = "f" * 64


class StopAfter(StopCheck):
    """A stop request (SIGTERM) that arrives during epoch `epoch` (0-based): training stops at
    that epoch's end."""

    def __init__(self, epoch: int) -> None:
        super().__init__(StopRequest())
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.stop.requested = epoch == self.epoch
        super().on_epoch_end(epoch, logs)


class RefusedAt(keras.callbacks.Callback):
    """The study refuses the report of epoch `epoch` (a peer failed the trial as lost)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == self.epoch:
            raise RuntimeError(f"report of epoch {epoch} refused")


def config(**extra: Any):
    return apply_overrides({**SMALL, **extra})


def interrupted_then_resumed(ds, cfg, folder: Path, stop_after: int):
    """Trains `cfg` until a stop after epoch `stop_after`, then a new run from the checkpoint."""
    file = CheckpointFile(folder, identity(cfg, DATA_SHA))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, ds, callbacks=[StopAfter(stop_after)], checkpoint=file)
    seen: list[TrainingState] = []
    again = CheckpointFile(folder, identity(cfg, DATA_SHA))
    state = again.load()
    assert state is not None and state.epoch == stop_after + 1
    result = train(cfg, ds, checkpoint=again, resume=state, on_resume=seen.append)
    assert seen == [state]
    return result


def assert_same_run(a, b) -> None:
    for key, values in a.history.items():
        np.testing.assert_allclose(b.history[key], values, rtol=1e-4, atol=1e-6, err_msg=key)
    for key, value in a.val_metrics.items():
        assert b.val_metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert (b.best_epoch, b.epochs_run) == (a.best_epoch, a.epochs_run)


@pytest.mark.slow
@pytest.mark.parametrize(("loop", "stop_after"), [
    pytest.param("fit", 0, marks=on_tensorflow_pass), ("fit", 2), ("device", 1)])
def test_a_resumed_run_ends_as_the_uninterrupted_run(signal_h5, tmp_path, loop, stop_after):
    # Rule: interrupted after epoch e and resumed from its checkpoint, a run trains epochs e+1..
    # on the same batches with the same weights, optimizer state and dropout draws: its history,
    # best epoch and final validation metrics are the uninterrupted run's (float tolerance), on
    # both training paths.
    if loop == "device" and not ON_JAX:
        pytest.skip("the device loop runs on Keras' JAX backend only (make test runs this "
                    "file again with KERAS_BACKEND=jax)")
    ds = load_dataset(signal_h5)
    cfg = config(**{"train.loop": loop})
    whole = train(cfg, ds, checkpoint=CheckpointFile(tmp_path / "whole", identity(cfg, DATA_SHA)))
    resumed = interrupted_then_resumed(ds, cfg, tmp_path / "cut", stop_after)
    assert_same_run(whole, resumed)
    assert resumed.resumed_from == stop_after + 1
    assert whole.resumed_from == 0 and whole.checkpoint_seconds > 0


@on_tensorflow_pass
@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [0, 1])
def test_resume_inside_and_at_the_end_of_the_warm_start(signal_h5, tmp_path, stop_after):
    # Rule: the Gaussian likelihood trains 2 MSE epochs first with an optimizer of their own; a
    # run resumed inside them keeps that optimizer's state, one resumed at their end starts the
    # likelihood's optimizer fresh, as the uninterrupted run does.
    ds = load_dataset(signal_h5)
    cfg = config(**{"train.loss.type": "gaussian_nll", "train.loss.warm_start_epochs": 2})
    whole = train(cfg, ds)
    resumed = interrupted_then_resumed(ds, cfg, tmp_path, stop_after)
    assert_same_run(whole, resumed)


@on_tensorflow_pass
@pytest.mark.slow
def test_early_stopping_state_survives_a_resume(signal_h5, tmp_path):
    # Rule: the best value, its epoch and weights and the patience count are in the checkpoint: a
    # resumed run stops early at the epoch the uninterrupted run stops at, and restores the same
    # best weights.
    ds = load_dataset(signal_h5)
    cfg = config(**{"train.epochs": 12, "train.early_stopping_patience": 1,
                    "train.optimizer.learning_rate": 3e-2})
    whole = train(cfg, ds)
    assert whole.epochs_run < 12, "the case needs a run that stops early"
    resumed = interrupted_then_resumed(ds, cfg, tmp_path, whole.epochs_run - 2)
    assert_same_run(whole, resumed)


@on_tensorflow_pass
@pytest.mark.slow
def test_a_run_streamed_from_disk_resumes_too(signal_h5, tmp_path):
    # Rule: the file streamed in blocks (data.max_in_memory_gb 0) is shuffled by (seed, epoch)
    # as the in-memory feed is: its resumed run is its uninterrupted run.
    from hpo.data.lazy import open_dataset

    ds = open_dataset(signal_h5, max_in_memory_gb=0)
    cfg = config(**{"train.epochs": 3})
    whole = train(cfg, ds)
    assert_same_run(whole, interrupted_then_resumed(ds, cfg, tmp_path, 0))


@on_tensorflow_pass
def test_a_checkpoint_is_never_ahead_of_the_study(signal_h5, tmp_path):
    # Rule: an epoch is checkpointed after its report, before a stop request: an epoch whose
    # report is refused is not in the checkpoint (the trial's copy resumes at an epoch the study
    # holds, and a lost worker writes nothing into its copy's folder), the epoch a stop request
    # ends at is.
    ds = load_dataset(signal_h5)
    cfg = config(**{"train.epochs": 4})
    refused = CheckpointFile(tmp_path / "refused", identity(cfg, DATA_SHA))
    with pytest.raises(RuntimeError, match="epoch 2 refused"):
        train(cfg, ds, callbacks=[RefusedAt(2)], checkpoint=refused)
    state = CheckpointFile(tmp_path / "refused", identity(cfg, DATA_SHA)).load()
    assert state is not None and state.epoch == 2, "epochs 0 and 1 only"
    stopped = CheckpointFile(tmp_path / "stopped", identity(cfg, DATA_SHA))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, ds, callbacks=[RefusedAt(9), StopAfter(2)], checkpoint=stopped)
    state = CheckpointFile(tmp_path / "stopped", identity(cfg, DATA_SHA)).load()
    assert state is not None and state.epoch == 3, "epochs 0 to 2"


def _state(epoch: int = 2) -> TrainingState:
    return TrainingState(epoch=epoch, variables=[np.ones((3, 2), np.float32)],
                         optimizer=[np.zeros((), np.int64)], best_value=0.5, best_epoch=1,
                         best=None, history={"val_residual_std": [0.6, 0.5]},
                         learning_rate=[1e-3, 1e-3])


def test_a_checkpoint_round_trips_and_is_removed(tmp_path):
    file = CheckpointFile(tmp_path / "s" / "trial-3", {"format": 1, "config_sha256": "c",
                                                       "data_sha256": "d"}, run_id="r1", trial=3)
    file.save(_state())
    back = file.load()
    assert back is not None and back.epoch == 2 and back.run_id == "r1" and back.trial == 3
    np.testing.assert_array_equal(back.variables[0], np.ones((3, 2)))
    assert back.history == {"val_residual_std": [0.6, 0.5]} and back.best is None
    file.remove()
    assert not (tmp_path / "s" / "trial-3").exists()
    file.remove()  # twice is fine


@pytest.mark.parametrize("spoil", ["truncated", "empty", "garbage", "config", "data", "format"])
def test_a_checkpoint_that_cannot_be_used_is_refused_in_one_line(tmp_path, caplog, spoil):
    # Bad input: a truncated or foreign file, or one of another configuration, data file or
    # format, is refused with one log line naming it and why; the run starts from epoch 0.
    ident = {"format": 1, "config_sha256": "c", "data_sha256": "d"}
    file = CheckpointFile(tmp_path, {**ident, "format": 99} if spoil == "format" else ident)
    file.save(_state())
    file.wait()
    path = tmp_path / "checkpoint.npz"
    other = dict(ident)
    if spoil == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif spoil == "empty":
        path.write_bytes(b"")
    elif spoil == "garbage":
        path.write_bytes(b"\x00" * 512)
    elif spoil == "config":
        other["config_sha256"] = "another"
    elif spoil == "data":
        other["data_sha256"] = "another"
    with caplog.at_level(logging.WARNING, logger="hpo.training.checkpoint"):
        assert CheckpointFile(tmp_path, other).load() is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(path) in lines[0] and "starts from epoch 0" in lines[0]
    assert "\n" not in lines[0]
    expected = {"config": "another configuration", "data": "data fingerprint",
                "format": "format"}.get(spoil, "cannot be read")
    assert expected in lines[0]


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_checkpoint_that_cannot_be_written_costs_the_checkpoint_not_the_run(tmp_path, caplog):
    # A file where the folder should be (or a full disk): the write fails on its thread, the
    # next save or wait says so in one line, and the previous checkpoint stays.
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    file = CheckpointFile(blocker / "trial-0", {"format": 1})
    with caplog.at_level(logging.WARNING, logger="hpo.training.checkpoint"):
        file.save(_state())
        file.wait()
    assert len(caplog.records) == 1 and "not written" in caplog.records[0].getMessage()


def test_a_killed_write_leaves_the_previous_checkpoint(tmp_path):
    # A worker killed while writing leaves a temporary file beside the last whole checkpoint:
    # that one is read, and removing the trial's checkpoint removes both.
    ident = {"format": 1, "config_sha256": "c", "data_sha256": "d"}
    file = CheckpointFile(tmp_path / "t", ident)
    file.save(_state(epoch=2))
    file.wait()
    (tmp_path / "t" / ".checkpoint.npz.123.456").write_bytes(b"half a file")
    state = CheckpointFile(tmp_path / "t", ident).load()
    assert state is not None and state.epoch == 2
    file.remove()
    assert not (tmp_path / "t").exists()


def test_the_checkpoint_file_says_what_it_was_written_for(tmp_path):
    cfg = config()
    ident = identity(cfg, DATA_SHA)
    assert ident["data_sha256"] == DATA_SHA and len(ident["config_sha256"]) == 64
    assert identity(config(**{"train.seed": 1}), DATA_SHA) != ident
    file = CheckpointFile(tmp_path, ident)
    file.save(_state())
    file.wait()
    with np.load(tmp_path / "checkpoint.npz") as npz:
        meta = json.loads(str(npz["meta"]))
    assert meta["config_sha256"] == ident["config_sha256"] and meta["epoch"] == 2


def test_a_lost_attempt_leaves_the_folder_to_its_copy(tmp_path, caplog):
    # Rule: a trial's copies share its folder and come after it; an attempt cut off long enough
    # to be failed as lost, that comes back and finds its copy's checkpoint, neither resumes it
    # nor writes over it nor removes it: it says so in one line.
    ident = {"format": 1, "config_sha256": "c", "data_sha256": "d"}
    copy = CheckpointFile(tmp_path / "trial-1", ident, run_id="copy", trial=2)
    copy.save(_state(epoch=4))
    copy.wait()
    lost = CheckpointFile(tmp_path / "trial-1", ident, run_id="lost", trial=1)
    with caplog.at_level(logging.WARNING, logger="hpo.training.checkpoint"):
        assert lost.load() is None
    assert lost.superseded
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {lost.path} was written by trial 2, a later copy of trial 1 (a peer failed "
        "this attempt as lost): it is left to the copy, and this attempt writes no checkpoint"]
    lost.save(_state(epoch=1))
    lost.wait()
    lost.remove()
    back = CheckpointFile(tmp_path / "trial-1", ident, trial=2).load()
    assert back is not None and (back.epoch, back.trial, back.run_id) == (4, 2, "copy")
    # The copy's own checkpoint, and that of an earlier attempt, are the copy's to resume and remove.
    earlier = CheckpointFile(tmp_path / "trial-1", ident, trial=3)
    assert earlier.load() is not None and not earlier.superseded
    earlier.remove()
    assert not (tmp_path / "trial-1").exists()
