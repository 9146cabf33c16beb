"""Residual metrics of mass predictions, in dex: the numbers every trial is judged by."""

from __future__ import annotations

import math

import numpy as np

OUTLIER_DEX = 0.5  # |predicted - true| above this counts as an outlier (about a factor of 3 in mass)


def residual_metrics(
    mu: np.ndarray, true: np.ndarray, sigma: np.ndarray | None = None
) -> dict[str, float]:
    """Scores predictions against the truth.

    Args:
        mu: (N,) predicted log10 M.
        true: (N,) true log10 M.
        sigma: (N,) predicted 1-sigma uncertainty in dex, or None for a point estimator.

    Returns:
        residual_std (the study metric), bias, rmse, outlier_frac, and with sigma also nll and
        coverage68 (share of clusters whose truth lies within mu +- sigma; 0.683 when calibrated).
    """
    resid = np.asarray(mu, np.float64) - np.asarray(true, np.float64)
    out = {
        "residual_std": float(np.std(resid)),
        "bias": float(np.mean(resid)),
        "rmse": float(np.sqrt(np.mean(resid**2))),
        "outlier_frac": float(np.mean(np.abs(resid) > OUTLIER_DEX)),
    }
    if sigma is not None:
        s = np.maximum(np.asarray(sigma, np.float64), 1e-12)
        out["nll"] = float(np.mean(np.log(s) + 0.5 * (resid / s) ** 2 + 0.5 * math.log(2 * math.pi)))
        out["coverage68"] = float(np.mean(np.abs(resid) <= s))
    return out
