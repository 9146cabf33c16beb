# syntax=docker/dockerfile:1
# MLflow tracking server with PostgreSQL (psycopg 3) and basic auth (mlflow[auth]).
#
#   docker build -f docker/mlflow.Dockerfile -t xray-hpo-mlflow:0.1.0 .
#
# docker/mlflow-entrypoint.sh renders docker/mlflow-auth.ini (the basic-auth configuration, found
# through MLFLOW_AUTH_CONFIG_PATH) from the environment, then runs the command it is given:
# `mlflow server ... --app-name basic-auth` (see docker-compose.yml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_AUTH_CONFIG_PATH=/tmp/mlflow/basic_auth.ini

RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "mlflow[auth]>=3.17,<4" "psycopg[binary]>=3.3"

RUN useradd --create-home --uid 1000 --user-group mlflow \
    && mkdir -p /mlartifacts /etc/mlflow \
    && chown mlflow:mlflow /mlartifacts

COPY docker/mlflow-auth.ini /etc/mlflow/basic_auth.ini.template
COPY --chmod=0755 docker/mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint

USER mlflow
EXPOSE 5000

ENTRYPOINT ["mlflow-entrypoint"]
CMD ["mlflow", "server", "--help"]
