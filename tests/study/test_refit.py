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
