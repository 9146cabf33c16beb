"""`hpo promote`: score a study's best trials on the untouched test split and register the winner.

    hpo promote quickstart --model xray-cluster-mass [--tta]

The winner (lowest test residual std among the top_k trials by validation value) becomes a new
version, or is found again if its run is registered already, carrying its test metrics as tags
(test_* or, with test-time averaging over the 8 flips and rotations, test_tta_*), a description
and lineage tags (study, trial, data fingerprint). The alias `champion` moves only when the
winner beats the current champion scored the same way on the same test split; running it twice
changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from hpo.config.tree import RunConfig
from hpo.data.contract import Dataset
from hpo.data.lazy import H5Source
from hpo.data.lazy import open_dataset
from hpo.errors import HpoError
from hpo.model.metrics import residual_metrics
from hpo.objective.keys import CONFIG_KEY
from hpo.objective.keys import MLFLOW_RUN_ID_KEY
from hpo.objective.keys import MODEL_URI_KEY
from hpo.registry import models
from hpo.study.create import TRACKING_URI_KEY
from hpo.study.create import load_study
from hpo.study.storage import make_storage
from hpo.tracking.runs import Tracker
from hpo.training.loop import prepare

ALIAS = "champion"


@dataclass(frozen=True)
class PromoteResult:
    """What promote did: the version it registered or found, its test metrics, and the alias."""

    model_name: str
    version: str
    trial: int
    test_metrics: dict[str, float]
    champion_moved: bool
    message: str


def promote(
    study_name: str,
    model_name: str,
    *,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    top_k: int = 3,
    tta: bool = False,
) -> PromoteResult:
    """Re-evaluates the top_k COMPLETE trials on the test split; registers and maybe crowns the best.

    Args:
        study_name: a study with COMPLETE trials that logged a model.
        model_name: the registered model, created if missing.
        storage_url: the Optuna storage (default HPO_STORAGE or sqlite:///hpo.db).
        tracking_uri: MLflow tracking (default: the study's).
        top_k: best trials by validation value to score on the test split.
        tta: score with test-time averaging over the 8 flips and right-angle rotations.

    Raises:
        HpoError: no trial to promote, or no test split.
        TrackingError: the tracking server refuses or is away.
    """
    study, space = load_study(make_storage(storage_url), study_name)
    tracker = Tracker(tracking_uri or study.user_attrs.get(TRACKING_URI_KEY))
    trials = sorted(
        (t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if MODEL_URI_KEY in t.user_attrs),
        key=lambda t: float(t.value or 0.0),  # COMPLETE trials have a value
    )[:top_k]
    if not trials:
        raise HpoError(f"study '{study_name}' has no complete trial with a logged model to promote")
    data_cfg = space.resolved_base().data
    dataset = open_dataset(data_cfg.path, max_in_memory_gb=data_cfg.max_in_memory_gb)

    scored = []
    for t in trials:
        cfg = RunConfig.model_validate(t.user_attrs[CONFIG_KEY])
        test = _test_split(cfg, dataset)
        scored.append((_score(t.user_attrs[MODEL_URI_KEY], test, tta, tracker.uri), t, test))
    metrics, best, test = min(scored, key=lambda s: s[0]["residual_std"])
    how = " with TTA" if tta else ""

    version = _register(tracker, model_name, best, metrics, study_name, dataset, tta, len(test))
    current = _champion(tracker, model_name)
    if current is not None and str(current.version) == version:
        return PromoteResult(model_name, version, best.number, metrics, False,
                             f"version {version} is already the {ALIAS}")
    if current is not None:
        champ = _score(f"models:/{model_name}@{ALIAS}", test, tta, tracker.uri)
        if champ["residual_std"] <= metrics["residual_std"]:
            return PromoteResult(
                model_name, version, best.number, metrics, False,
                f"{ALIAS} stays at version {current.version}: its test residual std{how} "
                f"{champ['residual_std']:.4f} is not worse than {metrics['residual_std']:.4f} on the same "
                f"{len(test)} test clusters",
            )
    tracker.client.set_registered_model_alias(model_name, ALIAS, version)
    return PromoteResult(model_name, version, best.number, metrics, True,
                         f"{ALIAS} -> version {version} (test residual std{how} {metrics['residual_std']:.4f})")


def _test_split(cfg: RunConfig, dataset: Dataset | H5Source) -> Dataset:
    ds, split = prepare(cfg, dataset)
    if len(split.test) == 0:
        raise HpoError("the study's data.test_fraction is 0: there is no held-out test split to promote on")
    return ds.subset(split.test)


def _score(uri: str, test: Dataset, tta: bool, tracking_uri: str) -> dict[str, float]:
    mu, sigma = models.predict_arrays(models.load(uri, tracking_uri), test.images, test.redshift, tta=tta)
    assert test.log_mass is not None  # prepare() keeps labelled data sets only
    return residual_metrics(mu, test.log_mass, sigma)


def _register(tracker: Tracker, name: str, trial: FrozenTrial, metrics: dict[str, float], study: str,
              ds: Dataset | H5Source, tta: bool, n_test: int) -> str:
    """The version of `trial`'s model, registered now or found again, with its test metrics as tags."""
    client = tracker.client
    run_id = trial.user_attrs[MLFLOW_RUN_ID_KEY]
    prefix = "test_tta_" if tta else "test_"
    metric_tags = {f"{prefix}{k}": f"{v:.6f}" for k, v in metrics.items()}
    try:
        client.create_registered_model(name, description="log10(M500/Msun) from eROSITA-like X-ray images")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    for mv in client.search_model_versions(f"name='{name}'"):
        if mv.run_id == run_id:  # registered already: promote is idempotent
            for key, value in metric_tags.items():  # a first --tta run adds its metrics
                if mv.tags.get(key) != value:
                    client.set_model_version_tag(name, mv.version, key, value)
            return str(mv.version)
    tags = {"hpo.study": study, "hpo.trial": str(trial.number), "hpo.data_sha256": ds.fingerprint()["sha256"],
            "hpo.test_clusters": str(n_test), **metric_tags}
    how = " with test-time averaging over 8 flips and rotations" if tta else ""
    source = trial.user_attrs[MODEL_URI_KEY]
    # A logged model (models:/<model_id>) must be named as such: `mlflow server` refuses the
    # source without it (a local store does not check).
    model_id = source.removeprefix("models:/") if source.startswith("models:/") else None
    mv = client.create_model_version(
        name,
        source=source,
        run_id=run_id,
        model_id=model_id,
        tags=tags,
        description=(f"Study '{study}', trial {trial.number}: validation residual std "
                     f"{trial.value:.4f} dex, test residual std{how} {metrics['residual_std']:.4f} dex "
                     f"(bias {metrics['bias']:+.4f}, outliers {metrics['outlier_frac']:.3f})."),
    )
    return str(mv.version)



def _champion(tracker: Tracker, name: str) -> ModelVersion | None:
    """The version the alias points at, or None (no alias, or no registered model yet)."""
    try:
        return tracker.client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


__all__ = ["PromoteResult", "promote"]
