"""`hpo simulate` and `hpo baseline` from the command line."""

from __future__ import annotations

import json

import numpy as np

from hpo.data import load_dataset
from tests.cli.test_errors import _assert_one_line_error
from tests.cli.test_end_to_end import hpo


def test_simulate_writes_a_contract_file_and_baseline_reads_it(tmp_path):
    # Rule: simulate writes N clusters that pass the contract; baseline prints the floors as JSON
    # and as a table: the oracle floor, the counts baselines and the feature baseline (the trees,
    # with their bias), between them, and the cluster counts they were fitted and scored on.
    # 400 clusters: on 160 fit clusters the trees were not reliably better than the linear fit
    hpo(tmp_path, "simulate", "mock.h5", "--n", "400", "--seed", "3", "--preset", "eRASS:4", "--quiet")
    ds = load_dataset(tmp_path / "mock.h5")
    assert len(ds) == 400 and ds.image_shape == (50, 50, 10)
    assert {"log_lx", "kT"} <= set(ds.truth) and ds.attrs["preset"] == "eRASS:4"
    floors = json.loads(hpo(tmp_path, "baseline", "mock.h5", "--json").stdout.strip().splitlines()[-1])
    assert 0 < floors["oracle_floor"] < floors["counts_baseline"] < float(np.std(ds.log_mass))
    assert floors["oracle_floor"] < floors["feature_baseline"] < floors["counts_baseline"]
    assert abs(floors["feature_baseline_bias"]) < 0.1 and floors["n_eval"] == 80
    text = hpo(tmp_path, "baseline", "mock.h5").stdout
    assert f"feature_baseline      {floors['feature_baseline']:.4f}" in text
    assert "fitted on 320 clusters (the trees on 320), scored on 80" in text


def test_baseline_achievable_adds_the_achievable_floor(tmp_path):
    # Rule: --achievable adds the achievable floor (hpo.data.achievable) on the same scored
    # clusters, between the oracle floor and the feature baseline, with its 68% interval; a file
    # it cannot replay is one line.
    hpo(tmp_path, "simulate", "mock.h5", "--n", "150", "--seed", "4", "--preset", "eRASS:8", "--quiet")
    out = json.loads(hpo(tmp_path, "baseline", "mock.h5", "--json", "--achievable").stdout.strip().splitlines()[-1])
    assert out["oracle_floor"] < out["achievable_floor"] < out["feature_baseline"] and out["n_eval"] == 30
    text = hpo(tmp_path, "baseline", "mock.h5", "--achievable").stdout
    assert f"achievable_floor      {out['achievable_floor']:.4f}" in text
    assert "achievable floor: 68% interval" in text
    ds = load_dataset(tmp_path / "mock.h5")
    np.savez(tmp_path / "plain.npz", images=ds.images, redshift=ds.redshift, log_mass=ds.log_mass)
    proc = hpo(tmp_path, "baseline", "plain.npz", "--achievable", check=False)
    _assert_one_line_error(proc, "plain.npz", "simulate it again")


def test_same_seed_same_file(tmp_path):
    # Rule: the same seed gives the same file, bit for bit.
    for name in ("a.h5", "b.h5"):
        hpo(tmp_path, "simulate", name, "--n", "50", "--seed", "9", "--quiet")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_unknown_preset_is_one_line(tmp_path):
    # Rule: a bad option value is one clear line naming the valid choices.
    proc = hpo(tmp_path, "simulate", "x.h5", "--n", "5", "--preset", "eRASS:9", check=False)
    _assert_one_line_error(proc, "eRASS:9", "eRASS:8")


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_simulate_replaces_an_existing_file_only_with_overwrite(tmp_path):
    # Rule: OUT.h5 that exists, or a file of the --events fixture, is refused in one line naming
    # it and --overwrite, before anything is simulated; --overwrite replaces them; OUT that is the
    # --config file is refused even with --overwrite.
    (tmp_path / "mock.h5").write_text("mine")
    proc = hpo(tmp_path, "simulate", "mock.h5", "--n", "5", "--quiet", check=False)
    _assert_one_line_error(proc, "mock.h5 exists", "--overwrite")
    assert (tmp_path / "mock.h5").read_text() == "mine"
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "catalog.fits").write_text("mine")
    proc = hpo(tmp_path, "simulate", "new.h5", "--n", "5", "--quiet", "--events", "ev", check=False)
    _assert_one_line_error(proc, "ev/catalog.fits exists", "--overwrite")
    assert _names(tmp_path) == ["ev", "mock.h5"] and _names(tmp_path / "ev") == ["catalog.fits"]
    hpo(tmp_path, "simulate", "mock.h5", "--n", "5", "--quiet", "--events", "ev", "--overwrite")
    assert len(load_dataset(tmp_path / "mock.h5")) == 5 and (tmp_path / "ev" / "catalog.fits").stat().st_size > 100
    (tmp_path / "sim.yaml").write_text("survey: {preset: eFEDS}\n")
    proc = hpo(tmp_path, "simulate", "sim.yaml", "--config", "sim.yaml", "--overwrite", check=False)
    _assert_one_line_error(proc, "sim.yaml is an input")
    assert (tmp_path / "sim.yaml").read_text() == "survey: {preset: eFEDS}\n"


def test_simulate_where_no_file_can_be_is_one_line(tmp_path):
    # Rule: OUT naming a folder, a path under a regular file, or a place no file can be made is
    # one line naming it, and leaves nothing (no OUT.partial, no temporary, no folder).
    (tmp_path / "d").mkdir()
    (tmp_path / "afile").write_text("keep")
    for out in ("d", "afile/sub/x.h5", "/proc/x.h5"):
        proc = hpo(tmp_path, "simulate", out, "--n", "5", "--quiet", check=False)
        _assert_one_line_error(proc, out)
    assert _names(tmp_path) == ["afile", "d"] and _names(tmp_path / "d") == []


def test_simulate_is_whole_or_absent_with_its_fixture(tmp_path, monkeypatch):
    # Rule: a failure while the --events fixture is written (here: Ctrl-C after its first event
    # file) leaves neither the fixture's files nor OUT.h5; a failure while OUT.h5 is written
    # leaves nothing either.
    from typer.testing import CliRunner

    from hpo.cli import app
    from hpo.data.sim import simulator
    from hpo.data.survey import mock_survey

    def interrupted(path, *args, **kwargs):
        path.write_bytes(b"SIMPLE  =")
        raise KeyboardInterrupt

    monkeypatch.setattr(mock_survey, "_write_map", interrupted)
    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "m.h5"), "--n", "5", "--quiet", "--events",
                                      str(tmp_path / "ev")])
    assert result.exit_code != 0 and _names(tmp_path) == []

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(simulator, "_create", full_disk)
    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "m.h5"), "--n", "5", "--quiet"])
    assert str(result.exception) == f"{tmp_path / 'm.h5'}: cannot write it (No space left on device); nothing was left behind"
    assert _names(tmp_path) == []
