"""Static checks of the deployment files (no Docker engine, cluster or Slurm needed).

    python -m pytest tests/deploy -q -p no:cacheprovider

Covers docker-compose.yml, .env.example, docker/ (Dockerfiles, MLflow auth ini and entrypoint,
PostgreSQL init), deploy/k8s/ (also against the Kubernetes API schema: kubernetes-validate) and
deploy/slurm/ (run for real on a Slurm cluster by test_slurm.py, marked e2e). `docker compose
config` runs only where the Compose plugin is installed.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
WORKER_DOCKERFILE = ROOT / "docker" / "worker.Dockerfile"
MLFLOW_DOCKERFILE = ROOT / "docker" / "mlflow.Dockerfile"
DOCKERFILES = [WORKER_DOCKERFILE, MLFLOW_DOCKERFILE]
AUTH_INI = ROOT / "docker" / "mlflow-auth.ini"
MLFLOW_ENTRYPOINT = ROOT / "docker" / "mlflow-entrypoint.sh"
K8S_JOB = ROOT / "deploy" / "k8s" / "worker-job.yaml"
K8S_SECRET = ROOT / "deploy" / "k8s" / "secret.example.yaml"
SLURM = ROOT / "deploy" / "slurm" / "worker.sbatch"

SECRET_NAME = re.compile(r"PASSWORD|SECRET")
VAR_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:[:?+-][^}]*)?\}")
ONLY_VAR_REFS = re.compile(rf"^(?:{VAR_REF.pattern})+$")
# scheme://user:password@host, user and password plain text or ${...} references.
URL_CREDENTIALS = re.compile(
    r"[a-z][a-z0-9+.-]*://(?:\$\{[^}]*\}|[^\s:/@$])+:((?:\$\{[^}]*\}|[^\s@$])+)@"
)


# ---- helpers


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def env_dict(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def k8s_docs(path: Path = K8S_JOB) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_job() -> dict[str, Any]:
    (job,) = [doc for doc in k8s_docs() if doc["kind"] == "Job"]
    return job


def k8s_container() -> dict[str, Any]:
    (container,) = k8s_job()["spec"]["template"]["spec"]["containers"]
    return container


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def exec_form(path: Path, instruction: str) -> list[str]:
    (args,) = [a for i, a in dockerfile_instructions(path) if i == instruction]
    value = yaml.safe_load(args)  # a JSON array is valid YAML
    assert isinstance(value, list), f"{path.name}: {instruction} must use exec form, got {args}"
    return value


def strings_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings_in(v)]
    return [node] if isinstance(node, str) else []


def code_lines(path: Path) -> str:
    """The file without its comment lines (they carry placeholders such as USER:PASSWORD)."""
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def url_password_literals(text: str) -> list[str]:
    matches = URL_CREDENTIALS.finditer(text)
    return [m.group(0) for m in matches if not ONLY_VAR_REFS.match(m.group(1))]


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


# ---- docker-compose.yml


def test_compose_parses_with_the_three_services() -> None:
    # docker-compose.yml is YAML with the services postgres, mlflow and worker.
    assert {"postgres", "mlflow", "worker"} <= set(compose()["services"])


def test_worker_service_runs_hpo_worker() -> None:
    # The worker container runs `hpo worker`: ENTRYPOINT `hpo` (Dockerfile), command `worker`.
    worker = service("worker")
    assert worker["build"]["dockerfile"] == "docker/worker.Dockerfile"
    assert "entrypoint" not in worker
    command = worker["command"]
    assert (command.split() if isinstance(command, str) else command)[0] == "worker"
    assert exec_form(WORKER_DOCKERFILE, "ENTRYPOINT") == ["hpo"]
    assert exec_form(WORKER_DOCKERFILE, "CMD") == ["worker"]


def test_postgres_has_healthcheck_and_named_volume() -> None:
    # PostgreSQL is checked with pg_isready and keeps its data in a named volume.
    postgres = service("postgres")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    named = set(compose()["volumes"])
    mounts = [v.split(":")[0] for v in postgres["volumes"]]
    assert any(m in named for m in mounts)


def test_postgres_init_creates_the_mlflow_database() -> None:
    # The init directory is mounted and creates the database that MLflow's URL names.
    mounts = service("postgres")["volumes"]
    assert "./docker/postgres-init:/docker-entrypoint-initdb.d:ro" in mounts
    scripts = " ".join(p.read_text() for p in (ROOT / "docker" / "postgres-init").iterdir())
    assert re.search(r"CREATE DATABASE\s+mlflow\b", scripts, re.IGNORECASE)
    assert "@postgres:5432/mlflow" in " ".join(strings_in(service("mlflow")))


def test_worker_reserves_one_gpu_and_can_scale() -> None:
    # Each worker reserves one NVIDIA GPU and has no container_name or host port (--scale works).
    worker = service("worker")
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_worker_reaches_postgres_mlflow_and_data() -> None:
    # Workers use the compose PostgreSQL and MLflow services and read ./data at /app/data.
    worker = service("worker")
    env = env_dict(worker)
    assert env["HPO_STORAGE"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["HPO_STORAGE"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert {"HPO_STUDY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(env)
    assert "./data:/app/data" in worker["volumes"]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_mlflow_server_command() -> None:
    # MLflow serves with basic auth, PostgreSQL (psycopg) as store and proxied artifacts.
    mlflow = service("mlflow")
    cmd = mlflow["command"]
    assert cmd[:2] == ["mlflow", "server"]
    flag = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    assert flag["--backend-store-uri"].startswith("postgresql+psycopg://")
    assert flag["--artifacts-destination"] == "/mlartifacts"
    assert flag["--app-name"] == "basic-auth"
    assert (flag["--host"], str(flag["--port"])) == ("0.0.0.0", "5000")
    assert "--serve-artifacts" in cmd
    # Workers send Host: mlflow:5000, which MLflow answers with 403 unless it is allowed.
    assert re.search(r"[-,]mlflow:5000,", flag["--allowed-hosts"])
    assert "mlflow:5000" in env_example()["MLFLOW_ALLOWED_HOSTS"].split(",")
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mlflow["build"]["dockerfile"] == "docker/mlflow.Dockerfile"


def test_mlflow_admin_and_secret_key_come_from_env() -> None:
    # MLflow's admin and Flask secret come from .env; MLFLOW_AUTH_CONFIG_PATH locates the ini.
    env = env_dict(service("mlflow"))
    keys = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")
    keys += ("MLFLOW_FLASK_SERVER_SECRET_KEY",)
    for key in keys:
        assert ONLY_VAR_REFS.match(env[key]), f"{key}={env[key]}"
    instructions = dockerfile_instructions(MLFLOW_DOCKERFILE)
    dockerfile_env = " ".join(a for i, a in instructions if i == "ENV")
    assert "MLFLOW_AUTH_CONFIG_PATH=" in dockerfile_env


def test_mlflow_image_pins_mlflow_auth_and_psycopg() -> None:
    # The MLflow image installs mlflow[auth]>=3.17 and psycopg.
    runs = " ".join(a for i, a in dockerfile_instructions(MLFLOW_DOCKERFILE) if i == "RUN")
    assert re.search(r"mlflow\[auth\]>=3\.17", runs)
    assert "psycopg" in runs


# ---- secrets


def test_compose_secrets_are_required_variable_references() -> None:
    # Every password or secret in compose is a ${VAR:?...} reference: it fails loudly when unset.
    text = COMPOSE.read_text()
    names = ("POSTGRES_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
    for name in names:
        refs = re.findall(rf"\$\{{{name}([^}}]*)\}}", text)
        assert refs, f"{name} is not used"
        assert all(r.startswith(":?") for r in refs), f"${{{name}...}} without :? in {refs}"


def test_no_password_literal_in_compose() -> None:
    # No compose value holds a password: secret-named keys and URL passwords are ${...} references.
    doc = compose()
    for name, svc in doc["services"].items():
        for key, value in env_dict(svc).items():
            if SECRET_NAME.search(key):
                assert ONLY_VAR_REFS.match(value), f"{name}: {key}={value}"
    assert url_password_literals("\n".join(strings_in(doc))) == []


def test_no_password_literal_in_k8s_manifest() -> None:
    # In the Job, secrets (passwords and the storage URL) come from secretKeyRef, never a value.
    for var in k8s_container()["env"]:
        if SECRET_NAME.search(var["name"]) or var["name"] == "HPO_STORAGE":
            assert "value" not in var and "secretKeyRef" in var["valueFrom"], var
    assert url_password_literals(K8S_JOB.read_text()) == []


def test_no_password_literal_in_slurm_script() -> None:
    # The Slurm script assigns no password and writes no URL with one (they come from a file).
    code = code_lines(SLURM)
    assert not re.search(r"\b\w*(PASSWORD|SECRET)\w*=(?![\"']?\$)", code)
    assert url_password_literals(code) == []


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_no_password_literal_in_dockerfiles(path: Path) -> None:
    # Images carry no secret: no ENV/ARG named like a password, no URL with a password.
    for instruction, args in dockerfile_instructions(path):
        if instruction in ("ENV", "ARG"):
            assert not SECRET_NAME.search(args), f"{path.name}: {instruction} {args}"
    assert url_password_literals(code_lines(path)) == []


def test_dockerignore_keeps_secrets_and_state_out_of_the_build_context() -> None:
    # .dockerignore excludes .env, the venv, databases, MLflow state, data, git and caches.
    entries = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".venv", "*.db", "mlartifacts", "mlruns", "data/", ".git"} <= entries
    assert any("__pycache__" in e for e in entries)


# ---- .env.example


def test_env_example_lists_every_compose_variable() -> None:
    # Every ${VAR} used in docker-compose.yml has a line in .env.example.
    text = COMPOSE.read_text().replace("$$", "")
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    missing = used - set(env_example())
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_env_example_comments_every_variable() -> None:
    # Each variable in .env.example is preceded by a comment line saying what it is.
    lines = ENV_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            assert i > 0 and lines[i - 1].startswith("#"), f"no comment above {line.split('=')[0]}"


# ---- MLflow basic auth


def test_auth_ini_is_a_template_without_the_admin_password() -> None:
    # The committed auth ini takes the database URL and admin name from env and never a password.
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(AUTH_INI)
    section = ini["mlflow"]
    assert section["database_uri"] == "${MLFLOW_AUTH_DATABASE_URI}"
    assert section["admin_username"] == "${MLFLOW_AUTH_ADMIN_USERNAME}"
    assert "admin_password" not in section
    assert section["default_permission"] in {"READ", "EDIT", "MANAGE", "NO_PERMISSIONS"}


def _run_entrypoint(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    full_env = {
        "PATH": path,
        "MLFLOW_AUTH_TEMPLATE": str(AUTH_INI),
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "conf" / "basic_auth.ini"),
        **env,
    }
    return subprocess.run(
        ["sh", str(MLFLOW_ENTRYPOINT), "echo", "started"],
        check=False, env=full_env, capture_output=True, text=True, timeout=60,
    )


def test_entrypoint_renders_the_auth_ini_that_mlflow_reads(tmp_path: Path) -> None:
    # The entrypoint writes the ini (mode 600) as MLflow's reader expects, then runs its command.
    db = "postgresql+psycopg://hpo:p%40ss@postgres:5432/mlflow"
    env = {"MLFLOW_AUTH_DATABASE_URI": db, "MLFLOW_AUTH_ADMIN_USERNAME": "hpo"}
    result = _run_entrypoint(tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"
    rendered = tmp_path / "conf" / "basic_auth.ini"
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o600
    ini = configparser.ConfigParser()  # MLflow's reader: default interpolation, so '%' is escaped
    ini.read(rendered)
    assert (ini["mlflow"]["database_uri"], ini["mlflow"]["admin_username"]) == (db, "hpo")
    assert "admin_password" not in ini["mlflow"]


def test_entrypoint_refuses_a_missing_variable(tmp_path: Path) -> None:
    # An unset placeholder variable stops the entrypoint with a message naming it.
    result = _run_entrypoint(tmp_path, {"MLFLOW_AUTH_ADMIN_USERNAME": "hpo"})
    assert result.returncode != 0
    assert "MLFLOW_AUTH_DATABASE_URI" in result.stderr
    assert "started" not in result.stdout


# ---- Kubernetes


def test_k8s_job_is_indexed_with_one_gpu_per_pod() -> None:
    # The manifest parses and holds an Indexed Job, parallelism = completions, nvidia.com/gpu: 1.
    spec = k8s_job()["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] >= 1
    assert int(k8s_container()["resources"]["limits"]["nvidia.com/gpu"]) == 1


def test_k8s_job_runs_hpo_worker() -> None:
    # Each pod runs `hpo worker`, its worker index taken from the Job's completion index.
    container = k8s_container()
    argv = container.get("command", []) + container.get("args", [])
    assert argv[:2] == ["hpo", "worker"]
    assert "$(JOB_COMPLETION_INDEX)" in argv


def test_k8s_env_names_equal_compose_worker_env() -> None:
    # The Job's environment variables have exactly the names of the compose worker's.
    k8s_names = {var["name"] for var in k8s_container()["env"]}
    assert k8s_names == set(env_dict(service("worker")))


def test_k8s_references_resolve() -> None:
    # Each secretKeyRef names a key of secret.example.yaml, each configMapKeyRef a ConfigMap key.
    (secret,) = k8s_docs(K8S_SECRET)
    (config_map,) = [doc for doc in k8s_docs() if doc["kind"] == "ConfigMap"]
    for var in k8s_container()["env"]:
        source = var.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            assert ref["name"] == config_map["metadata"]["name"]
            assert ref["key"] in config_map["data"]



# The Kubernetes release whose API schema the manifests are checked against (kubernetes-validate
# ships the schemas of many; raise this with the oldest cluster version you deploy to).
K8S_VERSION = "1.33.0"


def k8s_schema_errors(path: Path, text: str | None = None) -> list[str]:
    """kubernetes-validate's verdict on every document of `path` (or of `text`, a copy of it):
    one line per document the schema of K8S_VERSION refuses, unknown fields included (strict)."""
    import kubernetes_validate

    docs = [doc for doc in yaml.safe_load_all(text or path.read_text()) if doc]
    assert docs, f"{path.name} holds no document"
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc.get('kind')} {doc['metadata']['name']}: {exc.message}")
    return errors


@pytest.mark.parametrize("path", [K8S_JOB, K8S_SECRET], ids=lambda p: p.name)
def test_k8s_manifests_follow_the_kubernetes_schema(path: Path) -> None:
    # Every document of the manifests is valid against Kubernetes K8S_VERSION's API schema, with
    # no field the API does not know (kubernetes-validate, strict): what `kubectl apply
    # --dry-run=server` would check, without a cluster.
    assert k8s_schema_errors(path) == []


@pytest.mark.parametrize(
    "old, new",
    [("completionMode: Indexed", "completionMod: Indexed"),  # a misspelt field
     ("parallelism: 4 ", "parallelism: four "),  # a wrong type
     ("- name: worker\n          image:", "- image:")],  # a required field left out
    ids=["unknown field", "wrong type", "missing required field"],
)
def test_k8s_schema_check_refuses_a_broken_job(old: str, new: str) -> None:
    # The check above can fail: a copy of the Job with one mistake is refused, naming the Job.
    text = K8S_JOB.read_text()
    assert old in text
    errors = k8s_schema_errors(K8S_JOB, text.replace(old, new, 1))
    assert len(errors) == 1 and errors[0].startswith("Job hpo-worker-dropout: "), errors


# ---- Slurm


def test_slurm_script_is_a_gpu_array_job_running_hpo_worker() -> None:
    # The sbatch script is an array job with a GPU per task and runs `hpo worker`; bash parses it.
    text = SLURM.read_text()
    assert re.search(r"^#SBATCH --array=\d+-\d+", text, re.MULTILINE)
    assert re.search(r"^#SBATCH --gres=gpu:1\b", text, re.MULTILINE)
    assert re.search(r"\bhpo\"? worker --study \"\$HPO_STUDY\"", code_lines(SLURM))
    subprocess.run(["bash", "-n", str(SLURM)], check=True)


def _fake_venv_run(tmp_path: Path, env_mode: int) -> subprocess.CompletedProcess[str]:
    hpo = tmp_path / ".venv" / "bin" / "hpo"
    hpo.parent.mkdir(parents=True)
    hpo.write_text('#!/bin/sh\necho "argv: $*"\necho "storage: $HPO_STORAGE"\n')
    hpo.chmod(0o755)
    env_file = tmp_path / "worker.env"
    env_file.write_text(
        "HPO_STUDY=dropout\nHPO_STORAGE=sqlite:///hpo.db\nMLFLOW_TRACKING_URI=http://mlflow:5000\n"
    )
    env_file.chmod(env_mode)
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "HPO_ENV_FILE": str(env_file),
        "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_ARRAY_TASK_ID": "3",
    }
    argv = ["bash", str(SLURM)]
    return subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=60)


def test_slurm_script_runs_the_worker_from_a_venv(tmp_path: Path) -> None:
    # In venv mode task K runs `hpo worker --study S --worker-index K`; the storage stays in env.
    result = _fake_venv_run(tmp_path, 0o600)
    assert result.returncode == 0, result.stderr
    assert "argv: worker --study dropout --worker-index 3" in result.stdout
    assert "storage: sqlite:///hpo.db" in result.stdout


def test_slurm_script_refuses_a_readable_env_file(tmp_path: Path) -> None:
    # An env file that other users can read is refused before anything runs.
    result = _fake_venv_run(tmp_path, 0o644)
    assert result.returncode != 0
    assert "chmod 600" in result.stderr
    assert "argv:" not in result.stdout


# ---- images


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_base_images_are_pinned(path: Path) -> None:
    # Every FROM names an image with a version tag, never `latest` or no tag (a ${ARG} base, by
    # its default; a FROM of an earlier stage is not an image).
    instructions = dockerfile_instructions(path)
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    stages = {a.split()[-1] for i, a in instructions if i == "FROM" and " AS " in a.upper()}
    images = [a.split()[0] for i, a in instructions if i == "FROM"]
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a) for a in images]
    assert images
    for image in (i for i in images if i not in stages):
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{path.name}: FROM {image} has no tag"
        pinned = tag != "latest" and re.search(r"\d", tag)
        assert pinned, f"{path.name}: FROM {image} is not pinned"


def test_compose_images_are_pinned() -> None:
    # Every image named in compose has a version tag, never `latest`.
    for name, svc in compose()["services"].items():
        image = svc["image"]
        tag = image.rpartition(":")[2]
        assert ":" in image and tag != "latest" and re.search(r"\d", tag), f"{name}: {image}"


def test_worker_image_layout() -> None:
    # The worker image installs the package with its EXTRAS (default gpu) from the wheelhouse or
    # PyPI, runs as a non-root user in /app, with hpo/ and search_spaces/.
    instructions = dockerfile_instructions(WORKER_DOCKERFILE)
    copied = " ".join(a for i, a in instructions if i == "COPY")
    for path in ("docker/wheels/", "pyproject.toml", "README.md", "hpo/", "search_spaces/"):
        assert path in copied
    assert ("WORKDIR", "/app") in instructions
    assert ("ARG", "EXTRAS=gpu") in instructions
    assert any(i == "RUN" and '".${EXTRAS:+[$EXTRAS]}"' in a and "--no-index --find-links" in a
               for i, a in instructions)
    users = [a for i, a in instructions if i == "USER"]
    assert users and users[-1] not in ("root", "0")


# ---- docker compose config


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    # `docker compose config` (parses and interpolates, no engine) accepts it with .env.example.
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not installed")
    probe = subprocess.run([docker, "compose", "version"], check=False, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("docker compose plugin not installed (`docker compose version` failed)")
    env_file = tmp_path / ".env"
    shutil.copy(ENV_EXAMPLE, env_file)
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--env-file", str(env_file), "config", "--quiet"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
