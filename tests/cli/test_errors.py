"""Bad input on the command line: one clear line on stderr, exit code 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

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
    # Rule: --dry-run validates and prints the space with its grid size, and how many corners it
    # checked on the data file's images, building the network at the extremes.
    write_h5(tmp_path / "signal.h5", make_signal_data(40))
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(
        {"study": {"name": "g", "sampler": {"type": "grid"}}, "data": {"path": "signal.h5"},
         "params": {"model.filters": {"int": [1, 91], "step": 10}}}))
    out = hpo(tmp_path, "launch", "grid.yaml", "--dry-run").stdout
    assert "grid: 10 points; budget: 10 trials" in out
    assert ("checked: 3 corners of the space on signal.h5 (40 clusters of 16 x 16 x 2); "
            "the network built at 3 of them") in out


def test_dry_run_refuses_a_space_whose_trials_would_all_fail(tmp_path):
    # Rule: a dry run checks the space's corners on the data file's image shape: a kernel that
    # leaves no pixels (padding valid, two conv layers, 16 x 16 images) is one line naming the
    # params and the shapes, exit 1, and nothing is written.
    write_h5(tmp_path / "signal.h5", make_signal_data(40))
    base = {"model": {"conv_blocks": [[4], [4]], "pool": {"size": 2}, "padding": "valid"}}
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(
        {"study": {"name": "k", "n_trials": 3}, "data": {"path": "signal.h5"}, "base": base,
         "params": {"model.kernel_size": {"int": [2, 9]}}}))
    proc = hpo(tmp_path, "launch", "k.yaml", "--dry-run", check=False)
    _assert_one_line_error(proc, "k.yaml: model.kernel_size=9 with model.padding=valid",
                           "2 conv layers leaves no pixels of the 16 x 16 x 2 images",
                           "(16 -> conv 8 -> pool 4 -> conv 0)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.yaml", "signal.h5"]


def test_dry_run_needs_the_data_file(tmp_path):
    # Rule: a dry run checks that the space's data file exists, as a launch does.
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(
        {"study": {"name": "d", "n_trials": 1}, "data": {"path": "data/none.h5"}}))
    proc = hpo(tmp_path, "launch", "space.yaml", "--dry-run", check=False)
    _assert_one_line_error(proc, "data file not found: data/none.h5",
                           "make it with: hpo simulate data/none.h5")


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
    _assert_one_line_error(proc, "no study 'nope'", "create one with: hpo launch SPACE.yaml")


def test_missing_data_names_the_simulate_line_that_makes_it(tmp_path):
    # Rule: a data file that is not there is one line with the `hpo simulate` command that writes
    # it, taken from the space's "# Data:" comment; running that line makes the launch go further.
    space = yaml.safe_dump({"study": {"name": "d", "n_trials": 1}, "data": {"path": "data/d.h5"}})
    (tmp_path / "space.yaml").write_text("# Data: hpo simulate data/d.h5 --n 40 --seed 3 --preset eFEDS\n" + space)
    proc = hpo(tmp_path, "launch", "space.yaml", "--workers", "0", check=False)
    line = "hpo simulate data/d.h5 --n 40 --seed 3 --preset eFEDS"
    _assert_one_line_error(proc, "data file not found: data/d.h5", f"make it with: {line}")
    hpo(tmp_path, *line.split()[1:])
    assert "floor" in hpo(tmp_path, "baseline", "data/d.h5").stdout


def test_missing_data_of_a_shipped_space_names_its_comment(tmp_path):
    # Rule: the card's own command, run where data/mock.h5 is missing, names the space's line.
    spec = Path(__file__).resolve().parents[2] / "search_spaces" / "dropout.yaml"
    proc = hpo(tmp_path, "launch", str(spec), check=False)
    _assert_one_line_error(proc, "make it with: hpo simulate data/mock.h5 --n 10000 --seed 0 --preset eRASS:8")


def test_missing_data_without_a_comment_names_the_default_line(tmp_path):
    # Rule: a run config without a "# Data:" comment gets `hpo simulate PATH` with its defaults.
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"data": {"path": "nothere.h5"}}))
    proc = hpo(tmp_path, "train", "run.yaml", check=False)
    _assert_one_line_error(proc, "data file not found: nothere.h5; make it with: hpo simulate nothere.h5 --n 1000 --seed 0")


def test_a_calibration_file_missing_or_of_the_training_clusters_is_one_line(tmp_path):
    # Rule: data.calibration_path that is not there, or that holds the clusters the model trains
    # on, is one line naming it, before any training.
    write_h5(tmp_path / "train.h5", make_signal_data(60))
    write_h5(tmp_path / "copy.h5", make_signal_data(60))  # same redshifts and masses
    for path, fragment in (("none.h5", "data.calibration_path not found: none.h5"),
                           ("copy.h5", "copy.h5: holds the training file's clusters (the same redshifts")):
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(
            {"data": {"path": "train.h5", "calibration_path": path}, "train": {"calibrate_bias": True}}))
        _assert_one_line_error(hpo(tmp_path, "train", "run.yaml", check=False), fragment)


def test_a_tracking_uri_that_is_no_uri_is_one_line_without_its_password(tmp_path):
    # Rule: an unparseable MLflow URI, from the environment or --tracking-uri, is one line naming
    # where it came from, its password masked; nothing is created (no study, no store).
    write_h5(tmp_path / "signal.h5", make_signal_data(40))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(
        {"study": {"name": "u", "n_trials": 1}, "data": {"path": "signal.h5"},
         "params": {"model.dropout.rate": {"float": [0, 0.5]}}}))
    bad = "http://alice:s3cret@[::1"
    for args, env in [(("launch", "s.yaml", "--workers", "0", "--tracking-uri", bad), {}),
                      (("launch", "s.yaml", "--workers", "0"), {"MLFLOW_TRACKING_URI": bad}),
                      (("predict", "m@champion", "signal.h5", "-o", "p"), {"MLFLOW_TRACKING_URI": bad}),
                      (("pull", "m@champion", "-o", "pulled"), {"MLFLOW_TRACKING_URI": bad})]:
        proc = hpo(tmp_path, *args, check=False, env=env)
        _assert_one_line_error(proc, "is not a URI (Invalid IPv6 URL)")
        assert "s3cret" not in proc.stderr and "alice:***@" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml", "signal.h5"]


def test_help_needs_no_secrets_file(tmp_path):
    # Rule: `hpo --help` shows help even where HPO_SECRETS_FILE names no file; a command that
    # would use the secrets still refuses in one line.
    env = {"HPO_SECRETS_FILE": str(tmp_path / "absent.env")}
    assert "Usage" in hpo(tmp_path, "--help", env=env).stdout
    assert "Usage" in hpo(tmp_path, "status", "--help", env=env).stdout
    _assert_one_line_error(hpo(tmp_path, "status", check=False, env=env), "HPO_SECRETS_FILE", "absent.env")
