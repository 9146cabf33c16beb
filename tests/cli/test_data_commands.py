"""`hpo simulate` and `hpo baseline` from the command line."""

from __future__ import annotations

import json

import numpy as np

from hpo.data import load_dataset
from tests.cli.test_errors import _assert_one_line_error
from tests.cli.test_end_to_end import hpo


def test_simulate_writes_a_contract_file_and_baseline_reads_it(tmp_path):
    # Rule: simulate writes N clusters that pass the contract; baseline prints both floors as JSON.
    hpo(tmp_path, "simulate", "mock.h5", "--n", "200", "--seed", "3", "--preset", "eRASS:4", "--quiet")
    ds = load_dataset(tmp_path / "mock.h5")
    assert len(ds) == 200 and ds.image_shape == (50, 50, 10)
    assert {"log_lx", "kT"} <= set(ds.truth) and ds.attrs["preset"] == "eRASS:4"
    floors = json.loads(hpo(tmp_path, "baseline", "mock.h5", "--json").stdout.strip().splitlines()[-1])
    assert 0 < floors["oracle_floor"] < floors["counts_baseline"] < float(np.std(ds.log_mass))


def test_same_seed_same_file(tmp_path):
    # Rule: the same seed gives the same file, bit for bit.
    for name in ("a.h5", "b.h5"):
        hpo(tmp_path, "simulate", name, "--n", "50", "--seed", "9", "--quiet")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_unknown_preset_is_one_line(tmp_path):
    # Rule: a bad option value is one clear line naming the valid choices.
    proc = hpo(tmp_path, "simulate", "x.h5", "--n", "5", "--preset", "eRASS:9", check=False)
    _assert_one_line_error(proc, "eRASS:9", "eRASS:8")
