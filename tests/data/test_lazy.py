"""Large files stream from HDF5: same clusters as in memory, checked chunk by chunk."""

from __future__ import annotations

import numpy as np
import pytest

from hpo.config import apply_overrides
from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.data.lazy import open_dataset
from hpo.errors import DataContractError
from hpo.pipeline import BlockStream
from hpo.training import train
from tests.conftest import make_signal_data
from tests.conftest import write_h5

TINY_GB = 1e-6  # forces streaming for any test file


def test_small_file_loads_and_large_file_streams(signal_h5):
    # Rule: a file under max_in_memory_gb is loaded; above it, images stay on disk.
    assert isinstance(open_dataset(signal_h5), Dataset)
    source = open_dataset(signal_h5, max_in_memory_gb=TINY_GB)
    assert isinstance(source, H5Source) and len(source) == 300 and source.image_shape == (16, 16, 2)


def test_streamed_reads_match_in_memory_rows(signal_h5):
    # Rule: reading by index (in any order) returns exactly the rows the in-memory file holds.
    full = open_dataset(signal_h5)
    source = open_dataset(signal_h5, max_in_memory_gb=TINY_GB)
    idx = np.array([299, 3, 150, 4])
    assert np.array_equal(source.subset(idx).images, full.images[idx])
    assert np.array_equal(source.subset(idx).log_mass, full.log_mass[idx])


def test_streamed_file_keeps_exposure_ids_and_reference(tmp_path):
    # Rule: a streamed file carries the optional (N,) keys as the in-memory one does.
    arrays = {**make_signal_data(40), "exposure_s": np.linspace(150, 2500, 40),
              "cluster_id": np.arange(1000, 1040), "reference/log_mass": np.full(40, 14.25)}
    source = open_dataset(write_h5(tmp_path / "cat.h5", arrays), max_in_memory_gb=TINY_GB)
    sub = source.subset(np.array([39, 1]))
    assert isinstance(source, H5Source) and sub.cluster_id.tolist() == [1039, 1001]
    assert sub.exposure_s[0] == 2500 and sub.reference["log_mass"].tolist() == [14.25, 14.25]
    # the stream feeds each batch's exposure (a model with model.use_exposure takes it)
    x, y = BlockStream(source, np.arange(40), batch_size=8, seed=0, exposure=True)[0]
    rows = [int(np.flatnonzero(np.isclose(arrays["log_mass"], m))[0]) for m in y]
    assert np.allclose(x["exposure_s"][:, 0], arrays["exposure_s"][rows])


def test_streamed_file_is_still_checked(tmp_path):
    # Rule: a streamed file gets the same contract checks, images included.
    arrays = make_signal_data(40)
    arrays["images"] = arrays["images"].astype(np.float32)
    arrays["images"][33, 2, 2, 1] = np.nan
    path = write_h5(tmp_path / "nan.h5", arrays)
    with pytest.raises(DataContractError, match=r"'images'.*index 33"):
        open_dataset(path, max_in_memory_gb=TINY_GB)


@pytest.mark.parametrize(("images", "text"), [
    (lambda im: im + 1j, "must hold real numbers"),
    (lambda im: im.astype(np.float64) * 1e300, "beyond float32's range"),
    (lambda im: im.astype("S8"), "must hold real numbers"),
    (lambda im: im[:, :, :0], "H, W, C >= 1"),
])
def test_streamed_images_of_no_real_counts_are_refused_in_one_line(tmp_path, images, text):
    # Rule: streamed images are checked by kind as in-memory ones: complex, strings, values
    # float32 cannot hold and empty images are one DataContractError line naming the file (they
    # were a traceback of numpy's cast, or silently cast; found by tests/data/test_contract_fuzz).
    arrays = make_signal_data(40)
    arrays["images"] = images(arrays["images"])
    path = write_h5(tmp_path / "bad.h5", arrays)
    with pytest.raises(DataContractError, match=text) as err:
        open_dataset(path, max_in_memory_gb=TINY_GB)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_training_learns_from_a_streamed_file(signal_h5):
    # Rule: the block stream feeds every training cluster; the network learns as in memory.
    source = open_dataset(signal_h5, max_in_memory_gb=TINY_GB)
    cfg = apply_overrides({"model.conv_blocks": [[8], [8]], "model.pool.size": 2, "model.dense": [32, 16],
                           "train.batch_size": 32, "train.optimizer.learning_rate": 3e-3, "train.epochs": 20})
    result = train(cfg, source)
    assert result.val_metrics["residual_std"] < 0.5 * float(np.std(source.log_mass))


def test_fingerprint_is_the_same_in_memory_and_streamed(signal_h5):
    # Rule: a file's fingerprint does not depend on how it was opened.
    assert open_dataset(signal_h5).fingerprint() == open_dataset(signal_h5, max_in_memory_gb=TINY_GB).fingerprint()


def test_block_stream_feeds_every_cluster_once_per_epoch_in_a_new_order(signal_h5, monkeypatch):
    # Rule: each epoch yields every training cluster exactly once, in as many batches as the
    # epoch before (Keras counts steps once), and in a new order; labels stay with their images.
    monkeypatch.setattr("hpo.pipeline.STREAM_BLOCK", 32)  # 300 clusters -> several windows
    monkeypatch.setattr("hpo.pipeline.WINDOW_BLOCKS", 2)
    source = open_dataset(signal_h5, max_in_memory_gb=TINY_GB)
    full = open_dataset(signal_h5)
    idx = np.arange(7, 290, dtype=np.int64)
    stream = BlockStream(source, idx, batch_size=20, seed=3)
    orders, lengths = [], []
    for _ in range(2):
        lengths.append(len(stream))
        seen = []
        for i in range(len(stream)):
            x, y = stream[i]
            assert x["images"].shape[1:] == (16, 16, 2) and x["redshift"].shape[1:] == (1,)
            assert len(y) <= 20
            rows = [int(np.flatnonzero(np.isclose(full.redshift, z))[0]) for z in x["redshift"][:, 0]]
            assert np.allclose(full.log_mass[rows], y)
            seen.extend(rows)
        orders.append(seen)
        stream.on_epoch_end()
    assert lengths[0] == lengths[1]
    assert sorted(orders[0]) == sorted(orders[1]) == list(idx)
    assert orders[0] != orders[1]


def test_a_streamed_file_replaced_after_opening_shows_in_its_fingerprint_on_disk(tmp_path):
    # Rule: fingerprint_on_disk is the file as it is now: equal to the opened one until the file is
    # regenerated at the same path, then different; a removed file is "unreadable".
    path = write_h5(tmp_path / "d.h5", make_signal_data(50))
    source = open_dataset(path, max_in_memory_gb=TINY_GB)
    assert isinstance(source, H5Source) and source.fingerprint_on_disk() == source.fingerprint()
    write_h5(path, make_signal_data(50, seed=1))
    assert source.fingerprint_on_disk()["sha256"] not in (source.fingerprint()["sha256"], "")
    assert source.fingerprint_on_disk() == open_dataset(path).fingerprint()
    path.unlink()
    assert source.fingerprint_on_disk()["sha256"].startswith("unreadable")


def test_the_same_clusters_simulated_at_another_depth_or_response_are_other_data(tmp_path):
    # Rule: one simulator seed draws the same clusters (redshifts, masses) at every depth and with
    # or without the light-leak cut; the fingerprint tells the files apart by their photons (the
    # first images), streamed or not. A fingerprint recorded before the images counted (16 hex
    # digits: studies, model versions, checkpoints of earlier releases) still names its file, as
    # it did, by redshifts and masses.
    from hpo.data.contract import same_data
    from hpo.data.sim.config import apply_sim_overrides
    from hpo.data.sim.config import load_sim_config
    from hpo.data.sim.simulator import write_mock

    cfgs = {"eRASS:8": load_sim_config(None, "eRASS:8"), "eRASS1": load_sim_config(None, "eRASS1"),
            "keep": apply_sim_overrides({"instrument.light_leak_cut": False})}
    found = {k: open_dataset(write_mock(tmp_path / f"{i}.h5", 40, 7, c)).fingerprint()
             for i, (k, c) in enumerate(cfgs.items())}
    assert len({f["sha256"] for f in found.values()}) == 3
    assert len({f["sha256_v1"] for f in found.values()}) == 1  # what the old fingerprint saw
    streamed = open_dataset(tmp_path / "0.h5", max_in_memory_gb=TINY_GB)
    assert streamed.fingerprint() == found["eRASS:8"] == streamed.fingerprint_on_disk()
    assert same_data(found["eRASS:8"]["sha256"], found["eRASS:8"])
    assert not same_data(found["eRASS:8"]["sha256"], found["eRASS1"])
    assert same_data(found["eRASS:8"]["sha256_v1"], found["eRASS1"])  # an old record: as before
