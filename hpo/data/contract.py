"""Reads a data file (HDF5 or .npz) and enforces the data contract of PRODUCT.md.

    hpo baseline data/mock.h5     # any command that reads data goes through load_dataset
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpo.data.cosmology import Z_MAX
from hpo.data.recipe import missing
from hpo.errors import DataContractError
from hpo.errors import HpoError

REQUIRED_KEYS = ("images", "redshift")
EXPOSURE_KEY = "exposure_s"  # optional (N,) effective exposure per cluster, s; a model may use it
ID_KEY = "cluster_id"  # optional (N,) catalogue IDs (integers or strings), carried to predictions
REFERENCE_PREFIX = "reference/"  # optional (N,) values of a catalogue (its own log_mass), compared only
# The (N,) keys of the contract besides images, and the groups of (N,) keys, read from a file.
VECTOR_KEYS = ("redshift", "log_mass", EXPOSURE_KEY, ID_KEY)
GROUPS = ("truth", "reference")


@dataclass(frozen=True)
class Dataset:
    """A validated data set held in memory.

    Attributes:
        images: (N, H, W, C) float32 photon counts, channels last.
        redshift: (N,) float32, all > 0.
        log_mass: (N,) float32 log10(M500 / Msun), or None for files meant only for prediction.
        truth: the simulator's hidden draws, each (N,), keyed without the `truth/` prefix.
        attrs: file metadata (channel_edges_keV, pixel_arcsec, generator, seed, ...).
        path: where it was read from.
        exposure_s: (N,) float32 effective exposure of each cluster, s (> 0), or None.
        cluster_id: (N,) int64 or str catalogue IDs, or None.
        reference: a catalogue's own values, each (N,) float32, keyed without the `reference/`
            prefix (`log_mass`: its mass, for comparison only, never a training label).
    """

    images: np.ndarray
    redshift: np.ndarray
    log_mass: np.ndarray | None
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    exposure_s: np.ndarray | None = None
    cluster_id: np.ndarray | None = None
    reference: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        h, w, c = self.images.shape[1:]
        return int(h), int(w), int(c)

    def subset(self, idx: np.ndarray) -> Dataset:
        """The clusters at `idx`, truth included."""
        return take_rows(self, self.images[idx], idx)

    def fingerprint(self) -> dict[str, Any]:
        """Content hash, size and generator attributes: enough to tell two data sets apart."""
        return fingerprint(self.redshift, self.log_mass, self.image_shape, self.attrs,
                           self.images[:FINGERPRINT_IMAGES])


def take_rows(source: Any, images: np.ndarray, idx: np.ndarray) -> Dataset:
    """A Dataset of the clusters at `idx` of `source` (a Dataset or an H5Source), their images
    already read."""
    return Dataset(
        images=images,
        redshift=source.redshift[idx],
        log_mass=None if source.log_mass is None else source.log_mass[idx],
        truth={k: v[idx] for k, v in source.truth.items()},
        attrs=source.attrs,
        path=source.path,
        exposure_s=None if source.exposure_s is None else source.exposure_s[idx],
        cluster_id=None if source.cluster_id is None else source.cluster_id[idx],
        reference={k: v[idx] for k, v in source.reference.items()},
    )


FINGERPRINT_IMAGES = 16  # the first clusters' images count in a data set's fingerprint
V1_DIGITS = 16  # a fingerprint recorded before the images counted (sha256_v1)


def fingerprint(
    redshift: np.ndarray, log_mass: np.ndarray | None, image_shape: tuple[int, ...],
    attrs: dict[str, Any], images_head: np.ndarray,
) -> dict[str, Any]:
    """A data set's identity from its small arrays and its first images, so that a streamed file
    need not be read whole.

    Redshifts and masses are continuous draws, so two files that share them hold the same
    clusters; but one simulator seed draws the same clusters at every depth and with either
    response (--keep-light-leak), so the images of the first FINGERPRINT_IMAGES clusters count
    too: their photons tell such files apart. `sha256` (20 hex digits) is that; `sha256_v1` (16)
    leaves the images out, as studies, runs and checkpoints recorded it before (same_data).
    """
    h = hashlib.sha256(np.ascontiguousarray(redshift, np.float32).tobytes())
    if log_mass is not None:
        h.update(np.ascontiguousarray(log_mass, np.float32).tobytes())
    h.update(repr(tuple(image_shape)).encode())
    v1 = h.hexdigest()[:V1_DIGITS]
    h.update(np.ascontiguousarray(images_head, np.float32).tobytes())
    return {
        "sha256": h.hexdigest()[:20],
        "sha256_v1": v1,
        "n": int(len(redshift)),
        "image_shape": list(image_shape),
        "generator": str(attrs.get("generator", "unknown")),
        "seed": str(attrs.get("seed", "unknown")),
    }


def same_data(recorded: str, now: dict[str, Any]) -> bool:
    """Whether a recorded fingerprint names the data set whose fingerprint is `now`; one recorded
    before the images counted (V1_DIGITS long) is checked as it was, on redshifts and masses."""
    return recorded == (now["sha256_v1"] if len(recorded) == V1_DIGITS else now["sha256"])


def load_dataset(path: str | Path, *, require_labels: bool = True) -> Dataset:
    """Reads and validates a data file.

    Args:
        path: an HDF5 file (`.h5`, `.hdf5`) or an `.npz` with the same keys (`truth/x` as `truth/x`
            or `truth_x`).
        require_labels: refuse a file without `log_mass` (training needs it, prediction does not).

    Returns:
        The validated Dataset, images as float32.

    Raises:
        DataContractError: the file is missing, unreadable, or breaks the contract; the message names
            the file and the key.
    """
    path = Path(path)
    if not path.exists():
        raise missing(path)
    if path.is_dir():
        raise DataContractError(f"{path}: is a directory, not a data file (an HDF5 or .npz file)")
    raw, attrs = read_h5(path) if path.suffix.lower() != ".npz" else _read_npz(path)
    return validate_arrays(raw, attrs, path, require_labels)


def read_h5(path: Path, *, skip_images: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The contract's arrays and attrs of an HDF5 file, unvalidated (images left out if asked)."""
    with reading(path, "HDF5 file"), h5py.File(path, "r") as f:
        raw: dict[str, np.ndarray] = {}
        for key in VECTOR_KEYS if skip_images else ("images", *VECTOR_KEYS):
            if key in f:
                raw[key] = _dataset_array(f, key, path)
        for group in GROUPS:
            if group in f and isinstance(f[group], h5py.Group):
                for key in f[group]:
                    raw[f"{group}/{key}"] = _dataset_array(f, f"{group}/{key}", path)
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
    return raw, attrs


@contextmanager
def reading(path: Path, what: str, notes: list[str] | None = None) -> Iterator[None]:
    """Makes any error of a reader library (h5py, astropy, zipfile, numpy) on `path` one
    DataContractError line, "PATH: not a readable WHAT (NOTES; its message)", where `notes`
    holds what the library said about the file before it failed (astropy logs "File may have
    been truncated" and then fails to reshape an array).

    Bytes cut short or overwritten reach parsers that raise whatever their first failed check
    raises: OSError, KeyError, RuntimeError, EOFError, ValueError, TypeError, SyntaxError (numpy's
    .npy header), MemoryError (a header that claims petabytes). Each means the same: the file
    cannot be read. An HpoError raised inside (a contract check) passes through as it is.
    """
    try:
        yield
    except HpoError:
        raise
    except Exception as exc:  # see above: untrusted bytes, any type
        said = "; ".join(dict.fromkeys([*(n[:200] for n in (notes or [])[:2]), one_line(exc)]))
        raise DataContractError(f"{path}: not a readable {what} ({said})") from None


def one_line(exc: BaseException) -> str:
    """An exception of a reader as one line (h5py's messages run over several)."""
    return " ".join(str(exc).strip("'\"").split())[:300] or type(exc).__name__


def _dataset_array(f: h5py.File, key: str, path: Path) -> np.ndarray:
    node = f[key]
    if not isinstance(node, h5py.Dataset):
        raise DataContractError(f"{path}: key {key!r} must be a data set, got a {type(node).__name__}")
    if h5py.check_string_dtype(node.dtype) is not None:  # HDF5 strings (IDs) come back as str
        return np.asarray(node.asstr()[()], dtype=object)
    return np.asarray(node[()])


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with reading(path, ".npz file"), np.load(path, allow_pickle=False) as z:
        raw = {}
        for key in z.files:
            name = key
            for group in GROUPS:
                if key.startswith(group + "_"):
                    name = f"{group}/{key[len(group) + 1 :]}"
            raw[name] = np.asarray(z[key])
    return raw, {}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def validate_arrays(
    raw: dict[str, np.ndarray], attrs: dict[str, Any], path: Path, require_labels: bool
) -> Dataset:
    """Checks raw arrays against the contract; the Dataset, or DataContractError naming the key."""
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise DataContractError(f"{path}: missing key {key!r} (found: {sorted(raw) or 'none'})")
    if require_labels and "log_mass" not in raw:
        also = (" ('reference/log_mass' is a catalogue's mass, kept for comparison, never a "
                "training label)" if "reference/log_mass" in raw else "")
        raise DataContractError(f"{path}: missing key 'log_mass', which training needs{also}")

    images = raw["images"]
    n = check_image_shape(images.shape, path)
    images = as_float32(images, "images", path)
    negative = int(np.count_nonzero(images < 0))
    if negative:
        raise DataContractError(
            f"{path}: key 'images' must hold counts >= 0, but {negative} values are negative"
        )

    vectors: dict[str, np.ndarray] = {}
    for key in [k for k in raw if k != "images"]:
        arr = raw[key]
        if arr.ndim != 1:
            raise DataContractError(f"{path}: key {key!r} must have shape (N,), got {arr.shape}")
        if arr.shape[0] != n:
            raise DataContractError(
                f"{path}: key {key!r} has {arr.shape[0]} values but 'images' has {n} clusters"
            )
        if key == ID_KEY:
            vectors[key] = _ids(arr, path)
            continue
        _check_real(arr, key, path)
        vectors[key] = arr

    redshift = as_float32(vectors["redshift"], "redshift", path)
    bad = np.flatnonzero(redshift <= 0)
    if bad.size:
        raise DataContractError(
            f"redshift must be > 0: {path} key 'redshift' has {bad.size} values <= 0 "
            f"(first at index {bad[0]})"
        )
    bad = np.flatnonzero(redshift > Z_MAX)
    if bad.size:
        raise DataContractError(
            f"redshift must be <= {Z_MAX:g}: {path} key 'redshift' has {bad.size} values above "
            f"(first at index {bad[0]}: {redshift[bad[0]]:g})"
        )
    log_mass = vectors.get("log_mass")
    if log_mass is not None:
        log_mass = as_float32(log_mass, "log_mass", path)

    exposure = vectors.get(EXPOSURE_KEY)
    if exposure is not None:
        exposure = as_float32(exposure, EXPOSURE_KEY, path)
        bad = np.flatnonzero(exposure <= 0)
        if bad.size:
            raise DataContractError(
                f"exposure must be > 0 s: {path} key '{EXPOSURE_KEY}' has {bad.size} values <= 0 "
                f"(first at index {bad[0]})"
            )
    # A catalogue may lack a value for some clusters: NaN there is allowed, and not compared.
    reference = {k[len(REFERENCE_PREFIX) :]: as_float32(v, k, path, allow_nan=True)
                 for k, v in vectors.items() if k.startswith(REFERENCE_PREFIX)}

    truth = {k[len("truth/") :]: v for k, v in vectors.items() if k.startswith("truth/")}
    return Dataset(images, redshift, log_mass, truth, attrs, path, exposure, vectors.get(ID_KEY),
                   reference)


def _ids(arr: np.ndarray, path: Path) -> np.ndarray:
    """Catalogue IDs as int64, or as str (HDF5 strings; bytes are decoded as UTF-8)."""
    ids = None
    if np.issubdtype(arr.dtype, np.integer):
        ids = arr.astype(np.int64)
    elif arr.dtype.kind in "OSU":
        try:
            ids = np.array([v.decode() if isinstance(v, bytes) else v for v in arr.tolist()], dtype=object)
        except UnicodeDecodeError:
            raise DataContractError(f"{path}: key '{ID_KEY}' holds strings that are not UTF-8") from None
    if ids is None or (ids.dtype == object and not all(isinstance(v, str) for v in ids)):
        raise DataContractError(
            f"{path}: key '{ID_KEY}' must hold integers or strings, got dtype {arr.dtype}")
    twice = repeated(ids)
    if twice:
        raise DataContractError(f"{path}: key '{ID_KEY}' gives {describe_repeated(twice)}; each "
                                "cluster's ID must be its own")
    return ids


def repeated(ids: np.ndarray) -> dict[object, list[int]]:
    """The IDs held by more than one row, each with its rows (counted from 1)."""
    rows: dict[object, list[int]] = {}
    for row, value in enumerate(ids.tolist(), start=1):
        rows.setdefault(value, []).append(row)
    return {k: v for k, v in rows.items() if len(v) > 1}


def describe_repeated(twice: dict[object, list[int]]) -> str:
    """'2 IDs to more than one row: 7 (rows 3, 9), ...' for a message of one line."""
    shown = ", ".join(f"{k!r} (rows {', '.join(map(str, rows[:3]))})" for k, rows in list(twice.items())[:3])
    more = f" and {len(twice) - 3} more" if len(twice) > 3 else ""
    return f"{len(twice)} ID(s) to more than one row: {shown}{more}"


def check_image_shape(shape: tuple[int, ...], path: Path) -> int:
    """The number of clusters of an `images` array of `shape`, or DataContractError unless it
    is (N, H, W, C) with N, H, W and C all at least 1."""
    if len(shape) != 4:
        raise DataContractError(
            f"{path}: key 'images' must have rank 4 (N, H, W, C), got shape {tuple(shape)}"
        )
    if shape[0] == 0:
        raise DataContractError(f"{path}: key 'images' holds no clusters")
    if min(shape[1:]) < 1:
        raise DataContractError(
            f"{path}: key 'images' must have at least 1 pixel and 1 channel (H, W, C >= 1), got "
            f"shape {tuple(shape)}"
        )
    return int(shape[0])


def _check_real(arr: np.ndarray, key: str, path: Path) -> None:
    """Raises DataContractError unless `arr` holds real numbers (integers or floats, not bool,
    complex, strings or records)."""
    if arr.dtype.kind not in "iuf":
        raise DataContractError(
            f"{path}: key {key!r} must hold real numbers (integers or floats), got dtype "
            f"{arr.dtype}"
        )


def as_float32(arr: np.ndarray, key: str, path: Path, *, allow_nan: bool = False,
               first: int = 0) -> np.ndarray:
    """`arr` (N, ...) as float32, refused unless it holds real numbers that are finite (NaN
    allowed with `allow_nan`) and within float32's range; `first` is the index of arr[0] in the
    file, for the message."""
    _check_real(arr, key, path)
    if arr.dtype.kind == "f":  # integers are finite, and none float32 cannot hold
        rows = arr.reshape(arr.shape[0], -1)
        bad = np.isinf(rows) if allow_nan else ~np.isfinite(rows)
        _refuse_rows(bad, key, path, first, "infinite values" if allow_nan else
                     "NaN or infinite values")
        if arr.dtype.itemsize > 4:
            limit = float(np.finfo(np.float32).max)
            _refuse_rows(np.abs(rows) > limit, key, path, first,
                         f"values beyond float32's range (+-{limit:.3g})")
    return arr.astype(np.float32, copy=False)


def _refuse_rows(bad: np.ndarray, key: str, path: Path, first: int, what: str) -> None:
    rows = np.flatnonzero(bad.any(axis=1))
    if rows.size:
        raise DataContractError(
            f"{path}: key {key!r} has {what} in {rows.size} clusters (first at index "
            f"{first + rows[0]})"
        )
