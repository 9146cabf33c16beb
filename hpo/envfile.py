"""HPO_SECRETS_FILE: secrets from a file, which no command line and no `docker inspect` shows.

    HPO_SECRETS_FILE=/run/secrets/hpo.env hpo worker   # file: HPO_STORAGE=postgresql+psycopg://...

The file holds `NAME=VALUE` lines (blank lines, `#` comments and an `export ` prefix allowed,
one pair of matching quotes around a value removed). A variable already set in the environment
keeps its value. `hpo launch --launcher docker` hands each worker container its secrets this
way (hpo/launch/docker.py): `docker inspect` shows a mount, not the values.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from pathlib import Path

from hpo.errors import ConfigError

SECRETS_FILE_ENV = "HPO_SECRETS_FILE"
_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse_env_file(path: Path) -> dict[str, str]:
    """The NAME=VALUE pairs of `path`.

    Raises:
        ConfigError: the file cannot be read or a line is not NAME=VALUE (the line's text, which
            may hold a secret, is not repeated).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{SECRETS_FILE_ENV} {path}: cannot read it ({exc.__class__.__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc})") from None
    out = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ConfigError(f"{SECRETS_FILE_ENV} {path}, line {number}: expected NAME=VALUE")
        name, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name] = value
    return out


def load_secrets_file(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Sets the variables of the file named by HPO_SECRETS_FILE that `environ` lacks.

    Returns:
        The names set (none when HPO_SECRETS_FILE is unset or empty).
    """
    path = environ.get(SECRETS_FILE_ENV)
    if not path:
        return []
    added = []
    for name, value in parse_env_file(Path(path)).items():
        if not environ.get(name):
            environ[name] = value
            added.append(name)
    return added


def write_env_file(path: Path, values: dict[str, str]) -> Path:
    """Writes `values` as NAME="VALUE" lines, which parse_env_file reads back whatever the value.

    Mode 0644: a container's non-root user must read it, so keep it in a directory that only
    its owner can enter.

    Raises:
        ConfigError: a value holds a line break.
    """
    for name, value in values.items():
        if "\n" in value or "\r" in value:
            raise ConfigError(f"{name} holds a line break; it cannot go into {path}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(f'{name}="{value}"\n' for name, value in values.items())
    return path
