"""The report-style scan plot of grid studies: mean and spread over seeds, floors as lines."""

from __future__ import annotations

import json

import numpy as np
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from optuna.trial import create_trial

from hpo.tracking.scan_plot import scan
from hpo.tracking.scan_plot import scanned_param

FILTERS = [1, 11, 21]


def _trial(value: float | None, state: TrialState = TrialState.COMPLETE, **params):
    dists = {k: CategoricalDistribution([v]) for k, v in params.items()}
    return create_trial(state=state, value=value, params=params, distributions=dists)


def _grid(placements=("every_dense",)):
    trials = []
    for placement in placements:
        for f in FILTERS:
            for seed in range(3):
                trials.append(_trial(0.3 - 0.005 * f + 0.01 * seed, **{
                    "model.filters": f, "model.dropout.placement": placement, "train.seed": seed}))
    return trials


def test_the_scanned_parameter_is_the_one_with_most_values_never_the_seed():
    # Rule: the x axis is the grid parameter with most distinct values; train.seed never is.
    trials = _grid(("every_dense", "one_dense"))
    assert scanned_param(trials, ["model.dropout.placement", "model.filters", "train.seed"]) == "model.filters"
    assert scanned_param([], ["model.filters"]) is None


def test_scan_draws_mean_and_std_over_seeds_and_the_floors():
    # Rule: one point per grid value at the mean over seeds, error bar = std; floors are horizontal lines.
    trials = _grid() + [_trial(None, TrialState.PRUNED, **{"model.filters": 31, "train.seed": 0})]
    fig = scan(trials, "model.filters", floors={"counts_baseline": 0.25, "oracle_floor": 0.12})
    ax = fig.axes[0]
    mean_line = next(line for line in ax.lines if line.get_label() == "every_dense" or
                     line.get_marker() == "o")
    x, y = mean_line.get_data()
    np.testing.assert_allclose(x, FILTERS)  # the pruned 31 is not a point
    np.testing.assert_allclose(y, [0.3 - 0.005 * f + 0.01 for f in FILTERS])
    horizontal = {round(line.get_ydata()[0], 3) for line in ax.lines if len(set(line.get_ydata())) == 1
                  and line.get_linestyle() in ("--", ":")}
    assert horizontal == {0.25, 0.12}
    labels = ax.get_legend_handles_labels()[1]
    assert any("counts baseline 0.250" in s for s in labels) and any("oracle floor 0.120" in s for s in labels)
    assert "3 seeds" in ax.get_title()


def test_categorical_choices_keep_the_grid_order_and_get_short_labels():
    # Rule: JSON-encoded choices (dicts) are ticks in the space's order, shown as k=v.
    choices = [json.dumps({"flips": False}), json.dumps({"flips": True, "rot90": True})]
    trials = [_trial(0.2 + i, **{"train.augment": c}) for i, c in enumerate(choices)]
    fig = scan(trials, "train.augment", x_order=list(reversed(choices)))
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["flips=True, rot90=True", "flips=False"]
