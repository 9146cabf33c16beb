"""Residual metrics of mass predictions, in dex: the numbers every trial is judged by."""

from __future__ import annotations

import math

import keras
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


STREAMING_KINDS = ("residual_std", "bias", "rmse", "outlier_frac", "coverage68", "nll")


def streaming_metrics(with_sigma: bool) -> list:
    """Keras metrics that score the training batches as they pass, at no extra forward pass."""
    return [StreamingResidual(with_sigma=with_sigma)]


class StreamingResidual(keras.metrics.Metric):
    """residual_metrics' numbers, accumulated over an epoch's batches in one set of sums.

    y_pred is (N, 1) = [mu] or (N, 2) = [mu, sigma]; y_true is (N,) log10 M. The result is a
    dict, which Keras spreads into the epoch logs as residual_std, bias, rmse, outlier_frac
    (and coverage68, nll with sigma).
    """

    def __init__(self, with_sigma: bool = False, name: str = "residuals", **kwargs: object) -> None:
        super().__init__(name=name, **kwargs)  # type: ignore[arg-type]
        self.with_sigma = with_sigma
        self._sums = self.add_variable(shape=(6,), initializer="zeros", name="sums")

    def update_state(self, y_true, y_pred, sample_weight=None):  # noqa: ANN001, ANN201
        from keras import ops

        y_pred = ops.cast(y_pred, "float32")
        r = y_pred[:, 0] - ops.reshape(ops.cast(y_true, "float32"), (-1,))
        zero = ops.zeros(())
        covered = nll = zero
        if self.with_sigma:
            s = ops.maximum(y_pred[:, 1], 1e-12)
            covered = ops.sum(ops.cast(ops.abs(r) <= s, "float32"))
            nll = ops.sum(ops.log(s) + 0.5 * ops.square(r / s) + 0.5 * math.log(2 * math.pi))
        self._sums.assign_add(ops.stack([
            ops.cast(ops.shape(r)[0], "float32"), ops.sum(r), ops.sum(r * r),
            ops.sum(ops.cast(ops.abs(r) > OUTLIER_DEX, "float32")), covered, nll,
        ]))

    def result(self):  # noqa: ANN201
        from keras import ops

        sums = self._sums.value
        n = ops.maximum(sums[0], 1.0)
        mean = sums[1] / n
        out = {
            "residual_std": ops.sqrt(ops.maximum(sums[2] / n - mean * mean, 0.0)),
            "bias": mean,
            "rmse": ops.sqrt(sums[2] / n),
            "outlier_frac": sums[3] / n,
        }
        if self.with_sigma:
            out.update(coverage68=sums[4] / n, nll=sums[5] / n)
        return out

    def get_config(self) -> dict:
        return {**super().get_config(), "with_sigma": self.with_sigma}
