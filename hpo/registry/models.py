"""Model references (NAME@alias, NAME/version, models:/..., runs:/..., a folder) as pyfunc models.

    hpo pull xray-cluster-mass@champion -o champion/
    hpo predict models:/xray-cluster-mass/3 data/new.h5 -o predictions.csv
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from pathlib import PurePosixPath
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException

from hpo.data.contract import EXPOSURE_KEY
from hpo.errors import DataContractError
from hpo.errors import first_line
from hpo.errors import HpoError
from hpo.errors import TrackingError
from hpo.outputs import make_folders
from hpo.outputs import remove_empty_folders
from hpo.outputs import sqlite_file
from hpo.redact import redact
from hpo.tracking.retry import auth_error
from hpo.tracking.runs import checked_uri
from hpo.tracking.runs import default_tracking_uri

MANIFEST = ".hpo-pull.json"  # what `hpo pull` wrote into its folder, so that a later pull replaces only that
REF_FORMS = ("NAME@alias, NAME/version, models:/NAME@alias, models:/NAME/version, "
             "runs:/RUN_ID/model or a pulled folder")


def model_uri(ref: str) -> str:
    """An MLflow URI for `ref`: NAME@alias -> models:/NAME@alias, NAME/3 -> models:/NAME/3.

    models:/..., runs:/..., other URIs and existing local folders pass through unchanged.

    Raises:
        TrackingError: `ref` has none of the accepted forms.
    """
    if ref.startswith(("models:/", "runs:/", "file:", "s3:", "gs:", "http")) or Path(ref).exists():
        return ref
    if "@" in ref and ref.count("@") == 1 and all(ref.split("@")):
        return f"models:/{ref}"
    name, _, version = ref.rpartition("/")
    if name and version.isdigit():
        return f"models:/{ref}"
    raise TrackingError(f"'{ref}' is not a model reference, nor an existing folder; use {REF_FORMS}")


def load(ref: str, tracking_uri: str | None = None) -> Any:
    """The pyfunc model behind `ref`, from `tracking_uri` (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db).

    Raises:
        TrackingError: the reference resolves to nothing, or the server refuses or is away.
    """
    uri = model_uri(ref)
    tracking_uri = checked_uri(tracking_uri) if tracking_uri else default_tracking_uri()
    _require_local_store(uri, tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    pyfunc_log.addFilter(_other_python_version)
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as exc:
        raise _error("load", uri, exc) from None
    finally:
        pyfunc_log.removeFilter(_other_python_version)


def _other_python_version(record: logging.LogRecord) -> bool:
    """False for MLflow's warning that a model was saved under another Python: a model of this
    package is Python source and a .keras file, and neither depends on the Python version."""
    return not str(record.msg).startswith("The version of Python that the model was saved in")


def pull(ref: str, out_dir: str | Path, tracking_uri: str | None = None, *, overwrite: bool = False) -> Path:
    """Downloads the model behind `ref` into `out_dir` (out_dir/MLmodel; pyfunc.load_model takes it).

    `out_dir` must be new, empty, or (with `overwrite`) hold an earlier pull: its MANIFEST lists
    every file that pull wrote and every folder it created. Then exactly those files are
    replaced, file by file, and a folder of that pull is removed only once empty; a file of the
    user's anywhere in the folder, inside the model's subfolders too, stays (and nothing is
    followed through a link). The swap is all or nothing: on any failure the earlier pull is
    put back as it was, and a folder this call created is removed.

    An older manifest lists top-level names only, so a folder it lists (artifacts/, code/)
    holds that pull's files and maybe the user's, indistinguishably: then only the files the
    new model writes at the same paths are replaced, nothing else in such a folder is removed
    (a file the older model had and the new one lacks stays), and the manifest written then
    lists files one by one.

    Raises:
        HpoError: `out_dir` is a file, or a folder with other files, or one the model would
            overwrite, or one with an earlier pull and no `overwrite`; or it cannot be created
            or written to.
        TrackingError: as for `load`, or the download holds no MLmodel, or the local store
            named by the tracking URI does not exist.
    """
    uri = model_uri(ref)
    tracking_uri = checked_uri(tracking_uri) if tracking_uri else default_tracking_uri()
    out = Path(out_dir)
    previous = _earlier_pull(out)
    if (previous.files or previous.folders) and not overwrite:
        raise HpoError(f"-o {out} holds an earlier hpo pull; give --overwrite to replace it (only the "
                       f"files that pull wrote, listed in {MANIFEST}), or another -o")
    _require_local_store(uri, tracking_uri)
    created = make_folders(out, option="-o")
    mlflow.set_tracking_uri(tracking_uri)  # models:/ URIs resolve through the registry URI
    try:
        with tempfile.TemporaryDirectory(dir=out, prefix=".hpo-pull-") as tmp:
            try:
                path = Path(mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri))
            except (MlflowException, OSError) as exc:
                raise _error("download", uri, exc) from None
            # runs:/RUN/model lands in a `model` subfolder, models:/ URIs at the top: flatten to out/.
            found = [path] if (path / "MLmodel").exists() else [p.parent for p in path.rglob("MLmodel")]
            if not found:
                raise TrackingError(f"{uri} holds no MLmodel file: it is not a model; use {REF_FORMS}")
            _swap(out, found[0], previous, Path(tmp), {"uri": uri, "tracking_uri": redact(tracking_uri)})
    except BaseException as exc:
        remove_empty_folders(created)
        if isinstance(exc, OSError):
            raise HpoError(f"-o {out}: cannot write the model there ({exc.strerror or first_line(exc)}); "
                           "the folder is as it was") from None
        raise
    return out


def _swap(out: Path, model: Path, previous: _Pull, tmp: Path, about: dict[str, str]) -> None:
    """Moves the downloaded `model` folder's files into `out` in place of the earlier pull's."""
    new_files = sorted(p.relative_to(model).as_posix() for p in model.rglob("*")
                       if p.is_file() or p.is_symlink())
    replaced = [f for f in previous.files if f not in new_files] + [f for f in new_files if previous.owns(f)]
    clash = [f for f in new_files if _occupied(out, f, previous)]
    if clash:
        raise HpoError(f"-o {out}: the model would overwrite {', '.join(clash[:3])}, which no "
                       "earlier hpo pull wrote; give a new or empty folder")
    aside = tmp / ".replaced"
    moved: list[str] = []  # files of the earlier pull, moved aside
    placed: list[str] = []  # files of this one, moved in
    made: list[Path] = []  # folders made for them
    manifest = out / MANIFEST
    old_manifest = manifest.read_bytes() if manifest.is_file() else None
    try:
        for f in replaced:
            if not _within(out, f):  # a folder on the way is a link: what it holds is not the pull's
                continue
            if (out / f).is_file() or (out / f).is_symlink():  # a folder the user made there stays
                (aside / f).parent.mkdir(parents=True, exist_ok=True)
                os.replace(out / f, aside / f)
                moved.append(f)
        for f in new_files:
            made += make_folders((out / f).parent, option="-o")
            os.replace(model / f, out / f)
            placed.append(f)
        folders = sorted({p.as_posix() for f in new_files for p in PurePosixPath(f).parents
                          if p.name and (Path(os.path.abspath(out / p)) in made
                                         or p.as_posix() in previous.folders)})
        text = json.dumps({**about, "files": new_files, "folders": folders}, indent=1) + "\n"
        part = tmp / MANIFEST
        part.write_text(text)
        os.replace(part, manifest)
    except BaseException:
        for f in reversed(placed):
            (out / f).unlink(missing_ok=True)
        remove_empty_folders(made)
        for f in moved:
            os.replace(aside / f, out / f)
        if old_manifest is not None:
            manifest.write_bytes(old_manifest)
        raise
    # The earlier pull's folders that are empty now: removed, deepest first.
    remove_empty_folders([out / d for d in sorted(previous.folders, key=lambda d: d.count("/"))
                          if _within(out, d) and not (out / d).is_symlink()])


def _within(out: Path, rel: str) -> bool:
    """Whether `rel`'s folders inside `out` are real folders of it, no link leading elsewhere."""
    return not any((out / parent).is_symlink() for parent in PurePosixPath(rel).parents if parent.name)


def _occupied(out: Path, rel: str, previous: _Pull) -> bool:
    """Whether something not the earlier pull's is at `rel` in `out` (a folder always is), or a
    file where its folders go."""
    if not _within(out, rel) or ((out / rel).is_dir() and not (out / rel).is_symlink()):
        return True
    if os.path.lexists(out / rel):
        return not previous.owns(rel)
    for parent in PurePosixPath(rel).parents:
        if parent.name and os.path.lexists(out / parent) and not (out / parent).is_dir():
            return not previous.owns(parent.as_posix())
    return False


@dataclass(frozen=True)
class _Pull:
    """What an earlier pull wrote into a folder: its files and the folders it created (paths
    relative to the folder); `folders_of_old` are the folders an older manifest listed by name."""

    files: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    folders_of_old: tuple[str, ...] = ()

    def owns(self, rel: str) -> bool:
        """Whether the earlier pull wrote `rel` (for an older manifest: it lies in a folder it listed)."""
        return rel in self.files or any(rel.startswith(d + "/") for d in self.folders_of_old)


def _earlier_pull(out: Path) -> _Pull:
    """What an earlier pull wrote into `out` (nothing for a folder that is new or empty).

    Raises:
        HpoError: `out` is a file, or a non-empty folder without a pull's manifest.
    """
    if not out.exists():
        if os.path.lexists(out):
            raise HpoError(f"-o {out}: is a broken link; give a new or empty folder")
        return _Pull()
    if not out.is_dir():
        raise HpoError(f"-o {out}: is a file, not a folder; give a new or empty folder")
    others = sorted(p.name for p in out.iterdir())
    if not others:
        return _Pull()
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        listed, folders = manifest["files"], manifest.get("folders")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
        raise HpoError(f"-o {out}: the folder holds files ({shown}) and no earlier hpo pull "
                       f"(no {MANIFEST}); give a new or empty folder") from None
    # Relative paths inside the folder only: a hand-edited manifest must not reach outside it.
    files = tuple(f for f in listed if _inside(f)) if isinstance(listed, list) else ()
    if isinstance(folders, list):
        return _Pull(files, tuple(d for d in folders if _inside(d)))
    # An older manifest: top-level names, files and folders alike.
    names = [f for f in files if "/" not in f]
    old_folders = tuple(f for f in names if (out / f).is_dir() and not (out / f).is_symlink())
    return _Pull(tuple(f for f in names if f not in old_folders), old_folders, old_folders)


def _inside(rel: object) -> bool:
    """Whether a manifest entry is a plain relative path inside the folder (not the manifest)."""
    if not isinstance(rel, str) or not rel or "\\" in rel:
        return False
    parts = PurePosixPath(rel).parts
    return (not PurePosixPath(rel).is_absolute() and ".." not in parts and "." not in rel.split("/")
            and rel not in (MANIFEST,) and not parts[0].startswith(".hpo-pull-") and "" not in rel.split("/"))


def _require_local_store(uri: str, tracking_uri: str) -> None:
    """TrackingError, before MLflow creates it empty, where `tracking_uri` is a SQLite file that
    does not exist and `uri` needs the store (models:/, runs:/)."""
    path = sqlite_file(tracking_uri)
    if uri.startswith(("models:/", "runs:/")) and path is not None and not Path(path).exists():
        raise TrackingError(
            f"no MLflow store at {redact(tracking_uri)}: {path} does not exist (in {Path.cwd()}); "
            "give --tracking-uri or MLFLOW_TRACKING_URI of the store that holds the model, or run "
            "where that file is")


def predict_arrays(
    model: Any, images: np.ndarray, redshift: np.ndarray, chunk: int = 2048, *, tta: bool = False,
    exposure: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """log_mass and sigma (or None) for every cluster, in chunks to bound memory.

    Args:
        model: a pyfunc model of this package (see hpo.inference.pyfunc).
        images: (N, H, W, C) counts.
        redshift: (N,).
        chunk: clusters per predict call.
        tta: average over the 8 flips and right-angle rotations of each image (log_mass as the
            mean, sigma as the root mean square), as hpo.training.evaluate.predict does.
        exposure: (N,) exposure_s, s, or None; passed on to a model that takes it.

    Raises:
        DataContractError: the model takes the exposure and `exposure` is None.
    """
    with_exposure = takes_exposure(model)
    if exposure is None and with_exposure:
        raise DataContractError(f"missing key '{EXPOSURE_KEY}': this model was trained with "
                                "model.use_exposure and needs each cluster's exposure")
    from hpo.training.evaluate import combine_views  # Keras: loaded with the model anyway

    # float32, as the network computes: a model logged with an input schema refuses other dtypes.
    views = _dihedral_views if tta else (lambda x: [np.asarray(x, np.float32)])
    mus, sigmas = [], []
    for i in range(0, len(images), chunk):
        feed = {"redshift": np.asarray(redshift[i : i + chunk], np.float32)}
        if with_exposure:  # only then: MLflow warns of an input a model's schema does not name
            feed[EXPOSURE_KEY] = np.asarray(exposure[i : i + chunk], np.float32)
        frames = [model.predict({"images": v, **feed}) for v in views(images[i : i + chunk])]
        mu, sigma = combine_views([f["log_mass"].to_numpy() for f in frames],
                                  [f["sigma"].to_numpy() for f in frames] if "sigma" in frames[0] else None)
        mus.append(mu)
        if sigma is not None:
            sigmas.append(sigma)
    if not mus:
        return np.zeros(0), None
    return np.concatenate(mus), (np.concatenate(sigmas) if sigmas else None)


def takes_exposure(model: Any) -> bool:
    """Whether a pyfunc model of this package takes exposure_s (its metadata's input_names)."""
    return EXPOSURE_KEY in ((model.metadata.metadata or {}).get("input_names") or [])


def training_ranges(model: Any) -> dict[str, tuple[float, float]]:
    """The [min, max] of the training clusters the model's metadata records ({} if none)."""
    recorded = (model.metadata.metadata or {}).get("training_ranges") or {}
    return {k: (float(v[0]), float(v[1])) for k, v in recorded.items() if len(v) == 2}


def _dihedral_views(images: np.ndarray) -> list[np.ndarray]:
    from hpo.training.evaluate import dihedral_views

    return [np.ascontiguousarray(v, dtype=np.float32) for v in dihedral_views(images)]


def _error(action: str, uri: str, exc: BaseException) -> TrackingError:
    refused = auth_error(exc, mlflow.get_tracking_uri())
    if refused is not None:
        return refused
    where = redact(mlflow.get_tracking_uri())
    return TrackingError(f"cannot {action} model {uri} (tracking {where}): {first_line(exc)}{_next_step(uri, exc)}")


def _next_step(uri: str, exc: BaseException) -> str:
    """For a model that is not there, the command that makes one."""
    if getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST" and "not found" not in str(exc):
        return ""
    if uri.startswith("models:/"):
        name = uri.removeprefix("models:/").split("@")[0].rsplit("/", 1)[0]
        return f"; register one with: hpo promote STUDY --model {name}"
    if uri.startswith("runs:/"):
        return "; `hpo train` and every complete trial of `hpo launch` log a run's model"
    return ""
