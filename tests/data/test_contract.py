"""The data contract: good files load, each broken file is refused with the file and key named."""

from __future__ import annotations

import numpy as np
import pytest

from hpo.data import load_dataset
from hpo.data import split_indices
from hpo.errors import DataContractError
from tests.conftest import make_signal_data
from tests.conftest import write_h5


def _arrays(n: int = 12) -> dict:
    return make_signal_data(n, size=8, channels=2)


def test_h5_loads_as_float32_with_truth(tmp_path):
    # Rule: a contract file loads; images become float32, truth/ keys lose their prefix.
    arrays = {**_arrays(), "truth/kT": np.ones(12), "truth/log_lx": np.full(12, 44.0)}
    ds = load_dataset(write_h5(tmp_path / "ok.h5", arrays))
    assert ds.images.dtype == np.float32 and ds.images.shape == (12, 8, 8, 2)
    assert set(ds.truth) == {"kT", "log_lx"} and len(ds) == 12


def test_npz_with_the_same_keys_loads(tmp_path):
    # Rule: .npz is accepted with the same keys.
    np.savez(tmp_path / "ok.npz", **_arrays())
    assert len(load_dataset(tmp_path / "ok.npz")) == 12


def test_prediction_files_need_no_labels(tmp_path):
    # Rule: log_mass is optional for prediction, required for training.
    arrays = _arrays()
    del arrays["log_mass"]
    path = write_h5(tmp_path / "nolabels.h5", arrays)
    assert load_dataset(path, require_labels=False).log_mass is None
    with pytest.raises(DataContractError, match="'log_mass'"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("change", "key", "text"),
    [
        (lambda a: a.pop("images"), "images", "missing key"),
        (lambda a: a.update(images=a["images"][..., 0]), "images", "rank 4"),
        (lambda a: a.update(redshift=a["redshift"][:-1]), "redshift", "11 values"),
        (lambda a: a["images"].__setitem__((3, 0, 0, 0), -1), "images", "negative"),
        (lambda a: a.update(images=a["images"].astype(float)) or a["images"].__setitem__((2, 1, 1, 1), np.nan), "images", "NaN"),
        (lambda a: a["redshift"].__setitem__(5, 0.0), "redshift", "index 5"),
        (lambda a: a.update(log_mass=np.full(12, np.inf)), "log_mass", "NaN or infinite"),
    ],
)
def test_broken_files_are_refused_naming_file_and_key(tmp_path, change, key, text):
    # Rule: a broken file is refused with one message naming the file and the key.
    arrays = _arrays()
    change(arrays)
    path = write_h5(tmp_path / "bad.h5", arrays)
    with pytest.raises(DataContractError) as err:
        load_dataset(path)
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value) and text in str(err.value)


def test_not_hdf5_is_refused(tmp_path):
    # Rule: an unreadable file is one clear error, not an h5py traceback.
    path = tmp_path / "junk.h5"
    path.write_text("not hdf5")
    with pytest.raises(DataContractError, match="not a readable HDF5"):
        load_dataset(path)


def test_split_is_deterministic_disjoint_and_complete():
    # Rule: the same seed gives the same split; the parts cover every index exactly once.
    a = split_indices(100, val_fraction=0.1, test_fraction=0.1, seed=3)
    b = split_indices(100, val_fraction=0.1, test_fraction=0.1, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test)))
    joined = np.concatenate([a.train, a.val, a.test])
    assert sorted(joined.tolist()) == list(range(100)) and len(a.test) == 10 and len(a.val) == 10
