"""Trial figures: residuals against mass and redshift, and the reliability of a predicted sigma."""

from __future__ import annotations

import numpy as np

from hpo.tracking import plots


def _predictions(n: int = 400, sigma_scale: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    true = rng.uniform(13, 15, n)
    sigma = rng.uniform(0.05, 0.3, n)
    mu = true + rng.normal(0, sigma)
    return mu, true, sigma * sigma_scale


def test_residual_plots_show_the_residuals_with_a_running_band():
    # Rule: residuals (predicted - true) are scattered against x, with the zero line and a median band.
    mu, true, _ = _predictions()
    z = np.linspace(0.05, 1.0, len(mu))
    for x, label in ((true, "true log10 M500"), (z, "redshift z")):
        fig = plots.residuals_vs(x, mu, true, xlabel=label)
        ax = fig.axes[0]
        assert ax.get_xlabel() == label
        scatter = ax.collections[0].get_offsets()
        np.testing.assert_allclose(scatter[:, 1], mu - true)
        assert {line.get_label() for line in ax.lines} >= {"median"}
        assert "std" in ax.get_title() and "bias" in ax.get_title()


def test_sigma_calibration_of_calibrated_predictions_lies_on_the_diagonal():
    # Rule: when |resid|/sigma follows N(0, 1), observed coverage matches nominal coverage.
    fig = plots.sigma_calibration(*_predictions(4000))
    rel = fig.axes[0]
    nominal, observed = rel.lines[1].get_data()
    assert np.max(np.abs(observed - nominal)) < 0.05
    covered = float(rel.get_title().split("68% -> ")[1].rstrip(")"))
    assert abs(covered - 0.683) < 0.03


def test_sigma_calibration_shows_an_overconfident_sigma_below_the_diagonal():
    # Rule: a sigma half as large as the truth covers fewer clusters than it promises.
    fig = plots.sigma_calibration(*_predictions(4000, sigma_scale=0.5))
    nominal, observed = fig.axes[0].lines[1].get_data()
    assert np.all(observed[5:-5] < nominal[5:-5])
