"""Create or join: the same space joins, heartbeat settings may change, all else is refused."""

from __future__ import annotations

import pytest

from hpo.config.space import parse_space
from hpo.errors import ConfigError
from hpo.keys import SPACE_KEY
from hpo.store.storage import make_storage
from hpo.study.create import create_or_join
from hpo.study.create import load_study


def _space(**study):
    return parse_space(
        {
            "study": {"name": "c", "n_trials": 3, **study},
            "params": {"model.dropout.rate": {"float": [0.0, 0.2], "step": 0.1}},
        },
        source="c.yaml",
    )


@pytest.fixture
def storage(tmp_path):
    return make_storage(f"sqlite:///{tmp_path / 'hpo.db'}")


def test_second_launch_joins(storage):
    # Rule: launching the same space again joins the study instead of starting over.
    assert create_or_join(storage, _space())[1] is True
    assert create_or_join(storage, _space())[1] is False


def test_heartbeat_settings_may_change_and_are_stored(storage):
    # Rule: heartbeat_s, grace_s and max_retry keep the study alive, not define it: a relaunch
    # updates them.
    create_or_join(storage, _space())
    study, created = create_or_join(storage, _space(heartbeat_s=10, grace_s=120, max_retry=0))
    assert not created
    _, space = load_study(storage, "c")
    assert (space.study.heartbeat_s, space.study.grace_s, space.study.max_retry) == (10, 120, 0)


def test_changed_budget_is_refused_naming_the_change(storage):
    # Rule: a changed space under the same name is refused with what changed, even beside a
    # heartbeat change.
    create_or_join(storage, _space())
    with pytest.raises(ConfigError, match=r"study.n_trials: 3 -> 5"):
        create_or_join(storage, _space(n_trials=5, heartbeat_s=10))


def test_study_stored_before_new_fields_still_joins(storage):
    # Rule: a space stored before a schema field existed joins when the field is at its default.
    study, _ = create_or_join(storage, _space())
    stored = dict(study.user_attrs[SPACE_KEY])
    stored["study"] = {
        k: v for k, v in stored["study"].items() if k not in ("heartbeat_s", "max_retry")
    }
    study.set_user_attr(SPACE_KEY, stored)
    assert create_or_join(storage, _space())[1] is False


def test_grace_must_exceed_the_heartbeat():
    # Rule: grace_s <= heartbeat_s would fail live trials: refused, naming both values.
    with pytest.raises(
        ConfigError, match="grace_s must be greater than heartbeat_s, got grace_s=5, heartbeat_s=5"
    ):
        _space(heartbeat_s=5, grace_s=5)
