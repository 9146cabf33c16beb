"""The registry lock on a real SQLite store: given back after use, broken when stale, and a
clear line when another holder keeps it."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from hpo.errors import TrackingError
from hpo.registry.lock import registry_lock


@pytest.fixture()
def client(tmp_path):
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _names(client) -> list[str]:
    return [m.name for m in client.search_registered_models()]


def test_the_lock_is_given_back_even_after_an_error(client):
    # Rule: the lock model exists only while its holder runs, also when the body raises.
    with pytest.raises(RuntimeError), registry_lock(client, "m"):
        assert "m.promote-lock" in _names(client)
        raise RuntimeError("boom")
    assert "m.promote-lock" not in _names(client)


def test_a_held_lock_times_out_in_one_line_and_a_stale_one_is_broken(client):
    # Rule: a waiter gives up after wait_s naming the holder and the lock to delete; a lock older
    # than stale_s (its promote died) is broken and taken.
    client.create_registered_model("m.promote-lock", tags={"hpo.lock_holder": "host:1:abc",
                                                           "hpo.lock_since": f"{time.time():.3f}"})
    with pytest.raises(TrackingError) as info, registry_lock(client, "m", wait_s=1.0):
        pass
    assert "host:1:abc" in str(info.value) and "'m.promote-lock'" in str(info.value) and "\n" not in str(info.value)
    client.set_registered_model_tag("m.promote-lock", "hpo.lock_since", f"{time.time() - 3600:.3f}")
    with registry_lock(client, "m", wait_s=5.0, stale_s=1800.0):
        holder = client.get_registered_model("m.promote-lock").tags["hpo.lock_holder"]
        assert holder != "host:1:abc"
    assert "m.promote-lock" not in _names(client)
