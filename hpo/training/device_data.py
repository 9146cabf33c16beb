"""A data file's training and validation clusters on the accelerator, put there once per worker.

    KERAS_BACKEND=jax hpo worker --study combined --storage sqlite:///hpo.db   # train.loop: device

The device training path (device_loop.py) indexes these arrays on the device every epoch; no
batch is copied from host memory. A worker's trials on one file and one split share them: the
last placement is kept, keyed by the file's fingerprint and the split's indices, so the next
trial on the same clusters reuses it (a trial on another split or file replaces it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source

PLACE_BLOCK = 4096  # clusters read from a streamed file and copied to the device at once
VAL_BATCH = 512  # validation clusters per forward pass (as hpo.training.evaluate.predict)


@dataclass(frozen=True)
class DeviceData:
    """Training and validation inputs as device arrays.

    Attributes:
        train_x: model inputs of the training split: images (N, H, W, C) float32 counts, redshift
            (N, 1) float32, and exposure_s (N, 1) float32 s for a model that takes it.
        train_y: (N,) float32 log10 M.
        val_x: the validation split's inputs, padded (by repeating its first cluster) to a
            multiple of `val_batch` rows; only the first `n_val` predictions count.
        n_val: validation clusters.
        val_batch: validation clusters per forward pass.
    """

    train_x: dict[str, Any]
    train_y: Any
    val_x: dict[str, Any]
    n_val: int
    val_batch: int

    @property
    def n_train(self) -> int:
        return int(self.train_y.shape[0])

    @property
    def nbytes(self) -> int:
        arrays = [*self.train_x.values(), self.train_y, *self.val_x.values()]
        return int(sum(a.size * a.dtype.itemsize for a in arrays))


_placed: dict[tuple[str, ...], DeviceData] = {}


def place(ds: Dataset | H5Source, train: np.ndarray, val: np.ndarray, *,
          exposure: bool) -> DeviceData:
    """The clusters at `train` and `val` of `ds` on the default device, placed once per split.

    Args:
        ds: the whole data set, in memory or streamed (read in blocks of PLACE_BLOCK clusters).
        train, val: indices of the training and validation splits.
        exposure: place exposure_s too (a model built with model.use_exposure; `ds` has it).
    """
    key = (ds.fingerprint()["sha256"], _digest(train), _digest(val), str(exposure),
           str(jax.devices()[0]))
    if key not in _placed:
        _placed.clear()  # one split at a time: the device holds one copy of a file's clusters
        _placed[key] = _place(ds, train, val, exposure)
    return _placed[key]


def _place(ds: Dataset | H5Source, train: np.ndarray, val: np.ndarray,
           exposure: bool) -> DeviceData:
    assert ds.log_mass is not None
    train = np.sort(train)  # the order is the device's to shuffle; a streamed file reads faster
    n_val = len(val)
    val_batch = max(1, min(VAL_BATCH, n_val))
    pad = -n_val % val_batch
    val_x = {k: jnp.concatenate([v, jnp.repeat(v[:1], pad, axis=0)]) if pad else v
             for k, v in _inputs(ds, np.asarray(val), exposure).items()}
    return DeviceData(
        train_x=_inputs(ds, train, exposure),
        train_y=jnp.asarray(np.asarray(ds.log_mass[train], np.float32)),
        val_x=val_x,
        n_val=n_val,
        val_batch=val_batch,
    )


def _inputs(ds: Dataset | H5Source, idx: np.ndarray, exposure: bool) -> dict[str, Any]:
    x = {"images": _images(ds, idx),
         "redshift": jnp.asarray(np.asarray(ds.redshift[idx], np.float32).reshape(-1, 1))}
    if exposure:
        assert ds.exposure_s is not None
        x["exposure_s"] = jnp.asarray(np.asarray(ds.exposure_s[idx], np.float32).reshape(-1, 1))
    return x


def _images(ds: Dataset | H5Source, idx: np.ndarray) -> Any:
    if isinstance(ds, Dataset):
        return jnp.asarray(np.asarray(ds.images[idx], np.float32))
    # A streamed file: block by block, so host memory holds one block, never the whole split.
    blocks = [jnp.asarray(np.asarray(ds.read_images(idx[i : i + PLACE_BLOCK]), np.float32))
              for i in range(0, len(idx), PLACE_BLOCK)]
    return jnp.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def _digest(idx: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(idx, np.int64).tobytes()).hexdigest()[:16]
