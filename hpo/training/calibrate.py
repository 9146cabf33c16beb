"""Calibration of a trained model on clusters it never trained on: a shift of log mass (per bin of
exposure) and a scale of sigma, both fitted here and applied by the model's last layers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpo.config.tree import RunConfig

ONE_SIGMA = 0.6827  # the share of a Gaussian within 1 sigma: what a calibrated coverage68 is
CLUSTERS_PER_BIN = 400  # measure a bin's mean residual to ~0.01 dex, half the depth target's band


@dataclass(frozen=True)
class Shift:
    """A shift of log mass, piecewise linear in log10 exposure through its knots and constant
    beyond them (as the LogMassShift layer applies it)."""

    # (bins,) non-decreasing (bins left empty repeat the last knot); zeros for one bin
    log_exposure_knots: np.ndarray
    shift: np.ndarray  # (bins,) dex, added to log mass

    def __call__(self, mu: np.ndarray, exposure: np.ndarray | None) -> np.ndarray:
        if len(self.shift) == 1 or exposure is None:
            return mu + self.shift[0]
        return mu + np.interp(np.log10(exposure), self.log_exposure_knots, self.shift)

    def as_dict(self) -> dict[str, list[float]]:
        return {"exposure_s": [float(10**k) for k in self.log_exposure_knots],
                "shift_dex": [float(s) for s in self.shift]}


def bias_shift(mu: np.ndarray, true: np.ndarray, exposure: np.ndarray | None, bins: int) -> Shift:
    """Minus the mean residual in `bins` equal-count bins of log10 exposure, at each bin's mean log
    exposure (one bin, at knot 0, when `exposure` is None or bins is 1)."""
    residual = np.asarray(mu, np.float64) - np.asarray(true, np.float64)
    if exposure is None or bins == 1:
        return Shift(np.zeros(1), np.array([-residual.mean()]))
    t = np.log10(np.asarray(exposure, np.float64))
    # Equal-count bins whose edges are quantiles, so that clusters of one exposure (a file of a
    # few depths) always share a bin; bins left empty by such ties repeat the last knot.
    inner = np.quantile(t, np.arange(1, bins) / bins)
    which = np.searchsorted(inner, t, side="right")
    used = np.unique(which)
    knots = [t[which == b].mean() for b in used]
    shift = [-residual[which == b].mean() for b in used]
    pad = bins - len(used)
    return Shift(np.array(knots + knots[-1:] * pad), np.array(shift + shift[-1:] * pad))


def shift_bins(cfg: RunConfig) -> int | None:
    """The bins of a run's log-mass shift: None without train.calibrate_bias, one for a model
    that does not take the exposure."""
    if not cfg.train.calibrate_bias:
        return None
    return cfg.train.calibrate_bias_bins if cfg.model.use_exposure else 1


def too_few(cfg: RunConfig, n_calibration: int, where: str) -> str:
    """Why `n_calibration` clusters (`where`: "the validation split holds", or a file's) cannot
    calibrate the run, or ''."""
    bins = shift_bins(cfg)
    if bins is None or n_calibration >= bins * CLUSTERS_PER_BIN:
        return ""
    return (f"train.calibrate_bias with {bins} bin(s) needs {bins * CLUSTERS_PER_BIN} calibration clusters "
            f"and {where} {n_calibration}: set data.calibration_path to a labelled file never trained on "
            "(hpo simulate with another seed), or fewer train.calibrate_bias_bins")


def sigma_scale(mu: np.ndarray, sigma: np.ndarray, true: np.ndarray) -> float:
    """The factor on sigma that leaves 68.27% of |predicted - true| within 1 sigma."""
    z = np.abs(np.asarray(mu, np.float64) - np.asarray(true, np.float64)) / np.asarray(sigma, np.float64)
    return float(np.quantile(z, ONE_SIGMA))
