"""A lock on one registered model, so that promotes running at once write it one after the other.

    hpo promote a --model xray-cluster-mass & hpo promote b --model xray-cluster-mass

The MLflow registry has no transactions, but creating a registered model is atomic in every
store (its name is unique): the lock is a registered model `<NAME>.promote-lock`, created to
take the lock and deleted to give it back. A promote that died holding it leaves it behind;
after STALE_S seconds the next promote breaks it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlflow.exceptions import MlflowException

from hpo.errors import TrackingError

SUFFIX = ".promote-lock"
WAIT_S = 900.0  # how long a promote waits for another one to finish
STALE_S = 1800.0  # a lock this old was left by a promote that died
POLL_S = 0.5


@contextmanager
def registry_lock(client: Any, name: str, *, wait_s: float = WAIT_S,
                  stale_s: float = STALE_S) -> Iterator[None]:
    """Holds the lock of registered model `name` for the body of the `with`.

    Raises:
        TrackingError: another promote held it for `wait_s` seconds.
    """
    lock = name + SUFFIX
    me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while not _take(client, lock, me):
        holder, since = _holder(client, lock)
        if holder is not None and time.time() - since > stale_s:
            _delete(client, lock)  # left by a promote that died
            continue
        if time.monotonic() > deadline:
            raise TrackingError(
                f"registered model '{name}' is locked by another hpo promote ({holder}) since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}; retry later, or "
                f"delete registered model '{lock}' if no promote is running")
        time.sleep(POLL_S)
    try:
        yield
    finally:
        _delete(client, lock)


def _take(client: Any, lock: str, me: str) -> bool:
    try:
        client.create_registered_model(
            lock, tags={"hpo.lock_holder": me, "hpo.lock_since": f"{time.time():.3f}"},
            description="held by `hpo promote` while it writes the registered model of the same "
                        "name; deleted when it ends")
        return True
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    holder, _ = _holder(client, lock)
    return holder == me  # a retried create whose first attempt went through


def _holder(client: Any, lock: str) -> tuple[str | None, float]:
    try:
        tags = client.get_registered_model(lock).tags
    except MlflowException:
        return None, time.time()  # given back meanwhile
    return tags.get("hpo.lock_holder"), float(tags.get("hpo.lock_since", time.time()))


def _delete(client: Any, lock: str) -> None:
    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
