"""`hpo predict` writes a catalogue: FITS and CSV with the file's IDs, masses, sigma and flags,
and compares with a catalogue's own mass where the file carries one."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from hpo.errors import DataContractError
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
