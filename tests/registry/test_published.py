"""The champions shipped in models/: load with plain MLflow and measure masses of new mock clusters."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from hpo.data.contract import load_dataset
from hpo.data.sim.simulator import load_sim_config
from hpo.data.sim.simulator import write_mock

pytestmark = pytest.mark.slow

PUBLISHED = Path(__file__).resolve().parents[2] / "models" / "xray-cluster-mass"
EVERY_DEPTH = PUBLISHED.with_name("xray-cluster-mass-every-depth")


def test_the_published_champion_measures_new_clusters(tmp_path):
    # Rule: `hpo predict models/xray-cluster-mass FILE` needs no training and no registry: on 400
    # eRASS:8 clusters it has never seen (another seed) it beats the counts baseline's ~0.23 dex and
    # its sigma is roughly calibrated; the CSV has one row per cluster.
    from typer.testing import CliRunner

    from hpo.cli import app

    data = write_mock(tmp_path / "new.h5", 400, 123, load_sim_config(None, "eRASS:8"))
    out = CliRunner().invoke(app, ["predict", str(PUBLISHED), str(data), "-o", str(tmp_path / "m.csv")])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    assert summary["n"] == 400 and summary["residual_std"] < 0.2 and abs(summary["bias"]) < 0.06
    assert 0.55 <= summary["coverage68"] <= 0.8
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    truth = load_dataset(data).log_mass
    assert len(rows) == 400 and all(float(r["sigma"]) > 0 for r in rows)
    assert np.corrcoef([float(r["log_mass"]) for r in rows], truth)[0, 1] > 0.9


def test_the_every_depth_champion_measures_eRASS1_clusters(tmp_path, monkeypatch, capsys):
    # Rule: `hpo predict models/xray-cluster-mass-every-depth FILE` needs no training and no
    # registry: on 300 eRASS1-depth clusters (about a tenth of eRASS:8's photons), where the
    # eRASS:8 champion is ~0.4 dex low, it is unbiased within 0.06 dex, its scatter is well below
    # the eRASS:8 model's and its sigma roughly calibrated; a file without exposure_s is one line.
    import sys

    import h5py
    from typer.testing import CliRunner

    from hpo.cli import app
    from hpo.cli import main

    data = write_mock(tmp_path / "erass1.h5", 300, 44, load_sim_config(None, "eRASS1"))
    summaries = {}
    for folder in (EVERY_DEPTH, PUBLISHED):
        out = CliRunner().invoke(app, ["predict", str(folder), str(data), "-o", str(tmp_path / folder.name)])
        assert out.exit_code == 0, out.output
        summaries[folder.name] = json.loads(out.output.strip().splitlines()[-1])
    ours, erass8 = summaries[EVERY_DEPTH.name], summaries[PUBLISHED.name]
    assert ours["n"] == 300 and abs(ours["bias"]) < 0.06 and abs(erass8["bias"]) > 0.3
    assert ours["residual_std"] < 0.26 and ours["residual_std"] < erass8["residual_std"] - 0.03
    assert ours["rmse"] < erass8["rmse"] / 1.5 and 0.55 <= ours["coverage68"] <= 0.8
    assert ours["flags"]["exposure_outside_training"] == 0

    with h5py.File(data, "a") as f:
        del f["exposure_s"]
    monkeypatch.delenv("HPO_DEBUG", raising=False)
    argv = ["hpo", "predict", str(EVERY_DEPTH), str(data), "-o", str(tmp_path / "none")]
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("hpo: error: ") and "missing key 'exposure_s'" in err
    assert "model.use_exposure" in err
    assert not list(tmp_path.glob("none*"))


@pytest.mark.parametrize("folder", [PUBLISHED, EVERY_DEPTH], ids=lambda f: f.name)
def test_the_published_champion_loads_where_hpo_is_not_installed(tmp_path, folder):
    # Rule: a shipped folder is a whole MLflow model: a process that cannot import hpo loads it
    # from its own code (the inference module) and predicts what hpo's process predicts (the
    # every-depth model from each cluster's exposure too).
    import subprocess
    import sys

    from hpo.registry import models
    from tests.inference.test_pyfunc import WITHOUT_HPO

    preset = "eRASS:8" if folder == PUBLISHED else "eRASS1"
    data = load_dataset(write_mock(tmp_path / "few.h5", 20, 5, load_sim_config(None, preset)))
    inputs = {"images": data.images, "redshift": data.redshift}
    if folder == EVERY_DEPTH:
        inputs["exposure_s"] = data.exposure_s
    np.savez(tmp_path / "inputs.npz", **inputs)
    proc = subprocess.run([sys.executable, "-c", WITHOUT_HPO, str(folder), str(tmp_path / "inputs.npz")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["hpo"] == [] and "xray_hpo_inference.pyfunc" in out["code"]
    here = models.load(str(folder)).predict(inputs)
    np.testing.assert_allclose(out["log_mass"], here["log_mass"], rtol=1e-6)
    np.testing.assert_allclose(out["sigma"], here["sigma"], rtol=1e-6)


def test_clusters_unlike_any_it_trained_on_are_flagged(tmp_path):
    # Rule: the shipped model records the ranges of its training clusters (total counts among
    # them), so a cluster of 1e30 photons per pixel is flagged as outside them, not just faint.
    import h5py

    data = write_mock(tmp_path / "few.h5", 20, 9, load_sim_config(None, "eRASS:8"))
    with h5py.File(data, "a") as f:
        images = f["images"][:].astype(np.float64)
        images[0] = 1e30
        del f["images"]
        f["images"] = images
    from typer.testing import CliRunner

    from hpo.cli import app

    out = CliRunner().invoke(app, ["predict", str(PUBLISHED), str(data), "-o", str(tmp_path / "m")])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    assert summary["flags_unchecked"] == [] and summary["flags"]["counts_outside_training"] >= 1
    first = next(csv.DictReader((tmp_path / "m.csv").open()))
    assert int(first["flags"]) & 16 and int(first["flags"]) & 4  # counts, and the mass it gave
