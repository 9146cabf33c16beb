"""A real `mlflow server` on a free loopback port, shared by the remote-tracking and UI tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._servers import mlflow_server


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory) -> Iterator[str]:
    """URL of an `mlflow server` with a SQLite store and proxied artifacts, stopped at the end."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url
