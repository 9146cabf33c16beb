"""A data file too large for memory: validated chunk by chunk, read by index on demand.

    hpo launch search_spaces/combined.yaml      # with data.max_in_memory_gb below the file's size
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpo.data.contract import as_float32
from hpo.data.contract import check_image_shape
from hpo.data.contract import Dataset
from hpo.data.contract import fingerprint
from hpo.data.contract import FINGERPRINT_IMAGES
from hpo.data.contract import load_dataset
from hpo.data.contract import read_h5
from hpo.data.contract import reading
from hpo.data.contract import take_rows
from hpo.data.contract import validate_arrays
from hpo.data.recipe import missing
from hpo.errors import DataContractError

VALIDATE_CHUNK = 2048  # clusters read at once while checking a streamed file


@dataclass(frozen=True)
class H5Source:
    """An HDF5 data file whose images stay on disk; labels, redshift and truth are in memory.

    Attributes:
        path: the HDF5 file.
        redshift, log_mass, truth, attrs, exposure_s, cluster_id, reference: as in Dataset.
        image_shape: (H, W, C).
        images_head: the first FINGERPRINT_IMAGES images (float32) as the file was opened: they
            count in its fingerprint.
    """

    path: Path
    n: int
    image_shape: tuple[int, int, int]
    images_head: np.ndarray
    redshift: np.ndarray
    log_mass: np.ndarray | None
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    exposure_s: np.ndarray | None = None
    cluster_id: np.ndarray | None = None
    reference: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.n

    def read_images(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), H, W, C) float32 images at `idx` (any order)."""
        idx = np.asarray(idx)
        order = np.argsort(idx)
        with h5py.File(self.path, "r") as f:
            block = f["images"][np.sort(idx)]  # h5py reads increasing indices only
        out = np.empty((len(idx), *self.image_shape), np.float32)
        out[order] = block
        return out

    def subset(self, idx: np.ndarray) -> Dataset:
        """The clusters at `idx`, read into memory."""
        return take_rows(self, self.read_images(idx), idx)

    def fingerprint(self) -> dict[str, Any]:
        """As Dataset.fingerprint: the same file gives the same fingerprint either way."""
        return fingerprint(self.redshift, self.log_mass, self.image_shape, self.attrs,
                           self.images_head)

    def fingerprint_on_disk(self) -> dict[str, Any]:
        """The fingerprint of the file at `path` now (images are read from it on demand, so a
        file replaced since it was opened changes what the next read returns); an unreadable
        one's sha256 says so."""
        try:
            raw, attrs = read_h5(self.path, skip_images=True)
            with reading(self.path, "HDF5 file"), h5py.File(self.path, "r") as f:
                shape = tuple(int(d) for d in f["images"].shape[1:])
                head = f["images"][:FINGERPRINT_IMAGES]
        except DataContractError as exc:
            why = f"unreadable ({type(exc).__name__})"
            return {"sha256": why, "sha256_v1": why}
        return fingerprint(raw["redshift"], raw.get("log_mass"), shape, attrs, head)


def open_dataset(path: str | Path, *, max_in_memory_gb: float = 4.0, require_labels: bool = True) -> Dataset | H5Source:
    """The file in memory if its float32 images fit in `max_in_memory_gb`, else an H5Source.

    Either way the whole file is checked against the data contract first.
    """
    path = Path(path)
    if path.suffix.lower() == ".npz" or not path.exists():
        return load_dataset(path, require_labels=require_labels)
    try:
        with reading(path, "HDF5 file"), h5py.File(path, "r") as f:
            shape = f["images"].shape if isinstance(f.get("images"), h5py.Dataset) else None
    except DataContractError:
        shape = None  # load_dataset gives the precise error
    if shape is None or len(shape) != 4 or np.prod(shape, dtype=np.float64) * 4 <= max_in_memory_gb * 2**30:
        return load_dataset(path, require_labels=require_labels)
    return _open_streamed(path, require_labels)


def data_header(path: str | Path) -> tuple[int, tuple[int, int, int]] | None:
    """(clusters, (H, W, C)) of a data file's images, read from its header (no image is loaded);
    None when the header does not give a 4-d `images` array (the full check then says why).

    Raises:
        DataContractError: the file does not exist; names the `hpo simulate` line that makes it.
    """
    path = Path(path)
    if not path.exists():
        raise missing(path)
    try:
        with reading(path, "data file"):
            if path.suffix.lower() == ".npz":
                with zipfile.ZipFile(path) as z, z.open("images.npy") as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape = read(f)[0]
            else:
                with h5py.File(path, "r") as f:
                    node = f.get("images")
                    shape = node.shape if isinstance(node, h5py.Dataset) else ()
    except DataContractError:
        return None
    if len(shape) != 4:
        return None
    n, h, w, c = (int(d) for d in shape)
    return n, (h, w, c)


def _open_streamed(path: Path, require_labels: bool) -> H5Source:
    # Validate everything but the images with the in-memory checks, on a one-cluster image stub.
    with reading(path, "HDF5 file"), h5py.File(path, "r") as f:
        images = f["images"]
        n, h, w, c = check_image_shape(images.shape, path), *images.shape[1:]
        for start in range(0, n, VALIDATE_CHUNK):
            block = as_float32(images[start : start + VALIDATE_CHUNK], "images", path, first=start)
            if (block < 0).any():
                raise DataContractError(f"{path}: key 'images' must hold counts >= 0, found negative values near index {start}")
            if start == 0:
                head = block[:FINGERPRINT_IMAGES].copy()
    raw, attrs = read_h5(path, skip_images=True)
    raw["images"] = np.zeros((n, 1, 1, 1), np.float32)  # stands in for the checked images
    small = validate_arrays(raw, attrs, path, require_labels)
    return H5Source(path, n, (h, w, c), head, small.redshift, small.log_mass, small.truth,
                    small.attrs, small.exposure_s, small.cluster_id, small.reference)
