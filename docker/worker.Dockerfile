# Worker: runs `hpo worker`, which joins an existing Optuna study and trains trials until the
# study's budget is spent. One recipe for two builds:
#
#   # with registry access: the public Python image, packages from PyPI; GPU (the default)
#   docker build -f docker/worker.Dockerfile -t xray-hpo-worker:0.1.0 .
#   # without: a Debian base made by debootstrap and a wheelhouse in docker/wheels/ (CPU)
#   docker/build-local.sh
#
# BASE_IMAGE is any Debian-like image with python3 (3.11) and its venv module. EXTRAS are the
# package's pip extras: `gpu` (tensorflow[and-cuda]: TensorFlow's CUDA libraries come from pip, so
# the base needs no CUDA toolkit; the host needs the NVIDIA driver and container toolkit) or empty
# for a CPU image, or `jax-gpu` with --build-arg KERAS_BACKEND=jax for Keras on JAX (what the
# project's GPU study ran on). docker/wheels/ is empty (pip reads PyPI) unless
# docker/build-local.sh put a wheelhouse there (pip then reads only it).
#
#   docker run --rm --gpus 1 -e HPO_STUDY=dropout -e HPO_SECRETS_FILE=/run/secrets/hpo.env \
#       -v "$HOME/.config/xray-hpo/worker.env:/run/secrets/hpo.env:ro" -v "$PWD/data:/app/data" \
#       xray-hpo-worker:0.1.0
#
# Study and storage come from HPO_STUDY / HPO_STORAGE, MLflow from MLFLOW_TRACKING_URI /
# MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, secrets preferably from the file named by
# HPO_SECRETS_FILE (see docker-compose.yml, docs/deploy.md).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# The virtual environment with every dependency: rebuilt only when pyproject.toml or the wheels
# change (a stub package stands in for hpo/, which the final stage installs on top).
FROM ${BASE_IMAGE} AS deps
ARG EXTRAS=gpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY docker/wheels/ /tmp/wheels/
WORKDIR /tmp/stub
COPY pyproject.toml ./
RUN set -eu; \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then src="--no-index --find-links /tmp/wheels"; else src=""; fi; \
    python3 -m venv /opt/venv; \
    mkdir hpo && touch hpo/__init__.py README.md; \
    /opt/venv/bin/pip install $src "setuptools>=69" ".${EXTRAS:+[$EXTRAS]}"; \
    /opt/venv/bin/pip uninstall -y xray-hpo

FROM ${BASE_IMAGE}
# KERAS_BACKEND: tensorflow, or jax for an image built with EXTRAS=jax-gpu (docs/deploy.md).
ARG KERAS_BACKEND=tensorflow
# TF_FORCE_GPU_ALLOW_GROWTH: several workers can share one GPU without each taking all its memory.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    KERAS_BACKEND=${KERAS_BACKEND} \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    PATH=/opt/venv/bin:$PATH

RUN useradd --create-home --uid 1000 --user-group hpo

COPY --from=deps /opt/venv /opt/venv
WORKDIR /app

# The package (no dependency is fetched: they are all in the venv), then the search spaces.
COPY pyproject.toml README.md ./
COPY hpo/ hpo/
RUN pip install --no-deps --no-build-isolation . && rm -rf build ./*.egg-info
COPY search_spaces/ search_spaces/

# Data is mounted at /app/data (paths in search spaces are relative to /app).
RUN mkdir -p /app/data && chown -R hpo:hpo /app

# Compose runs workers as hpo (uid 1000); `hpo launch --launcher docker` runs them as the user who
# launches them (--user UID:GID, HOME=/tmp, hpo/launch/docker.py), so nothing here may need uid 1000.
USER hpo

ENTRYPOINT ["hpo"]
CMD ["worker"]
