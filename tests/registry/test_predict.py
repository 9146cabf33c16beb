"""`hpo predict` writes a catalogue: FITS and CSV with the file's IDs, masses, sigma and flags,
and compares with a catalogue's own mass where the file carries one."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpo.errors import DataContractError
from hpo.errors import HpoError
from hpo.registry.flags import aperture_significance
from hpo.registry.flags import FLAGS
from hpo.registry.predict import predict_file
from tests._registry import log_exposure_model
from tests.conftest import make_signal_data
from tests.conftest import write_h5

RANGES = {"redshift": [0.05, 1.0], "log_mass": [13.0, 15.0], "exposure_s": [150.0, 2500.0]}


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> tuple[str, str]:
    """(models:/ URI, tracking URI) of an untrained tiny network that takes exposure_s."""
    _, uri, tracking = log_exposure_model(tmp_path_factory.mktemp("predict-model"), "predict", RANGES)
    return uri, tracking


def _catalogue(path, n=20, *, exposure=True, reference=True):
    arrays = make_signal_data(n, seed=4, exposure=(150.0, 2500.0) if exposure else None)
    arrays.pop("log_mass")
    arrays["redshift"][0] = 1.4  # beyond the training redshifts
    if reference:
        arrays["reference/log_mass"] = np.r_[np.linspace(13.5, 14.5, n - 1), np.nan]
    write_h5(path, arrays)
    with h5py.File(path, "a") as f:
        f.create_dataset("cluster_id", data=[f"1eRASS J{i:03d}" for i in range(n)],
                         dtype=h5py.string_dtype("utf-8"))
        f.attrs["reference_mass_source"] = "test catalogue"
    return path


@pytest.mark.slow
def test_predict_writes_fits_and_csv_with_ids_flags_and_a_comparison(logged, tmp_path):
    # Rule: one row per cluster in both tables, with the file's IDs, log_mass, sigma and flags
    # (bit 1: a redshift beyond the training range); where the file has reference/log_mass, the
    # scatter and bias of ours minus theirs over the clusters that have one are printed, saved
    # as JSON, and plotted.
    from astropy.table import Table
    from typer.testing import CliRunner

    from hpo.cli import app

    uri, tracking = logged
    data = _catalogue(tmp_path / "cat.h5")
    out = CliRunner().invoke(app, ["predict", uri, str(data), "-o", str(tmp_path / "masses.csv"),
                                   "--tracking-uri", tracking])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    summary = json.loads(lines[-1])
    assert any(line.startswith("against test catalogue on 19 clusters: scatter") for line in lines)
    table = Table.read(tmp_path / "masses.fits")
    rows = list(csv.DictReader((tmp_path / "masses.csv").open()))
    assert len(table) == len(rows) == summary["n"] == 20
    assert list(table["cluster_id"]) == [r["cluster_id"] for r in rows] == [f"1eRASS J{i:03d}" for i in range(20)]
    assert {"log_mass", "sigma", "flags", "flag_names", "reference_log_mass"} <= set(table.colnames)
    np.testing.assert_allclose(table["log_mass"], [float(r["log_mass"]) for r in rows], atol=1e-6)
    assert table["flags"][0] & FLAGS["z_outside_training"] and "z_outside_training" in rows[0]["flag_names"]
    assert table["log_mass"].description == "log10(M500 / Msun)" and table.meta["REFMASS"] == "test catalogue"
    comparison = summary["comparison"]
    saved = json.loads((tmp_path / "masses_vs_reference.json").read_text())
    assert comparison["n"] == saved["n"] == 19 and (tmp_path / "masses_vs_reference.png").stat().st_size > 0
    theirs = np.array([float(r["reference_log_mass"]) for r in rows[:19]])
    ours = np.array([float(r["log_mass"]) for r in rows[:19]])
    assert comparison["bias"] == pytest.approx(np.mean(ours - theirs), abs=1e-5)
    assert comparison["scatter"] == pytest.approx(np.std(ours - theirs), abs=1e-5)
    assert rows[19]["reference_log_mass"] == ""


@pytest.mark.slow
def test_a_model_that_takes_the_exposure_refuses_a_file_without_it_in_one_line(logged, tmp_path):
    # Rule: a file without exposure_s fed to a model trained with it: one line naming the file
    # and the key, exit 1, and nothing written.
    uri, tracking = logged
    data = _catalogue(tmp_path / "noexp.h5", exposure=False)
    with pytest.raises(DataContractError, match=r"noexp.h5: missing key 'exposure_s'.*model.use_exposure"):
        predict_file(uri, data, tmp_path / "m", tracking)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_"))}
    proc = subprocess.run([sys.executable, "-m", "hpo", "predict", uri, str(data), "-o", str(tmp_path / "m"),
                           "--tracking-uri", tracking], env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hpo: error: ")]
    assert proc.returncode == 1 and len(errors) == 1 and "'exposure_s'" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("m.*"))


def test_the_faint_flag_marks_a_cut_out_of_background_only():
    # Rule: a cut-out of flat background has no significant central counts; a source there has.
    rng = np.random.default_rng(0)
    background = rng.poisson(1.0, (2, 50, 50, 2)).astype(np.float32)
    source = background.copy()
    source[1, 22:28, 22:28] += 20
    significance = aperture_significance(source)
    assert abs(significance[0]) < 3 and significance[1] > 30


def _hpo_predict(uri, tracking, data, out, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_"))}
    proc = subprocess.run([sys.executable, "-m", "hpo", "predict", uri, str(data), "-o", str(out),
                           "--tracking-uri", tracking, *extra], env=env, capture_output=True, text=True,
                          timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hpo: error: ")]
    return proc, errors


@pytest.mark.slow
def test_predict_where_its_fits_is_a_folder_writes_no_csv_either(logged, tmp_path):
    # Rule: -o pred/z where pred/z.fits is a folder: one line naming it, no pred/z.csv, no
    # temporary, before the model is loaded.
    uri, tracking = logged
    data = _catalogue(tmp_path / "cat.h5", reference=False)
    (tmp_path / "pred" / "z.fits").mkdir(parents=True)
    proc, errors = _hpo_predict(uri, tracking, data, tmp_path / "pred" / "z")
    assert proc.returncode == 1 and len(errors) == 1 and "z.fits is a folder" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["z.fits"]


@pytest.mark.slow
def test_predict_refuses_existing_tables_unless_overwrite_and_never_its_input(logged, tmp_path):
    # Rule: OUT.fits or OUT.csv that exists is refused (one line naming it and --overwrite) and
    # left as it was; --overwrite replaces the set; a data file among the outputs is always refused.
    from typer.testing import CliRunner

    from hpo.cli import app

    uri, tracking = logged
    data = _catalogue(tmp_path / "cat.h5")
    (tmp_path / "m.csv").write_text("mine\n")
    run = ["predict", uri, str(data), "-o", str(tmp_path / "m"), "--tracking-uri", tracking]
    result = CliRunner().invoke(app, run)
    assert result.exit_code == 1 and "m.csv exists; give --overwrite" in str(result.exception)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.h5", "m.csv"]
    assert (tmp_path / "m.csv").read_text() == "mine\n"
    result = CliRunner().invoke(app, [*run, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cat.h5", "m.csv", "m.fits", "m_vs_reference.json", "m_vs_reference.png"]
    assert (tmp_path / "m.csv").read_text().startswith("index,cluster_id")

    named_fits = tmp_path / "cat.fits"  # an HDF5 data file named .fits: -o cat.fits would be it
    named_fits.write_bytes(data.read_bytes())
    proc, errors = _hpo_predict(uri, tracking, named_fits, named_fits, "--overwrite")
    assert proc.returncode == 1 and len(errors) == 1 and "is an input" in errors[0], proc.stderr
    assert named_fits.read_bytes() == data.read_bytes() and not (tmp_path / "cat.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("failing", ["_write_csv", "_plot_comparison"])
def test_predict_that_fails_midway_leaves_none_of_its_files(logged, tmp_path, monkeypatch, failing):
    # Rule: the FITS, the CSV and the comparison's JSON and plot appear together or not at all:
    # a failure after some are written (here: half a CSV, or the plot) leaves none of them.
    from hpo.registry import predict as predict_module

    uri, tracking = logged
    data = _catalogue(tmp_path / "cat.h5")

    def half(path, *args, **kwargs):
        Path(path).write_text("index,clus")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(predict_module, failing, half)
    with pytest.raises(HpoError) as info:
        predict_file(uri, data, tmp_path / "out" / "m", tracking)
    assert "No space left on device" in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.h5"]


def test_predict_against_a_store_that_does_not_exist_creates_nothing(tmp_path):
    # Rule: with the default store ./mlflow.db absent, a registry reference is one line, and
    # neither an empty mlflow.db nor mlartifacts/ nor any output is created.
    data = _catalogue(tmp_path / "cat.h5", reference=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_"))}
    proc = subprocess.run([sys.executable, "-m", "hpo", "predict", "xray-cluster-mass@champion", "cat.h5",
                           "-o", "p"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hpo: error: ")]
    assert proc.returncode == 1 and len(errors) == 1 and "mlflow.db does not exist" in errors[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [data.name]
