"""`hpo pull` and `hpo predict` accept every model reference form and say clearly when one is wrong."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpo.errors import DataContractError
from hpo.errors import HpoError
from hpo.errors import TrackingError
from hpo.registry import models
from hpo.registry.predict import predict_file
from tests._registry import MODEL
from tests.cli.test_end_to_end import hpo
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
    again = models.pull(f"{MODEL}@champion", out, registry.tracking_uri, overwrite=True)
    assert (again / "notes.txt").read_text() == "mine\n" and "edited" not in (again / "MLmodel").read_text()
    assert models.load(str(again)) is not None and not list(again.glob(".hpo-pull-*"))

    (out / "python_env.yaml").unlink(missing_ok=True)
    (out / "conda.yaml").unlink()
    manifest = (out / models.MANIFEST).read_text().replace('"conda.yaml",', "")
    (out / models.MANIFEST).write_text(manifest)  # a conda.yaml the pull did not write
    (out / "conda.yaml").write_text("mine\n")
    with pytest.raises(HpoError, match="would overwrite conda.yaml"):
        models.pull(f"{MODEL}/1", out, registry.tracking_uri, overwrite=True)
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


def _model_folder(path: Path, files: dict[str, str]) -> str:
    """A folder holding an MLmodel and `files` (relative path -> text): a reference pull takes."""
    for rel, text in {"MLmodel": "flavors: {}\n", **files}.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return str(path)


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_later_pull_removes_exactly_the_files_its_manifest_lists(tmp_path):
    # Rule: the manifest lists every file a pull wrote; a later pull (with --overwrite) removes
    # those, file by file, and a folder the pull created only once it is empty: a user's file
    # anywhere inside (artifacts/, code/, a package of code/) stays, as do the folders holding it.
    first = _model_folder(tmp_path / "v1", {"artifacts/model.keras": "w1", "artifacts/extra.bin": "e",
                                            "code/pkg/__init__.py": "c1", "code/pkg/old.py": "o"})
    out = models.pull(first, tmp_path / "m")
    manifest = json.loads((out / models.MANIFEST).read_text())
    assert manifest["files"] == ["MLmodel", "artifacts/extra.bin", "artifacts/model.keras",
                                 "code/pkg/__init__.py", "code/pkg/old.py"]
    mine = {"artifacts/mine.txt": "a", "code/mine.py": "b", "code/pkg/notes.md": "c", "notes.txt": "d"}
    for rel, text in mine.items():
        (out / rel).write_text(text)
    with pytest.raises(HpoError, match="holds an earlier hpo pull; give --overwrite"):
        models.pull(first, out)
    second = _model_folder(tmp_path / "v2", {"artifacts/model.keras": "w2", "code/new/x.py": "x"})
    models.pull(second, out, overwrite=True)
    assert _tree(out) == {**mine, "MLmodel": "flavors: {}\n", "artifacts/model.keras": "w2",
                          "code/new/x.py": "x", models.MANIFEST: (out / models.MANIFEST).read_text()}
    third = _model_folder(tmp_path / "v3", {"artifacts/model.keras": "w3"})
    models.pull(third, out, overwrite=True)
    assert not (out / "code" / "new").exists()  # the pull's folder, empty now: removed
    assert set(_tree(out)) == {*mine, "MLmodel", "artifacts/model.keras", models.MANIFEST}


def test_an_older_manifest_of_top_level_names_never_costs_a_users_file(tmp_path):
    # Rule: a manifest of before (top-level names, folders among them) says nothing of what in
    # those folders is the user's: only files the new model writes at the same paths are
    # replaced; nothing else in them is removed; the new manifest lists files one by one.
    out = tmp_path / "m"
    _model_folder(out, {"artifacts/model.keras": "old", "artifacts/mine.txt": "mine",
                        "code/pkg/old.py": "stale", "conda.yaml": "old"})
    (out / models.MANIFEST).write_text(json.dumps({"uri": "x", "files": ["MLmodel", "artifacts", "code",
                                                                         "conda.yaml"]}))
    new = _model_folder(tmp_path / "v2", {"artifacts/model.keras": "new", "code/pkg/__init__.py": "c"})
    models.pull(new, out, overwrite=True)
    tree = _tree(out)
    assert tree["artifacts/model.keras"] == "new" and tree["artifacts/mine.txt"] == "mine"
    assert tree["code/pkg/old.py"] == "stale" and "conda.yaml" not in tree
    assert json.loads(tree[models.MANIFEST])["files"] == ["MLmodel", "artifacts/model.keras",
                                                          "code/pkg/__init__.py"]


def test_a_manifest_naming_paths_outside_the_folder_is_ignored(tmp_path):
    # Rule: a hand-edited manifest cannot make a pull remove a file outside its folder.
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    out = tmp_path / "m"
    _model_folder(out, {})
    (out / models.MANIFEST).write_text(json.dumps(
        {"files": ["MLmodel", "../outside.txt", str(outside), "./MLmodel", "a//b"], "folders": [".."]}))
    models.pull(_model_folder(tmp_path / "v2", {}), out, overwrite=True)
    assert outside.read_text() == "keep" and (out / "MLmodel").exists()


def test_a_pull_that_fails_midway_puts_the_earlier_pull_back(tmp_path, monkeypatch):
    # Rule: a failure while the files are swapped (here: the disk fills at the second file moved
    # in) leaves the folder as it was, the earlier pull and its manifest included: one line.
    out = models.pull(_model_folder(tmp_path / "v1", {"artifacts/model.keras": "w1"}), tmp_path / "m")
    (out / "artifacts" / "mine.txt").write_text("mine")
    before = _tree(out)
    second = _model_folder(tmp_path / "v2", {"artifacts/model.keras": "w2", "code/x.py": "x"})
    real_replace, moved_in = os.replace, []

    def full_disk(src, dst):
        if ".hpo-pull-" in str(src) and ".replaced" not in str(src):
            moved_in.append(dst)
            if len(moved_in) == 2:
                raise OSError(28, os.strerror(28), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(HpoError) as info:
        models.pull(second, out, overwrite=True)
    assert "No space left on device" in str(info.value) and "\n" not in str(info.value)
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == [
        models.MANIFEST, "MLmodel", "artifacts"]


@pytest.mark.parametrize("ref", ["nomodel@champion", "runs:/0123abc/model"])
def test_a_failed_pull_creates_nothing(tmp_path, ref):
    # Rule: a pull that fails (here: the default store ./mlflow.db does not exist) is one line and
    # creates nothing: no folder, and no empty mlflow.db or mlartifacts/ in the working folder.
    proc = hpo(tmp_path, "pull", ref, "-o", "sub/m", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hpo: error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "mlflow.db does not exist" in errors[0] and "--tracking-uri" in errors[0]
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_model_in_a_store_that_exists_creates_no_folder(registry, tmp_path):
    # Rule: a reference the store does not have leaves no folder behind, nor its parents.
    with pytest.raises(TrackingError):
        models.pull(f"{MODEL}@nope", tmp_path / "a" / "m", registry.tracking_uri)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_a_pull_folder_that_cannot_be_made_is_one_line(tmp_path, where):
    # Rule: -o under a regular file or where no folder can be made is one line naming it.
    (tmp_path / "afile").write_text("keep")
    src = _model_folder(tmp_path / "src", {})
    out = str(tmp_path / "afile" / "m") if where == "under a file" else "/proc/hpo-test/m"
    proc = hpo(tmp_path, "pull", src, "-o", out, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hpo: error:")]
    assert proc.returncode == 1 and len(errors) == 1 and out in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and (tmp_path / "afile").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "src"]


def test_a_pull_never_reaches_through_a_link_out_of_its_folder(tmp_path):
    # Rule: a folder of an earlier pull replaced by a link to elsewhere: the files there are not
    # removed, and the new model is not written through it (refused in one line).
    out = models.pull(_model_folder(tmp_path / "v1", {"artifacts/model.keras": "w1"}), tmp_path / "m")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.keras").write_text("mine")
    for f in (out / "artifacts").iterdir():
        f.unlink()
    (out / "artifacts").rmdir()
    (out / "artifacts").symlink_to(elsewhere)
    with pytest.raises(HpoError, match="would overwrite artifacts/model.keras"):
        models.pull(_model_folder(tmp_path / "v2", {"artifacts/model.keras": "w2"}), out, overwrite=True)
    assert (elsewhere / "model.keras").read_text() == "mine"
