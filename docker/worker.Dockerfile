# syntax=docker/dockerfile:1
# GPU worker: runs `hpo worker`, which joins an existing Optuna study and trains trials until the
# study's budget is spent. TensorFlow's CUDA libraries come from pip (`.[gpu]` = tensorflow[and-cuda]),
# so the base image needs no CUDA toolkit; the host needs the NVIDIA driver and container toolkit.
#
#   docker build -f docker/worker.Dockerfile -t xray-hpo-worker:0.1.0 .
#   docker run --rm --gpus 1 -e HPO_STUDY=dropout -e HPO_STORAGE=... -v "$PWD/data:/app/data" \
#       xray-hpo-worker:0.1.0
#
# Study and storage come from HPO_STUDY / HPO_STORAGE, MLflow from MLFLOW_TRACKING_URI /
# MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (see docker-compose.yml, docs/deploy.md).
FROM python:3.11-slim-bookworm

# TF_FORCE_GPU_ALLOW_GROWTH: several workers can share one GPU without each taking all its memory.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_FORCE_GPU_ALLOW_GROWTH=true

RUN useradd --create-home --uid 1000 --user-group hpo

WORKDIR /app

# The package first (its dependencies are the slow layer), then the search spaces.
COPY pyproject.toml README.md ./
COPY hpo/ hpo/
RUN --mount=type=cache,target=/root/.cache/pip pip install ".[gpu]"
COPY search_spaces/ search_spaces/

# Data is mounted at /app/data (paths in search spaces are relative to /app).
RUN mkdir -p /app/data && chown -R hpo:hpo /app

USER hpo

ENTRYPOINT ["hpo"]
CMD ["worker"]
