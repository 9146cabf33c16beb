"""Optuna storages from a URL: embedded SQLite, shared PostgreSQL, or a gRPC storage proxy."""

from __future__ import annotations

import os
from typing import Any

import optuna
import sqlalchemy.exc

from hpo.errors import HpoError

DEFAULT_STORAGE = "sqlite:///hpo.db"


def default_storage_url() -> str:
    """HPO_STORAGE if set, else the embedded SQLite file."""
    return os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE


def make_storage(url: str | None = None) -> optuna.storages.BaseStorage:
    """The storage behind `url`.

    sqlite:/// and postgresql:// give an RDB storage (with connection pre-ping and a pool that
    suits many workers for PostgreSQL); grpc://host:port talks to `hpo storage-proxy`.

    Raises:
        HpoError: the database cannot be reached, with the URL (password hidden).
    """
    url = url or default_storage_url()
    if url.startswith("grpc://"):
        host, _, port = url.removeprefix("grpc://").partition(":")
        return optuna.storages.GrpcStorageProxy(host=host, port=int(port or 13000))
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs.update(pool_size=2, max_overflow=4, pool_recycle=300)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
        raise HpoError(f"cannot open study storage {redact(url)}: {str(exc).splitlines()[0]}") from None


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest or ":" not in rest.split("@", 1)[0]:
        return url
    creds, host = rest.split("@", 1)
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
