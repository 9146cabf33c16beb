"""Feeds training batches to Keras: in-memory arrays, or HDF5 blocks streamed through tf.data.

    hpo train run.yaml     # data.max_in_memory_gb decides which feed a file gets
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source

STREAM_BLOCK = 1024  # clusters read from disk at once; blocks are shuffled, then clusters within
SHUFFLE_BUFFER = 4096


def fit_inputs(source: Dataset | H5Source, idx: np.ndarray, batch_size: int, seed: int) -> dict[str, Any]:
    """Keyword arguments for `model.fit` that feed the clusters at `idx`, shuffled every epoch.

    Args:
        source: an in-memory Dataset (fed as arrays) or an H5Source (streamed).
        idx: training indices.
        batch_size: clusters per step.
        seed: shuffling seed.
    """
    if isinstance(source, Dataset):
        sub = source.subset(idx)
        x = {"images": sub.images, "redshift": sub.redshift.reshape(-1, 1)}
        return {"x": x, "y": sub.log_mass, "batch_size": batch_size, "shuffle": True}
    return {"x": _stream(source, np.sort(idx), batch_size, seed), "shuffle": False}  # shuffled in the stream


def _stream(source: H5Source, idx: np.ndarray, batch_size: int, seed: int) -> Any:
    import tensorflow as tf

    h, w, c = source.image_shape
    assert source.log_mass is not None
    blocks = [idx[i : i + STREAM_BLOCK] for i in range(0, len(idx), STREAM_BLOCK)]
    epoch = iter(range(1 << 30))

    def generate() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        rng = np.random.default_rng([seed, next(epoch)])  # a new block order every epoch
        for b in rng.permutation(len(blocks)):
            block = blocks[b]
            x = {"images": source.read_images(block), "redshift": source.redshift[block].reshape(-1, 1)}
            yield x, source.log_mass[block]

    signature = (
        {"images": tf.TensorSpec((None, h, w, c), tf.float32), "redshift": tf.TensorSpec((None, 1), tf.float32)},
        tf.TensorSpec((None,), tf.float32),
    )
    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return (
        ds.unbatch()
        .shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        # A generator has no length; stating it lets Keras count steps and epochs as for arrays.
        .apply(tf.data.experimental.assert_cardinality(-(-len(idx) // batch_size)))
        .prefetch(tf.data.AUTOTUNE)
    )
