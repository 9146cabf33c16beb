"""Commands start quietly: no absl, oneDNN or CUDA lines unless --debug or HPO_VERBOSE asks for them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna

from hpo.quiet import NOISE

# What a user saw before every command's own output (TensorFlow 2.21 on a CPU machine).
NATIVE = re.compile(r"absl::InitializeLog|oneDNN|cuda drivers|cuInit|cpu_feature_guard")
IMPORT_TF = (
    "from hpo import quiet; quiet.install(); import tensorflow as tf; import sys; "
    "print(float(tf.reduce_sum(tf.ones(3)))); print('ours', file=sys.stderr)"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HPO_", "TF_CPP_"))}
    return {**env, **extra}


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=False, cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=300)


def test_status_prints_only_its_table(tmp_path):
    # Rule: `hpo status` writes its table to stdout and nothing at all to stderr.
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    optuna.create_study(study_name="s", storage=storage)
    proc = _run([sys.executable, "-m", "hpo", "status", "--storage", storage], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[0].split()[:2] == ["study", "trials"]


def test_tensorflow_start_up_lines_are_dropped_and_other_stderr_kept(tmp_path):
    # Rule: once quiet is installed, importing TensorFlow and probing its devices print no native
    # line; what else goes to stderr still arrives.
    proc = _run([sys.executable, "-c", IMPORT_TF], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3.0"
    assert not [line for line in proc.stderr.splitlines() if NATIVE.search(line) or NOISE.match(line)], proc.stderr
    assert "ours" in proc.stderr


def test_hpo_verbose_brings_the_lines_back(tmp_path):
    # Rule: HPO_VERBOSE=1 leaves TensorFlow's own start-up output alone (and shows the rule above
    # tests something: this machine's TensorFlow does print such lines).
    proc = _run([sys.executable, "-c", IMPORT_TF], tmp_path, HPO_VERBOSE="1")
    assert proc.returncode == 0, proc.stderr
    assert NATIVE.search(proc.stderr), proc.stderr


def test_the_model_class_loads_without_an_mlflow_warning(tmp_path):
    # Rule: importing our pyfunc class (what promote and predict do) makes MLflow warn about nothing.
    proc = _run([sys.executable, "-W", "always", "-c", "import hpo.inference.pyfunc"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "type hint" not in proc.stderr.lower(), proc.stderr
