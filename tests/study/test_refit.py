"""`hpo refit`: a study's best configurations trained again per seed, as a study of enqueued trials."""

from __future__ import annotations

import contextlib

import pytest
import yaml
from optuna.trial import TrialState

from tests._workers import create_study
from tests._workers import hpo_cmd
from tests._workers import mlflow_client
from tests._workers import trials_of
from tests._workers import write_study_files

pytestmark = pytest.mark.slow


def test_refit_trains_the_best_configurations_once_per_seed(tmp_path):
    # Rule: `hpo refit STUDY --top 2 --seeds 1,2` writes a space whose 4 trials are the 2 best
    # COMPLETE trials' params x the seeds (nothing sampled, nothing pruned, every model logged);
    # launched, each trial is a nested MLflow run with a model, trained for --epochs.
    from hpo.launch.launcher import launch
    from hpo.launch.worker import run_worker

    write_study_files(tmp_path, "base", n_trials=3,
                      params={"model.dropout.rate": {"float": [0.0, 0.3]},
                              "model.dense": {"categorical": [[16], [8, 8]]}})
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    create_study(tmp_path, storage)
    with contextlib.chdir(tmp_path):
        run_worker("base", storage, tracking)
    best = sorted((t for t in trials_of(storage, "base") if t.state == TrialState.COMPLETE),
                  key=lambda t: t.value)[:2]

    out = hpo_cmd(tmp_path, "refit", "base", "--top", "2", "--seeds", "1,2", "--epochs", "2",
                  "--tta", "-o", "refit.yaml", "--storage", storage)
    assert out.returncode == 0, out.stderr
    assert "4 trials (2 configurations x 2 seeds) as study 'base-refit'" in out.stdout
    text = (tmp_path / "refit.yaml").read_text()
    assert f"trial {best[0].number}: {best[0].value:.4f}" in text
    raw = yaml.safe_load(text)
    assert raw["base"]["train.epochs"] == 2 and raw["base"]["train.augment.tta"] is True
    assert raw["study"]["pruner"]["type"] == "none" and raw["tracking"] == {"log_models": "all"}

    with contextlib.chdir(tmp_path):
        launch("refit.yaml", workers=1, storage_url=storage, tracking_uri=tracking, echo=lambda _: None)
    refits = trials_of(storage, "base-refit")
    assert [t.state for t in refits] == [TrialState.COMPLETE] * 4
    got = sorted((t.params["model.dropout.rate"], t.params["model.dense"], t.params["train.seed"])
                 for t in refits)
    want = sorted((t.params["model.dropout.rate"], t.params["model.dense"], seed)
                  for t in best for seed in (1, 2))
    assert got == want
    client = mlflow_client(tmp_path)
    for t in refits:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and "mlflow.parentRunId" in run.data.tags
        assert run.data.params["train.epochs"] == "2" and run.data.params["train.augment.tta"] == "True"
        assert "mlflow_model_uri" in t.user_attrs


def test_refit_refuses_an_existing_file_and_a_study_without_results(tmp_path):
    # Rule: refit never overwrites a file, and a study with no COMPLETE trial is one clear line.
    write_study_files(tmp_path, "empty", n_trials=2)
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    create_study(tmp_path, storage)
    out = hpo_cmd(tmp_path, "refit", "empty", "-o", "r.yaml", "--storage", storage)
    assert out.returncode == 1 and "has no COMPLETE trial to refit" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r.yaml").exists()
    (tmp_path / "r.yaml").write_text("mine")
    out = hpo_cmd(tmp_path, "refit", "empty", "-o", "r.yaml", "--storage", storage)
    assert out.returncode == 1 and "r.yaml exists" in out.stderr
    assert (tmp_path / "r.yaml").read_text() == "mine"


@pytest.mark.parametrize(("seeds", "fragment"), [
    ([1, 1], "--seeds 1,1: seed 1 is given twice"),
    ([2, 3, 2, 3], "seed 2, 3 is given twice"),
    ([-5], "-5 is not a seed; seeds are whole numbers from 0 to 4294967295"),
])
def test_repeated_or_impossible_seeds_are_refused(seeds, fragment):
    # Rule: each seed refits every configuration once: a repeated seed would queue each twice and
    # be called two seeds; a seed numpy refuses would fail every refit.
    from hpo.errors import HpoError
    from hpo.study.refit import refit_space

    with pytest.raises(HpoError) as info:
        refit_space(None, None, top=1, seeds=seeds)  # type: ignore[arg-type]  refused before either is read
    assert fragment in str(info.value)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(folder, storage URL) of a study with one COMPLETE trial (added by hand: nothing trained)."""
    import optuna

    cwd = tmp_path_factory.mktemp("refit-out")
    write_study_files(cwd, "done", n_trials=2)
    storage = f"sqlite:///{cwd / 'hpo.db'}"
    create_study(cwd, storage)
    study = optuna.load_study(study_name="done", storage=storage)
    study.add_trial(optuna.trial.create_trial(
        params={"model.dropout.rate": 0.1}, value=0.2,
        distributions={"model.dropout.rate": optuna.distributions.FloatDistribution(0.0, 0.2, step=0.1)}))
    return cwd, storage


def test_refit_replaces_an_existing_file_only_with_overwrite(finished, tmp_path):
    # Rule: -o that exists is refused with one line naming it and --overwrite, left as it was;
    # with --overwrite it is replaced whole.
    cwd, storage = finished
    out = tmp_path / "r.yaml"
    out.write_text("mine")
    proc = hpo_cmd(cwd, "refit", "done", "-o", str(out), "--storage", storage)
    assert proc.returncode == 1 and "r.yaml exists" in proc.stderr and "--overwrite" in proc.stderr
    assert out.read_text() == "mine" and "Traceback" not in proc.stderr
    proc = hpo_cmd(cwd, "refit", "done", "-o", str(out), "--storage", storage, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(out.read_text())["study"]["name"] == "done-refit"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


@pytest.mark.parametrize("case", ["the database", "a folder", "under a file", "in /proc"])
def test_refit_output_where_it_cannot_go_is_one_line(finished, tmp_path, case):
    # Rule: -o naming the study's own database (even with --overwrite), a folder, a path under a
    # regular file, or a place no file can be made is one line naming it; nothing changes.
    cwd, storage = finished
    (tmp_path / "afile").write_text("keep")
    out = {"the database": str(cwd / "hpo.db"), "a folder": str(tmp_path),
           "under a file": str(tmp_path / "afile" / "r.yaml"), "in /proc": "/proc/r.yaml"}[case]
    before = (cwd / "hpo.db").stat().st_size
    proc = hpo_cmd(cwd, "refit", "done", "-o", out, "--storage", storage, "--overwrite")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hpo: error:")]
    assert proc.returncode == 1 and len(errors) == 1 and out in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and (cwd / "hpo.db").stat().st_size == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_refit_of_a_database_that_does_not_exist_creates_none(tmp_path):
    # Rule: a storage file that is not there is one line; SQLite does not get to create it empty.
    proc = hpo_cmd(tmp_path, "refit", "done", "-o", "r.yaml")
    assert proc.returncode == 1 and "hpo.db does not exist" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_refit_interrupted_while_writing_leaves_nothing(finished, tmp_path, monkeypatch):
    # Rule: a failure after part of the file is written leaves no file and no temporary.
    import pathlib

    from typer.testing import CliRunner

    from hpo.cli import app

    cwd, storage = finished

    def half(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_text", half)
    result = CliRunner().invoke(app, ["refit", "done", "-o", str(tmp_path / "r.yaml"), "--storage", storage])
    assert result.exit_code != 0 and list(tmp_path.iterdir()) == []
