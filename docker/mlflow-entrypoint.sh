#!/bin/sh
# Entrypoint of docker/mlflow.Dockerfile: render the basic-auth configuration, then run "$@".
#
# Reads the template /etc/mlflow/basic_auth.ini.template (docker/mlflow-auth.ini), replaces each
# ${NAME} with the environment variable NAME (failing if it is unset or empty) and writes the
# result, readable by this user only, to $MLFLOW_AUTH_CONFIG_PATH, where MLflow looks for it.
set -eu

template="${MLFLOW_AUTH_TEMPLATE:-/etc/mlflow/basic_auth.ini.template}"
: "${MLFLOW_AUTH_CONFIG_PATH:?must name the file to write the rendered basic-auth ini to}"

python - "$template" "$MLFLOW_AUTH_CONFIG_PATH" <<'PY'
import os
import re
import sys

template, target = sys.argv[1], sys.argv[2]
with open(template, encoding="utf-8") as f:
    text = f.read()


def value_of(match: re.Match) -> str:
    name = match.group(1)
    value = os.environ.get(name, "")
    if not value:
        sys.exit(
            f"mlflow-entrypoint: {template} needs environment variable {name}, "
            "but it is unset or empty; set it in .env (see .env.example)."
        )
    return value.replace("%", "%%")  # configparser reads '%%' as a literal '%'


rendered = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value_of, text)
os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(rendered)
PY

exec "$@"
