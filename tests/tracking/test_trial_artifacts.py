"""The training ranges a logged model records: what `hpo predict` flags clusters outside of."""

from __future__ import annotations

import numpy as np

from hpo.data.contract import load_dataset
from hpo.data.lazy import H5Source
from hpo.data.lazy import open_dataset
from hpo.tracking.trial_artifacts import training_ranges
from tests.conftest import make_signal_data
from tests.conftest import write_h5


def test_ranges_cover_the_training_clusters_only_in_memory_and_streamed(tmp_path):
    # Rule: [min, max] over the training rows (never the others) of redshift, log_mass, exposure
    # and total counts; a file streamed from disk gives the same ranges as one in memory.
    arrays = make_signal_data(60, exposure=(150.0, 2500.0))
    path = write_h5(tmp_path / "d.h5", arrays)
    train = np.arange(0, 60, 2)
    counts = arrays["images"].sum(axis=(1, 2, 3))[train]
    streamed = open_dataset(path, max_in_memory_gb=1e-9)
    assert isinstance(streamed, H5Source)
    for ds in (load_dataset(path), streamed):
        ranges = training_ranges(ds, train)
        assert ranges["total_counts"] == [float(counts.min()), float(counts.max())]
        assert ranges["redshift"] == [float(arrays["redshift"][train].min()), float(arrays["redshift"][train].max())]
        assert set(ranges) == {"redshift", "log_mass", "exposure_s", "total_counts"}
    assert training_ranges(load_dataset(path), np.array([], int)) == {}
