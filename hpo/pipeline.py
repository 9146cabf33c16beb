"""Feeds training batches to Keras: in-memory arrays, or HDF5 blocks streamed by a PyDataset.

    hpo train run.yaml     # data.max_in_memory_gb decides which feed a file gets

Both feeds work on every Keras backend (TensorFlow, JAX): the stream is a
`keras.utils.PyDataset`, not a tf.data pipeline.
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
        source: an in-memory Dataset (fed as arrays) or an H5Source (streamed).
        idx: training indices.
        batch_size: clusters per step.
        seed: shuffling seed.
        exposure: feed exposure_s too (a model built with model.use_exposure; the source has it).
    """
    if isinstance(source, Dataset):
        sub = source.subset(idx)
        x = {"images": sub.images, "redshift": sub.redshift.reshape(-1, 1)}
        if exposure:
            x["exposure_s"] = np.asarray(sub.exposure_s, np.float32).reshape(-1, 1)
        return {"x": x, "y": sub.log_mass, "batch_size": batch_size, "shuffle": True}
    stream = BlockStream(source, idx, batch_size, seed, exposure=exposure)
    return {"x": stream, "shuffle": False}  # shuffled by the stream


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
        self.epoch = 0
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
        self.epoch += 1
        self._plan()
