"""Creates a study from a search space, or joins the existing one if the space is unchanged.

hpo launch search_spaces/quickstart.yaml --workers 0     # create or update, start nothing
"""

from __future__ import annotations

import json
from typing import Any

import optuna

from hpo.config.overrides import flatten
from hpo.config.space import enqueue_params
from hpo.config.space import parse_space
from hpo.config.space import SearchSpace
from hpo.errors import ConfigError
from hpo.errors import HpoError
from hpo.keys import SPACE_KEY
from hpo.keys import TRACKING_URI_KEY
from hpo.redact import MASK
from hpo.redact import redact
from hpo.study.pruners import make_pruner
from hpo.study.samplers import make_sampler

# How workers keep the study alive, not which trials it runs: a relaunch may change them.
OPERATIONAL_KEYS = {"study.heartbeat_s", "study.grace_s", "study.max_retry"}


def create_or_join(
    storage: optuna.storages.BaseStorage, space: SearchSpace
) -> tuple[optuna.Study, bool]:
    """The study named in `space`, and whether it was just created.

    Raises:
        ConfigError: a study of that name exists with a different space; says what changed.
    """
    name = space.study.name
    existing = {
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="minimize",
        sampler=make_sampler(space),
        pruner=make_pruner(space.study.pruner, space.source),
        load_if_exists=True,
    )
    if name in existing and SPACE_KEY in study.user_attrs:
        changed = space_changes(study.user_attrs[SPACE_KEY], space, f"study '{name}'")
        if changed and set(changed) <= OPERATIONAL_KEYS:
            # Workers started from now on use them.
            study.set_user_attr(SPACE_KEY, stored_space(space))
            changed = {}
        if changed:
            shown = ", ".join(
                f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(changed.items())[:5]
            )
            raise ConfigError(
                f"{space.source}: study '{name}' already exists with a different search space "
                f"({shown}{' ...' if len(changed) > 5 else ''}); rename study.name to start a new "
                "study, or restore the old values to resume it"
            )
        _enqueue(study, space)
        return study, False
    study.set_user_attr(SPACE_KEY, stored_space(space))
    _enqueue(study, space)
    return study, True


def _enqueue(study: optuna.Study, space: SearchSpace) -> None:
    # skip_if_exists: a relaunch (or a second launcher) queues no point twice.
    for params in enqueue_params(space):
        study.enqueue_trial(params, skip_if_exists=True)


def space_changes(
    stored: dict[str, Any], space: SearchSpace, source: str
) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (stored value, new value)} where a stored space and `space` differ.

    Compares contents, not digests, the stored copy revalidated: a field added to the schema
    since (left unset, or at its default) changes no study.
    """
    old = flatten(stored_space(parse_space(stored, source=source)))
    new = flatten(stored_space(space))
    keys = sorted(old.keys() | new.keys())
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def load_study(
    storage: optuna.storages.BaseStorage, name: str, worker_index: int = 0
) -> tuple[optuna.Study, SearchSpace]:
    """An existing study with its sampler and pruner rebuilt from the stored space."""
    try:
        plain = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [
            s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        ]
        raise HpoError(
            f"no study '{name}' in this storage; it has: {', '.join(names) or 'none'}; "
            "create one with: hpo launch SPACE.yaml (e.g. search_spaces/quickstart.yaml)"
        ) from None
    if SPACE_KEY not in plain.user_attrs:
        raise HpoError(f"study '{name}' was not created by `hpo launch` (no stored search space)")
    space = parse_space(plain.user_attrs[SPACE_KEY], source=f"study '{name}'")
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(space, worker_index),
        pruner=make_pruner(space.study.pruner, space.source),
    )
    return study, space


def store_tracking_uri(study: optuna.Study, uri: str) -> None:
    """Keeps `uri`, redacted, with the study: to show, and to fall back on when it held no secret."""
    study.set_user_attr(TRACKING_URI_KEY, redact(uri))


def stored_tracking_uri(study: optuna.Study, instead: str | None = None) -> str | None:
    """The MLflow tracking URI stored with the study (None if none): the fallback of workers,
    `hpo promote` and `hpo report` when neither --tracking-uri nor MLFLOW_TRACKING_URI is given.

    Args:
        instead: what to use when the stored URI is masked (`hpo promote` prefers the study's
            URI to MLFLOW_TRACKING_URI, unless the study's cannot be used).

    Raises:
        HpoError: the stored URI is the redacted copy of one that held a password, and
            `instead` is None.
    """
    uri = study.user_attrs.get(TRACKING_URI_KEY)
    if uri and MASK in uri:
        if instead:
            return instead
        raise HpoError(
            f"study '{study.study_name}' logs to MLflow at {uri}, whose secret is not stored "
            "with the study: give --tracking-uri or set MLFLOW_TRACKING_URI"
        )
    return uri


def stored_space(space: SearchSpace) -> dict[str, Any]:
    """`space` as plain JSON, the form a study keeps it in."""
    return json.loads(json.dumps(space.model_dump(mode="json", by_alias=True, exclude_none=True)))
