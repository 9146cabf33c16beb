"""Samplers per worker: a grid shared by several workers runs every point exactly once."""

from __future__ import annotations

import optuna

from hpo.config.space import parse_space
from hpo.engines.suggest import suggest_overrides
from hpo.study.samplers import make_sampler


def _space(sampler: str):
    return parse_space(
        {
            "study": {"name": "g", "sampler": {"type": sampler, "seed": 0}, "n_trials": 16},
            "params": {
                "model.dropout.rate": {"categorical": [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5]},
                "model.dropout.placement": {"categorical": ["every_dense", "one_dense"]},
            },
        },
        source="g.yaml",
    )


def test_two_workers_share_one_grid_and_cover_it_without_duplicates(tmp_path):
    space = _space("grid")
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    optuna.create_study(study_name="g", storage=storage)
    workers = [optuna.load_study(study_name="g", storage=storage, sampler=make_sampler(space, i))
               for i in range(2)]
    seen = []

    def objective(trial: optuna.Trial) -> float:
        point = suggest_overrides(trial, space)
        seen.append((point["model.dropout.rate"], point["model.dropout.placement"]))
        return 0.2

    for n in range(space.grid_size()):
        workers[n % 2].optimize(objective, n_trials=1)  # the workers take turns
    assert len(set(seen)) == len(seen) == 16


def test_random_workers_draw_differently():
    space = parse_space(
        {"study": {"name": "r", "sampler": {"type": "random", "seed": 0}, "n_trials": 4},
         "params": {"model.dropout.rate": {"float": [0.0, 0.5]}}},
        source="r.yaml",
    )
    draws = []
    for i in range(2):
        study = optuna.create_study(sampler=make_sampler(space, i))
        draws.append(suggest_overrides(study.ask(), space)["model.dropout.rate"])
    assert draws[0] != draws[1]


def test_a_lost_grid_point_waiting_to_run_again_keeps_the_grid_open(tmp_path):
    from optuna.trial import TrialState

    from hpo.study.budget import grid_exhausted


    space = parse_space(
        {"study": {"name": "g", "sampler": {"type": "grid", "seed": 0}},
         "params": {"model.dropout.rate": {"categorical": [0.0, 0.1, 0.2]}}},
        source="g.yaml",
    )
    study = optuna.create_study(sampler=make_sampler(space))
    study.optimize(lambda t: suggest_overrides(t, space)["model.dropout.rate"], n_trials=2)
    lost: dict = {}

    def dies(trial: optuna.Trial) -> float:  # the last point; its worker is lost mid-trial
        lost.update(suggest_overrides(trial, space))
        raise RuntimeError("worker lost")

    study.optimize(dies, n_trials=1, catch=(RuntimeError,))
    study.enqueue_trial(lost)  # as the reaper re-queues a lost trial
    assert not grid_exhausted(study, space)
    study.optimize(lambda t: suggest_overrides(t, space)["model.dropout.rate"], n_trials=1)
    assert grid_exhausted(study, space)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
