"""The one trial runner: every way out of a trial ends its run, and a trial runs without MLflow."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import keras
import optuna
import pytest

from hpo.config import apply_overrides
from hpo.data.contract import load_dataset
from hpo.errors import TrialFailed
from hpo.trial.recorder import NullRecorder
from hpo.trial.runner import run_trial

TINY = {"model": {"conv_blocks": [[4], [4]], "pool": {"size": 2}, "dense": [16]},
        "train": {"epochs": 3, "batch_size": 32, "optimizer": {"learning_rate": 3e-3}}}


class ListRecorder(NullRecorder):
    """A recorder that keeps what it was told, in order: the runner's side of the interface."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_on = fail_on
        self.run_id = None

    def _call(self, *entry) -> None:
        self.calls.append(entry)
        if entry[0] == self.fail_on:
            self.fail_on = None  # once: the run can still be ended
            raise RuntimeError(f"recorder refused {entry[0]}")

    def start(self, cfg):
        self.run_id = "run-1"
        self._call("start")

    def log_inputs(self, cfg, dataset):
        self._call("inputs")

    def log_epoch(self, metrics, step):
        self._call("epoch", step, "val_residual_std" in metrics)

    def log_pruned(self, history, epochs):
        self._call("pruned", epochs, len(history["loss"]))

    def log_result(self, result, dataset, *, log_model):
        self._call("result", log_model)
        return "models:/m/1" if log_model else None

    def finish(self, state, *, epochs_run=None, reason=None):
        self._call("finish", state, epochs_run, reason)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def _cfg(signal_h5, **overrides):
    return apply_overrides({**TINY, "data": {"path": str(signal_h5)}, **overrides}, where="test")


class _Raise(keras.callbacks.Callback):
    def __init__(self, exc: BaseException, epoch: int) -> None:
        super().__init__()
        self.exc, self.epoch = exc, epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise self.exc


def test_a_complete_trial_records_start_inputs_epochs_result_then_finish(signal_h5):
    # Rule: the runner records in order: start, inputs, one epoch per epoch (step = epoch), the
    # result (with the log_model decision, a function of the value), and finishes COMPLETE.
    rec = ListRecorder()
    seen = []
    outcome = run_trial(_cfg(signal_h5), load_dataset(signal_h5), rec,
                        log_model=lambda value: seen.append(value) or True)
    assert rec.names() == ["start", "inputs", "epoch", "epoch", "epoch", "result", "finish"]
    assert [c[1] for c in rec.calls if c[0] == "epoch"] == [0, 1, 2]
    assert all(c[2] for c in rec.calls if c[0] == "epoch")
    assert rec.calls[-1] == ("finish", "COMPLETE", 3, None)
    assert seen == [outcome.value] and outcome.model_uri == "models:/m/1"
    assert math.isfinite(outcome.value) and outcome.value == outcome.result.val_metrics["residual_std"]


def test_a_pruned_trial_ends_pruned_with_its_curves_and_the_pruning_epoch(signal_h5):
    # Rule: optuna.TrialPruned from a callback at epoch 1 ends the run PRUNED after 2 epochs, with
    # its curves up to that epoch recorded (the pruning epoch included), and is raised again.
    rec = ListRecorder()
    with pytest.raises(optuna.TrialPruned):
        run_trial(_cfg(signal_h5), load_dataset(signal_h5), rec,
                  callbacks=[_Raise(optuna.TrialPruned("cut"), 1)])
    assert rec.names() == ["start", "inputs", "epoch", "epoch", "pruned", "finish"]
    assert rec.calls[-2] == ("pruned", 2, 2) and rec.calls[-1] == ("finish", "PRUNED", 2, None)


@pytest.mark.parametrize(("exc", "state", "reason"), [
    (KeyboardInterrupt(), "KILLED", "interrupted"),
    (ValueError("output size would be zero"), "FAIL", "ValueError: output size would be zero"),
    (TrialFailed("bad point", kind="config"), "FAIL", "config: bad point"),
])
def test_a_trial_that_raises_ends_its_run_with_the_state_and_reason(signal_h5, exc, state, reason):
    # Rule: an interrupt ends the run KILLED "interrupted"; any other error FAIL with its kind and
    # message; the error goes on to the engine.
    rec = ListRecorder()
    with pytest.raises(type(exc)):
        run_trial(_cfg(signal_h5), load_dataset(signal_h5), rec, callbacks=[_Raise(exc, 0)])
    assert rec.calls[-1] == ("finish", state, None, reason)


def test_a_recorder_that_fails_at_the_end_fails_the_trial_and_still_ends_the_run(signal_h5):
    # Rule: a tracking store that refuses the final "COMPLETE" fails the trial with that reason,
    # and the runner still tries to end the run FAIL.
    rec = ListRecorder(fail_on="finish")
    with pytest.raises(RuntimeError, match="recorder refused finish"):
        run_trial(_cfg(signal_h5), load_dataset(signal_h5), rec)
    assert rec.calls[-2][:2] == ("finish", "COMPLETE")
    assert rec.calls[-1] == ("finish", "FAIL", None, "RuntimeError: recorder refused finish")


def test_a_nan_loss_fails_the_trial_and_its_run(signal_h5):
    # Rule: a diverging trial (NaN loss) ends FAIL with the reason; nothing is logged as a result.
    rec = ListRecorder()
    with pytest.raises(TrialFailed):
        run_trial(_cfg(signal_h5, **{"train.optimizer.learning_rate": 1e6}), load_dataset(signal_h5), rec)
    assert "result" not in rec.names()
    assert rec.calls[-1][:2] == ("finish", "FAIL") and "nan" in rec.calls[-1][3].lower()


BLOCK_MLFLOW = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoMlflow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mlflow" or name.startswith("mlflow."):
                raise ImportError("No module named 'mlflow' (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoMlflow())
    try:
        import mlflow  # noqa: F401
        raise SystemExit("mlflow was importable")
    except ImportError:
        pass

    import optuna
    from hpo.config.space import parse_space
    from hpo.data.contract import load_dataset
    from hpo.engines.keras_tuner import HpoTuner, make_oracle
    from hpo.engines.objective import Objective
    from hpo.trial.recorder import NullRecorder
    from hpo.trial.runner import run_trial

    data, tmp = sys.argv[1], sys.argv[2]
    tiny = json.loads(sys.argv[3])
    ds = load_dataset(data)
    params = {"model.dropout.rate": {"float": [0.0, 0.2], "step": 0.1}}
    space = parse_space({"study": {"name": "bare", "n_trials": 2, "sampler": {"type": "random", "seed": 0},
                                   "pruner": {"type": "none"}, "checkpoint_dir": f"{tmp}/checkpoints"},
                         "data": {"path": data}, "base": tiny, "params": params}, source="bare.yaml")
    one = run_trial(space.resolved_base(), ds, NullRecorder())
    study = optuna.create_study()
    study.optimize(Objective(space, ds), n_trials=2)
    kt_space = parse_space({"study": {"name": "bare_kt", "engine": "keras_tuner",
                                      "tuner": {"type": "random", "max_trials": 1}},
                            "data": {"path": data}, "base": tiny, "params": params}, source="kt.yaml")
    tuner = HpoTuner(make_oracle(kt_space), space=kt_space, dataset=ds, directory=tmp)
    tuner.search(verbose=0)
    print(json.dumps({"value": one.value, "optuna": [t.state.name for t in study.trials],
                      "kt": [r.state for r in tuner.records()],
                      "mlflow_loaded": any(m.split(".")[0] == "mlflow" for m in sys.modules)}))
""")


@pytest.mark.slow
def test_a_trial_of_either_engine_runs_where_mlflow_cannot_be_imported(signal_h5, tmp_path):
    # Rule: with `import mlflow` failing, the runner, the Optuna objective and the keras-tuner
    # engine run trials to COMPLETE on the null recorder, and no mlflow module is ever loaded.
    proc = subprocess.run([sys.executable, "-c", BLOCK_MLFLOW, str(signal_h5), str(tmp_path / "kt"),
                           json.dumps(TINY)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert math.isfinite(out["value"]) and out["value"] > 0
    assert out["optuna"] == ["COMPLETE", "COMPLETE"] and out["kt"] == ["COMPLETE"]
    assert out["mlflow_loaded"] is False
