"""Feeds training batches to Keras: in-memory arrays, or HDF5 blocks streamed from disk.

    hpo train run.yaml     # data.max_in_memory_gb decides which feed a file gets

Both feeds are `keras.utils.PyDataset`s, not tf.data pipelines, so they work on every Keras
backend (TensorFlow, JAX). The order of an epoch's clusters is a function of (seed, epoch) and
of nothing else: a run resumed from a checkpoint at epoch e (`start_at(e)`) trains on the
batches the interrupted run would have.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source

STREAM_BLOCK = 1024  # clusters read from disk at once (contiguous rows: one HDF5 read)
WINDOW_BLOCKS = 4  # blocks in memory at once; clusters are shuffled within a window


def fit_inputs(source: Dataset | H5Source, idx: np.ndarray, batch_size: int, seed: int, *,
               exposure: bool = False) -> dict[str, Any]:
    """Keyword arguments for `model.fit` that feed the clusters at `idx`, shuffled every epoch.

    Args:
        source: an in-memory Dataset (ArrayFeed) or an H5Source (BlockStream).
        idx: training indices.
        batch_size: clusters per step.
        seed: shuffling seed.
        exposure: feed exposure_s too (a model built with model.use_exposure; the source has it).
    """
    feed: ArrayFeed | BlockStream
    if isinstance(source, Dataset):
        feed = ArrayFeed(source, idx, batch_size, seed, exposure=exposure)
    else:
        feed = BlockStream(source, idx, batch_size, seed, exposure=exposure)
    return {"x": feed, "shuffle": False}  # shuffled by the feed


class ArrayFeed(keras.utils.PyDataset):
    """Batches of an in-memory data set's clusters at `idx`, in a new order every epoch.

    Epoch e's order is the permutation drawn by numpy's generator of [seed, e], as Keras'
    own array feed would shuffle, but independent of what ran before in the process.
    """

    def __init__(self, source: Dataset, idx: np.ndarray, batch_size: int, seed: int, *,
                 exposure: bool = False) -> None:
        super().__init__()
        sub = source.subset(np.asarray(idx))
        assert sub.log_mass is not None
        self.x = {"images": sub.images, "redshift": sub.redshift.reshape(-1, 1).astype(np.float32)}
        if exposure:
            self.x["exposure_s"] = np.asarray(sub.exposure_s, np.float32).reshape(-1, 1)
        self.y = sub.log_mass.astype(np.float32)
        self.batch_size, self.seed = batch_size, seed
        self.start_at(0)

    def start_at(self, epoch: int) -> None:
        """The next epoch is `epoch` (a resumed run)."""
        self.epoch = epoch
        self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.y))

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        rows = np.sort(self.order[i * self.batch_size : (i + 1) * self.batch_size])
        return {k: v[rows] for k, v in self.x.items()}, self.y[rows]

    def on_epoch_end(self) -> None:
        self.start_at(self.epoch + 1)


class BlockStream(keras.utils.PyDataset):
    """Batches of a file's clusters at `idx`, read a window of blocks at a time.

    Every epoch the blocks are put in a new random order and grouped into windows of
    WINDOW_BLOCKS blocks; the clusters of a window are shuffled and cut into batches. A batch
    never spans two windows, so the number of batches is the same every epoch (the one short
    block, if any, always closes the last window). Keras asks for batches in order, so a
    window is read from disk once.
    """

    def __init__(self, source: H5Source, idx: np.ndarray, batch_size: int, seed: int, *,
                 exposure: bool = False) -> None:
        super().__init__()
        assert source.log_mass is not None
        self.source, self.batch_size, self.seed, self.exposure = source, batch_size, seed, exposure
        idx = np.sort(np.asarray(idx))
        self.blocks = [idx[i : i + STREAM_BLOCK] for i in range(0, len(idx), STREAM_BLOCK)]
        self.start_at(0)

    def start_at(self, epoch: int) -> None:
        """The next epoch is `epoch` (a resumed run)."""
        self.epoch = epoch
        self._plan()

    def _plan(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        full = [b for b in self.blocks if len(b) == STREAM_BLOCK]
        short = [b for b in self.blocks if len(b) < STREAM_BLOCK]
        order = [full[i] for i in rng.permutation(len(full))]
        windows = [order[i : i + WINDOW_BLOCKS] for i in range(0, len(order), WINDOW_BLOCKS)]
        if short:
            windows = windows[:-1] + [(windows[-1] if windows else []) + short]
        self.windows = [rng.permutation(np.concatenate(w)) for w in windows if w]
        # (window, start) of every batch
        self.batches = [(w, s) for w, win in enumerate(self.windows)
                        for s in range(0, len(win), self.batch_size)]
        self._cached: tuple[int, dict[str, np.ndarray], np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        w, start = self.batches[i]
        if self._cached is None or self._cached[0] != w:
            win = self.windows[w]
            x = {"images": self.source.read_images(win),
                 "redshift": self.source.redshift[win].reshape(-1, 1).astype(np.float32)}
            if self.exposure:
                x["exposure_s"] = self.source.exposure_s[win].reshape(-1, 1).astype(np.float32)  # type: ignore[index]
            self._cached = (w, x, self.source.log_mass[win].astype(np.float32))  # type: ignore[index]
        _, x, y = self._cached
        end = start + self.batch_size
        return {k: v[start:end] for k, v in x.items()}, y[start:end]

    def on_epoch_end(self) -> None:
        self.start_at(self.epoch + 1)
