"""Bad input on the command line: one clear line on stderr, exit code 1, never a traceback."""

from __future__ import annotations

import numpy as np
import yaml

from tests.cli.test_end_to_end import hpo
from tests.conftest import make_signal_data
from tests.conftest import write_h5


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hpo: error:")]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_malformed_space_names_file_and_key(tmp_path):
    # Rule: a malformed search space names the file, the key and what was expected.
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(
        {"study": {"name": "b", "n_trials": 2}, "params": {"model.dropout.rat": {"float": [0, 0.5]}}}))
    proc = hpo(tmp_path, "launch", "bad.yaml", "--dry-run", check=False)
    _assert_one_line_error(proc, "bad.yaml", "'model.dropout.rat'", "model.dropout has: rate")


def test_dry_run_prints_the_budget(tmp_path):
    # Rule: --dry-run validates and prints the space with its grid size.
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(
        {"study": {"name": "g", "sampler": {"type": "grid"}}, "params": {"model.filters": {"int": [1, 91], "step": 10}}}))
    out = hpo(tmp_path, "launch", "grid.yaml", "--dry-run").stdout
    assert "grid: 10 points; budget: 10 trials" in out


def test_broken_data_file_names_the_key(tmp_path):
    # Rule: a broken data file is refused before training, naming the file and the key.
    arrays = make_signal_data(20)
    arrays["redshift"] = np.zeros(20, "f4")
    write_h5(tmp_path / "bad.h5", arrays)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"data": {"path": "bad.h5"}}))
    proc = hpo(tmp_path, "train", "run.yaml", check=False)
    _assert_one_line_error(proc, "bad.h5", "'redshift'")


def test_missing_study_lists_the_existing_ones(tmp_path):
    # Rule: an unknown study name is one line that lists the studies there are.
    proc = hpo(tmp_path, "status", "nope", "--storage", f"sqlite:///{tmp_path / 'empty.db'}", check=False)
    _assert_one_line_error(proc, "no study 'nope'")
