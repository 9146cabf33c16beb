"""The data contract: good files load, each broken file is refused with the file and key named."""

from __future__ import annotations

import h5py
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
        (lambda a: a.update(exposure_s=np.r_[np.full(11, 1e3), 0.0]), "exposure_s", "index 11"),
        (lambda a: a.update(exposure_s=np.full(12, np.nan)), "exposure_s", "NaN or infinite"),
        (lambda a: a.update(exposure_s=np.ones(11)), "exposure_s", "11 values"),
        (lambda a: a.update(cluster_id=np.linspace(0, 1, 12)), "cluster_id", "integers or strings"),
        # Found by fuzzing (tests/data/test_contract_fuzz.py): accepted before, each meaningless.
        (lambda a: a.update(images=a["images"] + 1j), "images", "real numbers"),
        (lambda a: a.update(images=a["images"][:, :0]), "images", "H, W, C >= 1"),
        (lambda a: a.update(redshift=a["redshift"] > 0), "redshift", "real numbers"),
        (lambda a: a.update({"truth/kT": np.full(12, 1 + 1j)}), "truth/kT", "real numbers"),
        (lambda a: a.update(log_mass=np.full(12, 1e300)), "log_mass", "beyond float32's range"),
        # z = 1e30 passed, and hpo baseline then asked the distance table for 5e33 points.
        (lambda a: a["redshift"].__setitem__(4, 1e30), "redshift", "<= 20: "),
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


def test_exposure_ids_and_reference_mass_are_read_and_follow_a_subset(tmp_path):
    # Rule: the optional keys exposure_s, cluster_id (HDF5 variable-length UTF-8 strings or
    # integers) and reference/* are read, and a subset keeps them row for row.
    arrays = {**_arrays(), "exposure_s": np.linspace(150.0, 2500.0, 12),
              "reference/log_mass": np.r_[np.full(11, 14.0), np.nan]}
    path = write_h5(tmp_path / "cat.h5", arrays)
    with h5py.File(path, "a") as f:
        f.create_dataset("cluster_id", data=[f"1eRASS J{i:04d}+ü" for i in range(12)],
                         dtype=h5py.string_dtype("utf-8"))
        f.attrs["reference_mass_source"] = "eRASS1 clusters (Bulbul+2024)"
    ds = load_dataset(path)
    assert ds.exposure_s.dtype == np.float32 and ds.exposure_s[-1] == 2500.0
    assert ds.cluster_id[3] == "1eRASS J0003+ü" and np.isnan(ds.reference["log_mass"][-1])
    assert ds.attrs["reference_mass_source"].startswith("eRASS1")
    sub = ds.subset(np.array([5, 2]))
    assert list(sub.cluster_id) == ["1eRASS J0005+ü", "1eRASS J0002+ü"]
    assert np.allclose(sub.exposure_s, arrays["exposure_s"][[5, 2]])
    ints = write_h5(tmp_path / "ints.h5", {**_arrays(), "cluster_id": np.arange(100, 112)})
    assert load_dataset(ints).cluster_id.dtype == np.int64
    np.savez(tmp_path / "cat.npz", **_arrays(), reference_log_mass=np.full(12, 14.0),
             cluster_id=np.array([f"c{i}" for i in range(12)]))
    ds = load_dataset(tmp_path / "cat.npz")
    assert ds.cluster_id[0] == "c0" and ds.reference["log_mass"].shape == (12,)


def test_a_catalogue_mass_is_never_a_training_label(tmp_path):
    # Rule: a file with reference/log_mass but no log_mass loads for prediction and is refused
    # for training, the message naming both keys.
    arrays = _arrays()
    arrays["reference/log_mass"] = arrays.pop("log_mass")
    path = write_h5(tmp_path / "catalogue.h5", arrays)
    assert load_dataset(path, require_labels=False).log_mass is None
    with pytest.raises(DataContractError, match="missing key 'log_mass'.*'reference/log_mass'.*never a training label"):
        load_dataset(path)


def test_not_hdf5_is_refused(tmp_path):
    # Rule: an unreadable file is one clear error, not an h5py traceback.
    path = tmp_path / "junk.h5"
    path.write_text("not hdf5")
    with pytest.raises(DataContractError, match="not a readable HDF5") as info:
        load_dataset(path)
    assert "\n" not in str(info.value)
    with pytest.raises(DataContractError, match="is a directory, not a data file"):
        load_dataset(tmp_path)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(write_h5(tmp_path / "whole.h5", make_signal_data(50)).read_bytes()[:3000])
    with pytest.raises(DataContractError, match="truncated.h5: not a readable HDF5 file") as info:
        load_dataset(truncated)
    assert "\n" not in str(info.value)


def test_split_is_deterministic_disjoint_and_complete():
    # Rule: the same seed gives the same split; the parts cover every index exactly once.
    a = split_indices(100, val_fraction=0.1, test_fraction=0.1, seed=3)
    b = split_indices(100, val_fraction=0.1, test_fraction=0.1, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test)))
    joined = np.concatenate([a.train, a.val, a.test])
    assert sorted(joined.tolist()) == list(range(100)) and len(a.test) == 10 and len(a.val) == 10


@pytest.mark.parametrize("ids", [np.array([7, 8, 7, 9, 8]), np.array([b"A", b"B", b"A", b"C", b"D"])])
def test_an_id_given_to_two_clusters_is_refused(tmp_path, ids):
    # Rule: cluster_id says which cluster a row is, so an ID on two rows is refused in one line
    # naming the key, the ID and its rows (counted from 1), in memory and streamed alike.
    from hpo.data.lazy import open_dataset

    path = write_h5(tmp_path / "d.h5", {**make_signal_data(5), "cluster_id": ids})
    for load in (load_dataset, lambda p: open_dataset(p, max_in_memory_gb=1e-9)):
        with pytest.raises(DataContractError) as info:
            load(path)
        message = str(info.value)
        assert "key 'cluster_id' gives" in message and "(rows 1, 3)" in message and "\n" not in message
