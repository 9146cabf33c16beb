"""`hpo launch` on bad input, before any trial: a dead MLflow server, broken search spaces and
data files, a space every trial of which would fail, a data file replaced between launches.

Each gets one line on stderr naming the rule, the value and the fix, exit code 1, no traceback.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests._workers import create_study
from tests._workers import hpo_cmd
from tests._workers import write_study_files
from tests.conftest import make_signal_data
from tests.conftest import write_h5


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_launch_with_dead_mlflow_stops_before_any_trial(tmp_path):
    # Rule: `hpo launch` against an unreachable MLflow server exits 1 within seconds with one line,
    # before the study exists or any trial starts.
    write_study_files(tmp_path, "deadml", n_trials=2)
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    proc = hpo_cmd(
        tmp_path,
        "launch",
        "space.yaml",
        "--workers",
        "1",
        "--storage",
        "sqlite:///hpo.db",
        "--tracking-uri",
        uri,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"hpo: error: MLflow tracking server {uri} is unreachable" in proc.stderr
    assert time.monotonic() - t0 < 60  # imports included; MLflow's own retries would take minutes
    assert not (tmp_path / "hpo.db").exists()


# ---------------------------------------------------------------------------- the corpus
GOOD_STUDY = {"name": "bad", "n_trials": 2}
GOOD_PARAMS = {"model.dropout.rate": {"float": [0.0, 0.2], "step": 0.1}}

BROKEN_SPACES = {
    "unknown study key": (
        {"study": {**GOOD_STUDY, "n_trial": 3}},
        ["'study.n_trial'", "Extra inputs"],
    ),
    "budget not a number": ({"study": {**GOOD_STUDY, "n_trials": "many"}}, ["'study.n_trials'"]),
    "no budget": ({"study": {"name": "bad"}}, ["study.n_trials is required for sampler tpe"]),
    "unknown sampler": (
        {"study": {**GOOD_STUDY, "sampler": {"type": "bayes"}}},
        ["'study.sampler.type'", "'grid'"],
    ),
    "bad study name": ({"study": {**GOOD_STUDY, "name": "a b"}}, ["'study.name'"]),
    "grace below heartbeat": (
        {"study": {**GOOD_STUDY, "heartbeat_s": 10, "grace_s": 5}},
        ["grace_s must be greater than heartbeat_s", "grace_s=5"],
    ),
    "two kinds": (
        {"params": {"model.dropout.rate": {"float": [0, 1], "int": [0, 1]}}},
        ["exactly one of"],
    ),
    "low above high": (
        {"params": {"model.dropout.rate": {"float": [0.5, 0.1]}}},
        ["low must be <= high", "[0.5, 0.1]"],
    ),
    "log from zero": (
        {"params": {"train.optimizer.learning_rate": {"float": [0, 1], "log": True}}},
        ["low > 0"],
    ),
    "unknown path": (
        {"params": {"model.dropout.rat": {"float": [0, 0.5]}}},
        ["'model.dropout.rat'"],
    ),
    "grid of a continuous range": (
        {
            "study": {**GOOD_STUDY, "sampler": {"type": "grid"}},
            "params": {"model.dropout.rate": {"float": [0, 0.5]}},
        },
        ["a grid needs a step"],
    ),
    "bad choice value": (
        {"params": {"model.dropout.placement": {"categorical": ["everywhere"]}}},
        ["model.dropout.placement"],
    ),
}


def _data(**change):
    arrays = make_signal_data(20)
    arrays.update(change)
    return {k: v for k, v in arrays.items() if v is not None}


BROKEN_DATA = {
    "missing redshift": (_data(redshift=None), ["'redshift'"]),
    "zero redshift": (_data(redshift=np.zeros(20, "f4")), ["'redshift'", "> 0"]),
    "negative counts": (_data(images=-make_signal_data(20)["images"] - 1), ["'images'"]),
    "NaN counts": (_data(images=np.full((20, 16, 16, 2), np.nan, "f4")), ["'images'"]),
    "wrong rank": (_data(images=np.zeros((20, 16, 16), "f4")), ["'images'"]),
    "mismatched N": (_data(log_mass=np.full(19, 14.0, "f4")), ["'log_mass'"]),
}


def _run_cli(monkeypatch, capsys, cwd: Path, *args: str) -> tuple[int, str]:
    from hpo.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.delenv("HPO_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["hpo", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


def _assert_one_line(code: int, err: str, fragments: list[str]) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("hpo: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _launch_study_only(monkeypatch, capsys, cwd):
    return _run_cli(monkeypatch, capsys, cwd, "launch", "space.yaml", "--workers", "0",
                    "--storage", "sqlite:///hpo.db", "--tracking-uri", "sqlite:///mlflow.db")


@pytest.mark.parametrize("case", list(BROKEN_SPACES))
def test_broken_space_is_one_clear_line(case, tmp_path, monkeypatch, capsys):
    # Rule: a broken search space is refused before anything starts, naming the file and the key.
    raw, fragments = BROKEN_SPACES[case]
    space = {"study": GOOD_STUDY, "data": {"path": "signal.h5"}, "params": GOOD_PARAMS, **raw}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    code, err = _launch_study_only(monkeypatch, capsys, tmp_path)
    _assert_one_line(code, err, ["space.yaml", *fragments])


@pytest.mark.parametrize("case", list(BROKEN_DATA))
def test_broken_data_file_is_one_clear_line(case, tmp_path, monkeypatch, capsys):
    # Rule: a data file that breaks the contract is refused at launch, naming the file and the key.
    arrays, fragments = BROKEN_DATA[case]
    write_h5(tmp_path / "signal.h5", arrays)
    (tmp_path / "space.yaml").write_text(
        yaml.safe_dump({"study": GOOD_STUDY, "data": {"path": "signal.h5"}, "params": GOOD_PARAMS})
    )
    code, err = _launch_study_only(monkeypatch, capsys, tmp_path)
    _assert_one_line(code, err, ["signal.h5", *fragments])
    assert not (tmp_path / "hpo.db").exists()  # no study is created for unusable data


# ------------------------------------------------------------------ every trial would fail
VALID_PADDING = {"model": {"conv_blocks": [[4], [4]], "pool": {"size": 2}, "padding": "valid"}}
ONE_DENSE = {"model": {"dense": [16, 8, 4], "dropout": {"placement": "one_dense", "index": 0}}}

IMPOSSIBLE_SPACES = {
    "kernel wider than what is left of the images": (
        {"base": VALID_PADDING, "params": {"model.kernel_size": {"int": [2, 9]}}},
        ["model.kernel_size=9 with model.padding=valid, model.pool.size=2 and 2 conv layers "
         "leaves no pixels of the 16 x 16 x 2 images (16 -> conv 8 -> pool 4 -> conv 0)"],
    ),
    "kernel with a padding choice": (
        {"base": {"model": {"conv_blocks": [[4], [4]], "pool": {"size": 2}}},
         "params": {"model.kernel_size": {"int": [2, 9]},
                    "model.padding": {"categorical": ["same", "valid"]}}},
        ["model.kernel_size=9 with model.padding=valid", "leaves no pixels"],
    ),
    "dropout after a dense layer one choice does not have": (
        {"base": ONE_DENSE, "params": {"model.dense": {"categorical": [[16], [16, 8, 4]]},
                                       "model.dropout.index": {"int": [0, 2]}}},
        ["params model.dense=[16] with model.dropout.index=2",
         "dropout.index must address one of 1 dense layers, got 2"],
    ),
    "dropout placement, dense layers and index only together": (
        {"base": {"model": {"dense": [16, 8, 4]}},
         "params": {"model.dense": {"categorical": [[16], [16, 8, 4]]},
                    "model.dropout.placement": {"categorical": ["every_dense", "one_dense"]},
                    "model.dropout.index": {"int": [0, 2]}}},
        ["params model.dense=[16], model.dropout.index=2 and model.dropout.placement=one_dense"],
    ),
    "validation and test fractions leave nothing to train on": (
        {"data": {"path": "signal.h5", "val_fraction": 0.6, "test_fraction": 0.5}},
        ["val_fraction + test_fraction", "0.6 + 0.5"],
    ),
    "too few clusters to split": (
        {"data": {"path": "signal.h5", "max_clusters": 11, "val_fraction": 0.45,
                  "test_fraction": 0.45}},
        ["data.val_fraction=0.45, data.test_fraction=0.45 of 11 clusters",
         "11 clusters are too few to split"],
    ),
}


@pytest.mark.parametrize("case", list(IMPOSSIBLE_SPACES))
def test_a_space_every_trial_of_which_would_fail_is_refused_at_launch(case, tmp_path, monkeypatch,
                                                                     capsys):
    # Rule: a point of the space no trial could train on (a kernel wider than what the conv stack
    # leaves of the images, dropout after a dense layer that is not there, a split without
    # training clusters) is one line naming the params and values, exit 1, before a study or a
    # run exists; each pair of params and each group of keys that constrain each other is checked.
    raw, fragments = IMPOSSIBLE_SPACES[case]
    write_h5(tmp_path / "signal.h5", _data())
    space = {"study": GOOD_STUDY, "data": {"path": "signal.h5"}, "params": GOOD_PARAMS, **raw}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    code, err = _launch_study_only(monkeypatch, capsys, tmp_path)
    _assert_one_line(code, err, ["space.yaml", *fragments])
    assert not (tmp_path / "hpo.db").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_relaunch_on_another_data_file_is_refused(tmp_path):
    # Rule: a study's data file replaced between launches (every trial would fail: "changed while
    # the study ran") is one line naming the file and both fingerprints, exit 1, no worker started.
    write_study_files(tmp_path, "swapped", n_trials=2)
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    write_h5(tmp_path / "signal.h5", make_signal_data(200, seed=8))  # regenerated at the same path
    proc = hpo_cmd(tmp_path, "launch", "space.yaml", "--workers", "1", "--storage", storage,
                   "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(
        "hpo: error: data file signal.h5 is not the one study 'swapped' began on (fingerprint ")
    assert "starting worker" not in proc.stdout
