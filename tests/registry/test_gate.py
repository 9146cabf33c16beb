"""The champion gate's paired comparison, on predictions whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from hpo.registry.gate import compare


def _case(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    true = rng.uniform(13, 15, n)
    shared = rng.normal(0, 0.2, n)  # what both models get wrong alike
    return rng, true, shared


def test_a_clearly_better_challenger_wins_and_an_equal_one_does_not():
    # Rule: the gain is the champion's score minus the challenger's; the challenger wins only
    # with gain > min_gain and a 95% interval above 0; a copy of the champion never wins.
    rng, true, shared = _case()
    champion = (true + shared + rng.normal(0, 0.1, len(true)), None)
    challenger = (true + shared, None)
    won = compare("residual_std", true, challenger, champion, min_gain=0.005, champion_version="1", on="test")
    assert won.better and won.gain > 0.005 and 0 < won.low < won.gain < won.high
    assert won.tags()["hpo.gate.verdict"] == "challenger better" and won.tags()["hpo.gate.clusters"] == "400"
    tie = compare("residual_std", true, champion, champion, min_gain=0.0, champion_version="1", on="test")
    assert not tie.better and tie.gain == 0 and tie.low == tie.high == 0
    margin = compare("residual_std", true, challenger, champion, min_gain=1.0, champion_version="1", on="test")
    assert not margin.better and margin.tags()["hpo.gate.verdict"] == "champion kept"


def test_pairing_narrows_the_interval_of_models_that_share_their_errors():
    # Rule: resampling clusters jointly cancels what both models share: the interval is far
    # narrower than the spread of either model's own score.
    rng, true, shared = _case(seed=1)
    a = (true + shared, None)
    b = (true + shared + rng.normal(0, 0.03, len(true)), None)
    c = compare("rmse", true, a, b, min_gain=0.0, champion_version="1", on="test")
    own = [np.sqrt(np.mean((shared[i]) ** 2)) for i in rng.integers(0, len(true), (500, len(true)))]
    assert c.high - c.low < 0.25 * (np.quantile(own, 0.975) - np.quantile(own, 0.025))


def test_rmse_sees_a_bias_that_residual_std_ignores_and_nll_needs_sigma():
    # Rule: a constant shift costs rmse, not residual std; nll without a sigma head is refused.
    _, true, shared = _case(seed=2)
    shifted = (true + shared + 0.1, None)
    plain = (true + shared, None)
    assert compare("residual_std", true, plain, shifted, min_gain=0.0, champion_version="1", on="test").gain == pytest.approx(0, abs=1e-12)
    assert compare("rmse", true, plain, shifted, min_gain=0.005, champion_version="1", on="test").better
    sigma = np.full(len(true), 0.2)
    assert compare("nll", true, (plain[0], sigma), (shifted[0], sigma), min_gain=0.0, champion_version="1", on="test").better
    with pytest.raises(ValueError, match="sigma head"):
        compare("nll", true, plain, (shifted[0], sigma), min_gain=0.0, champion_version="1", on="test")
