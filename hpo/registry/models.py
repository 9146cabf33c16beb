"""Model references (NAME@alias, NAME/version, models:/..., runs:/..., a folder) as pyfunc models.

    hpo pull xray-cluster-mass@champion -o champion/
    hpo predict models:/xray-cluster-mass/3 data/new.h5 -o predictions.csv
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
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
    mlflow.set_tracking_uri(checked_uri(tracking_uri) if tracking_uri else default_tracking_uri())
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


def pull(ref: str, out_dir: str | Path, tracking_uri: str | None = None) -> Path:
    """Downloads the model behind `ref` into `out_dir` (out_dir/MLmodel; pyfunc.load_model takes it).

    `out_dir` must be new, empty, or hold an earlier pull (its MANIFEST lists what that pull
    wrote): then only those files are replaced, and the folder's other files are left alone.

    Raises:
        HpoError: `out_dir` is a file, or a folder with other files, or one the model would
            overwrite.
        TrackingError: as for `load`, or the download holds no MLmodel.
    """
    uri = model_uri(ref)
    tracking_uri = checked_uri(tracking_uri) if tracking_uri else default_tracking_uri()
    out = Path(out_dir)
    previous = _earlier_pull(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
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
            items = sorted(found[0].iterdir())
            clash = [i.name for i in items if (out / i.name).exists() and i.name not in previous]
            if clash:
                raise HpoError(f"-o {out}: the model would overwrite {', '.join(clash[:3])}, which no "
                               "earlier hpo pull wrote; give a new or empty folder")
            for name in previous:  # only what the earlier pull wrote
                target = out / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
            for item in items:
                shutil.move(str(item), out / item.name)
            manifest = {"uri": uri, "tracking_uri": redact(tracking_uri), "files": [i.name for i in items]}
            (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    return out


def _earlier_pull(out: Path) -> list[str]:
    """The names an earlier pull wrote into `out` ([] for a folder that is new or empty).

    Raises:
        HpoError: `out` is a file, or a non-empty folder without a pull's manifest.
    """
    if not out.exists():
        return []
    if not out.is_dir():
        raise HpoError(f"-o {out}: is a file, not a folder; give a new or empty folder")
    others = sorted(p.name for p in out.iterdir())
    if not others:
        return []
    try:
        files = json.loads((out / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
        raise HpoError(f"-o {out}: the folder holds files ({shown}) and no earlier hpo pull "
                       f"(no {MANIFEST}); give a new or empty folder") from None
    # Plain names only: a hand-edited manifest must not reach outside the folder.
    return [f for f in files if isinstance(f, str) and f not in ("", ".", "..", MANIFEST) and Path(f).name == f]


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
