"""`hpo pull` and `hpo predict` accept every model reference form and say clearly when one is wrong."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from hpo.errors import DataContractError
from hpo.errors import HpoError
from hpo.errors import TrackingError
from hpo.registry import models
from hpo.registry.predict import predict_file
from tests._registry import MODEL
from tests.conftest import make_signal_data
from tests.conftest import write_h5

pytestmark = pytest.mark.slow


def _forms(registry) -> list[str]:
    return [f"{MODEL}@champion", f"models:/{MODEL}@champion", f"models:/{MODEL}/1", f"{MODEL}/1",
            f"runs:/{registry.champion_run_id}/model"]


def test_every_reference_form_predicts_the_same_csv(registry, tmp_path):
    # Rule: NAME@alias, models:/NAME@alias, models:/NAME/version, NAME/version and runs:/ name one
    # model; predictions on a file without log_mass are index, log_mass, sigma per cluster.
    arrays = make_signal_data(12, seed=3)
    arrays.pop("log_mass")
    data = write_h5(tmp_path / "unlabelled.h5", arrays)
    columns = []
    for i, ref in enumerate(_forms(registry)):
        summary = predict_file(ref, data, tmp_path / f"p{i}.csv", registry.tracking_uri)
        rows = list(csv.DictReader((tmp_path / f"p{i}.csv").open()))
        assert summary["n"] == 12 and [r["index"] for r in rows] == [str(k) for k in range(12)]
        assert list(rows[0]) == ["index", "cluster_id", "log_mass", "sigma", "flags", "flag_names"]
        columns.append([float(r["log_mass"]) for r in rows])
    np.testing.assert_allclose(columns, [columns[0]] * len(columns))


@pytest.mark.parametrize("form", [0, 2, 4])
def test_pull_downloads_a_loadable_model(registry, tmp_path, form):
    # Rule: pull writes an MLmodel folder that mlflow.pyfunc.load_model takes, for alias, version and run URIs.
    ref = _forms(registry)[form]
    path = models.pull(ref, tmp_path / "out", registry.tracking_uri)
    assert (path / "MLmodel").exists()
    assert models.load(str(path)) is not None


def test_pull_command_takes_a_runs_uri(registry, tmp_path):
    # Rule: the command line accepts runs:/RUN_ID/model as it accepts registry references.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "hpo", "pull", f"runs:/{registry.champion_run_id}/model", "-o", str(tmp_path / "m"),
         "--tracking-uri", registry.tracking_uri], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m" / "MLmodel").exists()


@pytest.mark.parametrize(("ref", "fragment"), [
    ("xray-cluster-mass", "is not a model reference"),
    ("xray-cluster-mass/latest", "is not a model reference"),
])
def test_a_malformed_reference_lists_the_accepted_forms(ref, fragment):
    # Rule: a reference of no accepted form is refused before MLflow is asked, listing the forms.
    with pytest.raises(TrackingError) as info:
        models.model_uri(ref)
    assert fragment in str(info.value) and "NAME@alias" in str(info.value) and "runs:/" in str(info.value)


def test_an_unknown_alias_is_one_line_naming_the_uri(registry, tmp_path):
    # Rule: a reference that resolves to nothing is a TrackingError naming the URI and the store.
    with pytest.raises(TrackingError) as info:
        models.pull(f"{MODEL}@nope", tmp_path, registry.tracking_uri)
    message = str(info.value)
    assert f"models:/{MODEL}@nope" in message and registry.tracking_uri in message and "\n" not in message
    assert message.endswith(f"register one with: hpo promote STUDY --model {MODEL}")


def test_pull_never_touches_files_it_did_not_write(registry, tmp_path):
    # Rule: a non-empty folder without an earlier pull is refused, untouched; a folder holding an
    # earlier pull gets only that pull replaced, the user's own files beside it kept; a model file
    # that would land on a user's file is refused; an existing file as -o is one line.
    project = tmp_path / "project"
    (project / "code").mkdir(parents=True)
    (project / "code" / "mine.py").write_text("x = 1\n")
    (project / "requirements.txt").write_text("numpy\n")
    with pytest.raises(HpoError) as info:
        models.pull(f"{MODEL}/1", project, registry.tracking_uri)
    assert "holds files" in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in project.iterdir()) == ["code", "requirements.txt"]
    assert (project / "code" / "mine.py").read_text() == "x = 1\n"

    out = models.pull(f"{MODEL}/1", tmp_path / "m", registry.tracking_uri)
    (out / "notes.txt").write_text("mine\n")
    (out / "MLmodel").write_text("edited\n")  # part of the earlier pull: replaced
    again = models.pull(f"{MODEL}@champion", out, registry.tracking_uri)
    assert (again / "notes.txt").read_text() == "mine\n" and "edited" not in (again / "MLmodel").read_text()
    assert models.load(str(again)) is not None and not list(again.glob(".hpo-pull-*"))

    (out / "python_env.yaml").unlink(missing_ok=True)
    (out / "conda.yaml").unlink()
    manifest = (out / models.MANIFEST).read_text().replace('"conda.yaml",', "")
    (out / models.MANIFEST).write_text(manifest)  # a conda.yaml the pull did not write
    (out / "conda.yaml").write_text("mine\n")
    with pytest.raises(HpoError, match="would overwrite conda.yaml"):
        models.pull(f"{MODEL}/1", out, registry.tracking_uri)
    assert (out / "conda.yaml").read_text() == "mine\n"

    afile = tmp_path / "model.txt"
    afile.write_text("keep\n")
    with pytest.raises(HpoError, match="is a file, not a folder"):
        models.pull(f"{MODEL}/1", afile, registry.tracking_uri)
    assert afile.read_text() == "keep\n"


def test_predict_on_images_of_another_shape_is_one_line(registry, tmp_path):
    # Rule: images whose shape is not the model's are refused naming the file, both shapes, and
    # (command line) as one line on stderr, exit 1.
    data = write_h5(tmp_path / "wide.h5", make_signal_data(5, size=20, channels=3))
    with pytest.raises(DataContractError) as info:
        predict_file(f"{MODEL}@champion", data, tmp_path / "p.csv", registry.tracking_uri)
    assert "20x20x3" in str(info.value) and "16x16x2" in str(info.value) and str(data) in str(info.value)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "hpo", "predict", f"{MODEL}@champion", str(data), "-o", str(tmp_path / "p.csv"),
         "--tracking-uri", registry.tracking_uri], env=env, capture_output=True, text=True, timeout=300,
        cwd=registry.cwd)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hpo: error: ")]
    assert proc.returncode == 1 and len(errors) == 1 and "16x16x2" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "[[" not in proc.stderr  # no traceback, no array
    assert not (tmp_path / "p.csv").exists()
