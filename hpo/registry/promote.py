"""`hpo promote`: register a study's best trial, chosen on validation, scored once on test.

    hpo promote quickstart --model xray-cluster-mass [--tta] [--select-by val_rmse]

Selection: the top_k COMPLETE trials by the selection metric (the study's `study.metric`, or
--select-by) are scored again on their validation split, with --tta averaged over the 8 flips
and rotations, and the lowest wins. Nothing derived from the test split takes part.

Report: the winner alone is scored once on the test split. Its version carries those scores as
tags (test_* or test_tta_*), beside the data's floors and the cluster count, with lineage tags
(study, trial, data fingerprint, split settings).

Gate: alias `champion` moves to the winner only if the current champion shares the data
fingerprint and split settings (else promote refuses, saying what differs, unless --compare-on
names a file neither model trained on) and loses the paired comparison of gate.py by more than
min_gain. The comparison is recorded as hpo.gate.* tags of the new version.

The registry is written under a lock (lock.py): promotes run at once register one version, and
the alias never moves to a model that lost a comparison with the one it replaces.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from hpo.config.tree import DataConfig
from hpo.config.tree import RunConfig
from hpo.data.contract import Dataset
from hpo.data.contract import same_data
from hpo.data.lazy import H5Source
from hpo.data.lazy import open_dataset
from hpo.errors import HpoError
from hpo.keys import CONFIG_KEY
from hpo.keys import DATA_FINGERPRINT_KEY
from hpo.keys import METRIC
from hpo.keys import METRICS
from hpo.keys import MLFLOW_PARENT_RUN_KEY
from hpo.keys import MLFLOW_RUN_ID_KEY
from hpo.keys import MODEL_URI_KEY
from hpo.keys import VAL_METRICS_KEY
from hpo.model.metrics import residual_metrics
from hpo.registry import models
from hpo.registry.gate import compare
from hpo.registry.gate import Comparison
from hpo.registry.gate import DEFAULT_MIN_GAIN
from hpo.registry.lock import registry_lock
from hpo.registry.lock import SUFFIX as LOCK_SUFFIX
from hpo.store.storage import make_storage
from hpo.study.create import load_study
from hpo.study.create import stored_tracking_uri
from hpo.tracking.datasets import log_data_inputs
from hpo.tracking.datasets import version_tags
from hpo.tracking.runs import FLOOR_METRICS
from hpo.tracking.runs import Tracker
from hpo.training.loop import prepare

ALIAS = "champion"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SPLIT_KEYS = ("val_fraction", "test_fraction", "split_seed", "max_clusters")


@dataclass(frozen=True)
class PromoteResult:
    """What promote did: the version it registered or found, its test report, and the alias."""

    model_name: str
    version: str
    trial: int
    test_metrics: dict[str, float]
    champion_moved: bool
    message: str
    selected_by: str = METRIC
    val_value: float = float("nan")
    test_clusters: int = 0
    floors: dict[str, float] | None = None
    comparison: Comparison | None = None


@dataclass(frozen=True)
class _Candidate:
    trial: FrozenTrial
    uri: str
    cfg: RunConfig


def check_model_name(name: str) -> None:
    """Raises HpoError unless `name` can go into models:/NAME@alias URIs and registry filters."""
    if not NAME_PATTERN.match(name) or name.endswith(LOCK_SUFFIX):
        raise HpoError(
            f"model name {name!r}: use letters, digits, '.', '_' and '-' only, starting with a "
            "letter or digit (the name goes into models:/NAME@alias URIs and registry search "
            f"filters), not ending in '{LOCK_SUFFIX}'")


def promote(
    study_name: str,
    model_name: str,
    *,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    top_k: int = 3,
    tta: bool = False,
    select_by: str | None = None,
    min_gain: float = DEFAULT_MIN_GAIN,
    compare_on: str | Path | None = None,
) -> PromoteResult:
    """Chooses the best trial on validation, reports it on test, registers it, gates the alias.

    Args:
        study_name: a study with COMPLETE trials.
        model_name: the registered model, created if missing.
        storage_url: the Optuna storage (default HPO_STORAGE or sqlite:///hpo.db).
        tracking_uri: MLflow tracking (default: the study's).
        top_k: best trials by validation value scored again on validation (with --tta, by TTA).
        tta: score with test-time averaging over the 8 flips and right-angle rotations.
        select_by: val_residual_std, val_rmse or val_nll; default the study's metric.
        min_gain: the margin by which the challenger must beat the champion, in the metric's unit.
        compare_on: a labelled data file neither model trained on: the gate scores both on all
            its clusters instead of the test split (for a champion of other data or split).

    Raises:
        HpoError: no trial to promote, the winner logged no model or not its own, no test split,
            the data file changed since the study ran, or a champion that cannot be compared.
        TrackingError: the tracking server refuses or is away.
    """
    check_model_name(model_name)
    study, space = load_study(make_storage(storage_url), study_name)
    select_by = select_by or space.study.metric
    if select_by not in METRICS:
        raise HpoError(f"--select-by must be one of {', '.join(METRICS)}, got {select_by!r}")
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    tracker = Tracker(tracking_uri or stored_tracking_uri(study, instead=env_uri))
    data_cfg = space.resolved_base().data
    dataset = open_dataset(data_cfg.path, max_in_memory_gb=data_cfg.max_in_memory_gb)
    _check_same_data(study, dataset, data_cfg.path, tracker)
    holdout = _holdout(compare_on, dataset) if compare_on is not None else None

    winner, val_value = _select(study, space.study.metric, tracker, dataset, select_by, top_k, tta)
    test = _test_split(winner.cfg, dataset)
    ours = _predict(winner.uri, test, tta, tracker.uri)
    report = residual_metrics(ours[0], test.log_mass, ours[1])  # type: ignore[arg-type]
    floors = _floors(study, tracker)
    lineage = _lineage(dataset, winner.cfg.data)

    with registry_lock(tracker.client, model_name):
        current = _champion(tracker, model_name)
        run_id = winner.trial.user_attrs[MLFLOW_RUN_ID_KEY]
        if current is not None and holdout is None and current.run_id != run_id:
            _check_comparable(current, lineage, model_name, dataset.fingerprint())
        if current is not None and holdout is not None:
            trained_on = current.tags.get("hpo.data_sha256")
            if trained_on and same_data(trained_on, holdout.fingerprint()):
                raise HpoError(f"--compare-on {holdout.path}: {ALIAS} version {current.version} "
                               "trained on that file; give a file neither model trained on")
        version = _register(tracker, model_name, winner, select_by, val_value, report, study_name,
                            lineage, floors, tta, len(test), dataset)
        done = partial(PromoteResult, model_name, version, winner.trial.number, report,
                       selected_by=select_by, val_value=val_value, test_clusters=len(test),
                       floors=floors)
        if current is None:
            tracker.client.set_model_version_tag(model_name, version, "hpo.gate.verdict",
                                                 f"first {ALIAS}: nothing to compare with")
            tracker.client.set_registered_model_alias(model_name, ALIAS, version)
            return done(True, f"{ALIAS} -> version {version} (the first {ALIAS})")
        if str(current.version) == version:
            return done(False, f"version {version} is already the {ALIAS}")
        on, where = test, "test"
        if holdout is not None:
            on, where = holdout, f"{holdout.path} (fingerprint {holdout.fingerprint()['sha256']})"
            ours = _predict(winner.uri, holdout, tta, tracker.uri)
        theirs = _predict(f"models:/{model_name}/{current.version}", on, tta, tracker.uri)
        try:
            comparison = compare(
                METRICS[select_by], on.log_mass, ours, theirs,  # type: ignore[arg-type]
                min_gain=min_gain, champion_version=str(current.version), on=where)
        except ValueError as exc:
            raise HpoError(f"cannot compare with {ALIAS} version {current.version}: {exc}; "
                           "use --select-by val_rmse") from None
        for tag, value in comparison.tags().items():
            tracker.client.set_model_version_tag(model_name, version, tag, value)
        how = " with TTA" if tta else ""
        if not comparison.better:
            return done(False, f"{ALIAS} stays at version {current.version}{how}: "
                               f"{comparison.describe()}", comparison=comparison)
        tracker.client.set_registered_model_alias(model_name, ALIAS, version)
        return done(True, f"{ALIAS} -> version {version}{how}: {comparison.describe()}",
                    comparison=comparison)


def _select(study, study_metric: str, tracker: Tracker, dataset: Dataset | H5Source,
            select_by: str, top_k: int, tta: bool) -> tuple[_Candidate, float]:
    """The lowest validation `select_by` among the top_k trials, scored again on validation."""
    key = METRICS[select_by]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    values = [(_val_value(t, select_by, study_metric, tracker), t) for t in complete]
    ranked = sorted(((v, t) for v, t in values if v is not None), key=lambda vt: vt[0])
    if not ranked:
        raise HpoError(f"study '{study.study_name}' has no complete trial with a validation "
                       f"{select_by} to promote")
    best_value, best = ranked[0]
    if MODEL_URI_KEY not in best.user_attrs:
        raise HpoError(
            f"study '{study.study_name}': the best trial by {select_by}, trial {best.number} "
            f"({best_value:.4f}), logged no model, so there is nothing to promote")
    scored = []
    for _, t in ranked[:top_k]:
        if MODEL_URI_KEY not in t.user_attrs:
            continue
        cfg = RunConfig.model_validate(t.user_attrs[CONFIG_KEY])
        cand = _Candidate(t, _own_model(t, tracker), cfg)
        ds, split = prepare(cand.cfg, dataset)
        val = ds.subset(split.val)
        mu, sigma = _predict(cand.uri, val, tta, tracker.uri)
        metrics = residual_metrics(mu, val.log_mass, sigma)  # type: ignore[arg-type]
        if key not in metrics:
            raise HpoError(f"trial {t.number}'s model has no sigma head: it has no {select_by}; "
                           "use --select-by val_rmse")
        scored.append((metrics[key], t.number, cand))
    value, _, winner = min(scored, key=lambda s: (s[0], s[1]))
    return winner, float(value)


def _val_value(trial: FrozenTrial, select_by: str, study_metric: str,
               tracker: Tracker) -> float | None:
    """A COMPLETE trial's final validation `select_by`: its own record, else its MLflow run's."""
    key = METRICS[select_by]
    recorded = trial.user_attrs.get(VAL_METRICS_KEY) or {}
    if key in recorded:
        return float(recorded[key])
    if select_by == study_metric and trial.value is not None:
        return float(trial.value)
    run_id = trial.user_attrs.get(MLFLOW_RUN_ID_KEY)
    if not run_id:
        return None
    value = tracker.client.get_run(run_id).data.metrics.get(f"final_val_{key}")
    return None if value is None else float(value)


def _own_model(trial: FrozenTrial, tracker: Tracker) -> str:
    """The trial's model URI, if it names a model logged by the trial's own MLflow run.

    Raises:
        HpoError: it names anything else (another run's model, a file, a URL).
    """
    uri, run_id = str(trial.user_attrs[MODEL_URI_KEY]), trial.user_attrs.get(MLFLOW_RUN_ID_KEY)
    source_run = None
    if uri.startswith("models:/m-") and "/" not in uri.removeprefix("models:/"):
        try:
            logged = tracker.client.get_logged_model(uri.removeprefix("models:/"))
            source_run = logged.source_run_id
        except MlflowException:
            source_run = None
    elif uri.startswith("runs:/"):
        source_run = uri.removeprefix("runs:/").split("/", 1)[0]
    if not run_id or source_run != run_id:
        raise HpoError(
            f"trial {trial.number}'s model {uri} is not a model logged by the trial's own MLflow "
            f"run ({run_id or 'none recorded'}); promote loads only a trial's own model")
    return uri


def _check_same_data(study, dataset: Dataset | H5Source, path: Path, tracker: Tracker) -> None:
    recorded = study.user_attrs.get(DATA_FINGERPRINT_KEY)
    parent = study.user_attrs.get(MLFLOW_PARENT_RUN_KEY)
    if not recorded and parent:  # a study launched before the fingerprint was a study attribute
        recorded = tracker.client.get_run(parent).data.params.get("data.fingerprint.sha256")
    found = dataset.fingerprint()
    now = found["sha256"]
    if recorded and not same_data(recorded, found):
        raise HpoError(
            f"{path}: the data file changed since study '{study.study_name}' ran (fingerprint "
            f"{recorded} then, {now} now): its test split is not the study's held-out clusters; "
            "restore the file the study trained on")


def _holdout(path: str | Path, dataset: Dataset | H5Source) -> Dataset:
    from hpo.data.contract import load_dataset

    hold = load_dataset(path)
    if hold.fingerprint()["sha256"] == dataset.fingerprint()["sha256"]:
        raise HpoError(f"--compare-on {path}: it is the study's own data file; the models trained "
                       "on it; give a file neither model trained on")
    if hold.image_shape != dataset.image_shape:
        raise HpoError(f"--compare-on {path}: its images are {hold.image_shape}, the study's "
                       f"{dataset.image_shape}")
    return hold


def _test_split(cfg: RunConfig, dataset: Dataset | H5Source) -> Dataset:
    ds, split = prepare(cfg, dataset)
    if len(split.test) == 0:
        raise HpoError("the study's data.test_fraction is 0: there is no held-out test split to "
                       "promote on")
    return ds.subset(split.test)


def _predict(uri: str, ds: Dataset, tta: bool,
             tracking_uri: str) -> tuple[np.ndarray, np.ndarray | None]:
    model = models.load(uri, tracking_uri)
    if ds.exposure_s is None and models.takes_exposure(model):
        raise HpoError(f"{ds.path}: missing key 'exposure_s', which model {uri} needs (it was "
                       "trained with model.use_exposure)")
    return models.predict_arrays(model, ds.images, ds.redshift, tta=tta, exposure=ds.exposure_s)


def _lineage(dataset: Dataset | H5Source, data: DataConfig) -> dict[str, str]:
    """What must match for two models' test splits to be the same held-out clusters."""
    fp = dataset.fingerprint()
    return {"hpo.data_sha256": fp["sha256"], "hpo.data_clusters": str(fp["n"]),
            **{f"hpo.split.{k}": str(getattr(data, k)) for k in SPLIT_KEYS}}


def _check_comparable(current: ModelVersion, lineage: dict[str, str], name: str,
                      fingerprint: dict[str, Any]) -> None:
    def same(key: str, ours: str) -> bool:
        theirs = current.tags.get(key)
        if key == "hpo.data_sha256" and theirs:  # a version registered by an earlier release
            return same_data(theirs, fingerprint)
        return theirs == ours

    differs = [f"{k.removeprefix('hpo.')} {current.tags.get(k, 'unrecorded')} vs {v}"
               for k, v in lineage.items() if not same(k, v)]
    if differs:
        raise HpoError(
            f"{ALIAS} version {current.version} of '{name}' cannot be compared on this study's "
            f"test split (champion vs this study: {'; '.join(differs)}): some of these test "
            "clusters may be in its training set; compare both on a file neither trained on with "
            "--compare-on FILE, or promote under another --model name")


def _floors(study, tracker: Tracker) -> dict[str, float]:
    parent = study.user_attrs.get(MLFLOW_PARENT_RUN_KEY)
    if not parent:
        return {}
    metrics = tracker.client.get_run(parent).data.metrics
    return {k: float(metrics[k]) for k in FLOOR_METRICS if k in metrics}


def _register(tracker: Tracker, name: str, winner: _Candidate, select_by: str, val_value: float,
              report: dict[str, float], study: str, lineage: dict[str, str],
              floors: dict[str, float], tta: bool, n_test: int,
              dataset: Dataset | H5Source) -> str:
    """The winner's version, registered now or found again, with its test report as tags."""
    client = tracker.client
    trial = winner.trial
    run_id = trial.user_attrs[MLFLOW_RUN_ID_KEY]
    prefix = "test_tta_" if tta else "test_"
    report_tags = {f"{prefix}{k}": f"{v:.6f}" for k, v in report.items()}
    report_tags.update({f"hpo.floor.{k}": f"{v:.6f}" for k, v in floors.items()})
    try:
        client.create_registered_model(
            name, description="log10(M500/Msun) from eROSITA-like X-ray images")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    for mv in client.search_model_versions(f"name='{name}'"):
        if mv.run_id == run_id:  # registered already: promote is idempotent
            # A first --tta run adds its metrics; a version of an older promote, its lineage.
            for key, value in {**lineage, **report_tags}.items():
                if mv.tags.get(key) != value:
                    client.set_model_version_tag(name, mv.version, key, value)
            return str(mv.version)
    # The run gets its test split as a dataset input too; the version names all three splits.
    splits = log_data_inputs(tracker, run_id, winner.cfg, dataset, ("train", "validation", "test"))
    tags = {"hpo.study": study, "hpo.trial": str(trial.number), "hpo.selected_by": select_by,
            f"hpo.{select_by}": f"{val_value:.6f}", "hpo.test_clusters": str(n_test), **lineage,
            **version_tags(splits), **report_tags}
    how = " with test-time averaging over 8 flips and rotations" if tta else ""
    floor_text = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in floors.items())
    # An mlflow server checks that a models:/m-... source is the model named by model_id.
    model_id = winner.uri.removeprefix("models:/") if winner.uri.startswith("models:/m-") else None
    mv = client.create_model_version(
        name,
        source=winner.uri,
        run_id=run_id,
        model_id=model_id,
        tags=tags,
        description=(
            f"Study '{study}', trial {trial.number}, chosen by validation {select_by} "
            f"{val_value:.4f}. Scored once on the {n_test} test clusters{how}: residual std "
            f"{report['residual_std']:.4f} dex, rmse {report['rmse']:.4f}, bias "
            f"{report['bias']:+.4f}, outliers {report['outlier_frac']:.3f}"
            + (f" (floors: {floor_text} dex)." if floors else ".")),
    )
    return str(mv.version)


def _champion(tracker: Tracker, name: str) -> ModelVersion | None:
    """The version the alias points at, or None (no alias, or no registered model yet)."""
    try:
        return tracker.client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


__all__ = ["PromoteResult", "check_model_name", "promote"]
