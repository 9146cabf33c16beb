"""`hpo promote`: score a study's best trials on the untouched test split and register the winner.

    hpo promote quickstart --model xray-cluster-mass

The alias `champion` moves only when the winner beats the current champion on the same test
split; running it twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException
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
) -> PromoteResult:
    """Re-evaluates the top_k COMPLETE trials on the test split; registers and maybe crowns the best."""
    study, space = load_study(make_storage(storage_url), study_name)
    tracker = Tracker(tracking_uri or study.user_attrs.get(TRACKING_URI_KEY))
    trials = sorted(
        (t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if MODEL_URI_KEY in t.user_attrs),
        key=lambda t: t.value,
    )[:top_k]
    if not trials:
        raise HpoError(f"study '{study_name}' has no complete trial with a logged model to promote")
    data_cfg = space.resolved_base().data
    dataset = open_dataset(data_cfg.path, max_in_memory_gb=data_cfg.max_in_memory_gb)

    scored = []
    for t in trials:
        cfg = RunConfig.model_validate(t.user_attrs[CONFIG_KEY])
        test = _test_split(cfg, dataset)
        scored.append((_score(t.user_attrs[MODEL_URI_KEY], test), t, test))
    metrics, best, test = min(scored, key=lambda s: s[0]["residual_std"])

    version = _register(tracker, model_name, best, metrics, study_name, dataset)
    current = _champion(tracker, model_name)
    if current is not None and str(current.version) == version:
        return PromoteResult(model_name, version, best.number, metrics, False,
                             f"version {version} is already the {ALIAS}")
    if current is not None:
        champ = _score(f"models:/{model_name}@{ALIAS}", test)
        if champ["residual_std"] <= metrics["residual_std"]:
            return PromoteResult(
                model_name, version, best.number, metrics, False,
                f"{ALIAS} stays at version {current.version}: its test residual std "
                f"{champ['residual_std']:.4f} is not worse than {metrics['residual_std']:.4f}",
            )
    tracker.client.set_registered_model_alias(model_name, ALIAS, version)
    return PromoteResult(model_name, version, best.number, metrics, True,
                         f"{ALIAS} -> version {version} (test residual std {metrics['residual_std']:.4f})")


def _test_split(cfg: RunConfig, dataset: Dataset | H5Source) -> Dataset:
    ds, split = prepare(cfg, dataset)
    if len(split.test) == 0:
        raise HpoError("the study's data.test_fraction is 0: there is no held-out test split to promote on")
    return ds.subset(split.test)


def _score(uri: str, test: Dataset) -> dict[str, float]:
    mu, sigma = models.predict_arrays(models.load(uri), test.images, test.redshift)
    assert test.log_mass is not None
    return residual_metrics(mu, test.log_mass, sigma)


def _register(tracker: Tracker, name: str, trial, metrics: dict[str, float], study: str, ds: Dataset | H5Source) -> str:  # noqa: ANN001
    client = tracker.client
    run_id = trial.user_attrs[MLFLOW_RUN_ID_KEY]
    try:
        client.create_registered_model(name, description="log10(M500/Msun) from eROSITA-like X-ray images")
    except MlflowException:
        pass  # exists
    for mv in client.search_model_versions(f"name='{name}'"):
        if mv.run_id == run_id:
            return str(mv.version)  # this trial is registered already: promote is idempotent
    tags = {"hpo.study": study, "hpo.trial": str(trial.number), "hpo.data_sha256": ds.fingerprint()["sha256"]}
    tags.update({f"test_{k}": f"{v:.6f}" for k, v in metrics.items()})
    mv = client.create_model_version(
        name,
        source=trial.user_attrs[MODEL_URI_KEY],
        run_id=run_id,
        tags=tags,
        description=(f"Study '{study}', trial {trial.number}: validation residual std "
                     f"{trial.value:.4f} dex, test residual std {metrics['residual_std']:.4f} dex."),
    )
    return str(mv.version)


def _champion(tracker: Tracker, name: str):  # noqa: ANN202
    try:
        return tracker.client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


__all__ = ["PromoteResult", "promote"]
