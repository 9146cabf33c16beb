"""Losses by name: MSE on the mean, and the Gaussian negative log-likelihood of the lab report.

The model's output is (N, 1) = [mu] or (N, 2) = [mu, sigma] with sigma > 0 in dex.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from keras import ops

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def mse(y_true: Any, y_pred: Any) -> Any:
    """Mean squared error of the predicted mean (first column)."""
    y_true = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1,))
    return ops.mean(ops.square(y_pred[:, 0] - y_true))


def gaussian_nll(y_true: Any, y_pred: Any) -> Any:
    """-log N(y | mu, sigma^2), averaged: log sigma + (y - mu)^2 / (2 sigma^2) + log(2 pi) / 2."""
    y_true = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1,))
    mu, sigma = y_pred[:, 0], y_pred[:, 1]
    z = (y_true - mu) / sigma
    return ops.mean(ops.log(sigma) + 0.5 * ops.square(z) + _HALF_LOG_2PI)


LOSSES: dict[str, Callable[[Any, Any], Any]] = {"mse": mse, "gaussian_nll": gaussian_nll}
