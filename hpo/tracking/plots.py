"""Figures logged with each trial: loss curves, predicted vs true, residuals, sigma calibration.

    hpo train run.yaml     # then plots/*.png in the run's artifacts
"""

from __future__ import annotations

from statistics import NormalDist

import matplotlib

matplotlib.use("Agg")  # no display on workers; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

RESIDUAL_BINS = 8  # bins of the running median and 16-84% band in the residual plots


def loss_curves(history: dict[str, list[float]], *, pruned_at: int | None = None) -> Figure:
    """Training loss and train/validation residual std against epoch.

    Args:
        pruned_at: for a pruned trial, the epoch (1-based) after which the pruner stopped it.
    """
    fig, (ax_loss, ax_std) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    ax_loss.plot(epochs, history.get("loss", []), label="train loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    for key, label in (("train_residual_std", "train"), ("val_residual_std", "validation")):
        if key in history:
            ax_std.plot(np.arange(1, len(history[key]) + 1), history[key], label=label)
    ax_std.set(xlabel="epoch", ylabel="residual std [dex]", title="Residual std")
    if pruned_at is not None:
        for ax in (ax_loss, ax_std):
            ax.axvline(pruned_at, color="r", ls="--", lw=1, label=f"pruned after epoch {pruned_at}")
    for ax in (ax_loss, ax_std):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def predicted_vs_true(mu: np.ndarray, true: np.ndarray, sigma: np.ndarray | None = None) -> Figure:
    """Scatter of predicted against true log10 M with the 1:1 line."""
    std = float(np.std(mu - true))
    return _against_one_to_one(
        true, mu, sigma, size=4.5, alpha=(0.2, 0.6), dot=6, xlabel="true log10 M500",
        ylabel="predicted log10 M500", title=f"Validation: residual std {std:.3f} dex")


def ours_vs_reference(mu: np.ndarray, reference: np.ndarray, sigma: np.ndarray | None,
                      source: str) -> Figure:
    """`hpo predict`'s comparison: our log10 M500 against a catalogue's, with the 1:1 line."""
    diff = mu - reference
    return _against_one_to_one(
        reference, mu, sigma, size=4.8, alpha=(0.25, 0.7), dot=8,
        xlabel=f"catalogue log10 M500 ({source})"[:70], ylabel="hpo predict log10 M500",
        title=f"{len(diff)} clusters: scatter {np.std(diff):.3f} dex, bias {np.mean(diff):+.3f} dex")


def _against_one_to_one(x: np.ndarray, y: np.ndarray, sigma: np.ndarray | None, *, size: float,
                        alpha: tuple[float, float], dot: float, xlabel: str, ylabel: str,
                        title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(size, size))
    if sigma is not None:
        ax.errorbar(x, y, yerr=sigma, fmt="none", alpha=alpha[0], lw=0.5)
    ax.scatter(x, y, s=dot, alpha=alpha[1])
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], "r-", lw=1, label="1:1")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    """Frees a figure that was saved rather than logged."""
    plt.close(fig)


def residuals_vs(x: np.ndarray, mu: np.ndarray, true: np.ndarray, *, xlabel: str) -> Figure:
    """Residual (predicted - true log10 M) against `x`, with its running median and 16-84% band.

    Args:
        x: (N,) what to plot against: true log10 M500, or redshift.
        mu: (N,) predicted log10 M.
        true: (N,) true log10 M.
        xlabel: the x axis label.
    """
    x = np.asarray(x, np.float64).ravel()
    resid = np.asarray(mu, np.float64) - np.asarray(true, np.float64)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.scatter(x, resid, s=6, alpha=0.5, label="clusters")
    _running_band(ax, x, resid)
    ax.axhline(0.0, color="r", lw=1)
    ax.set(xlabel=xlabel, ylabel="predicted - true log10 M500 [dex]",
           title=f"Validation residuals: std {np.std(resid):.3f}, bias {np.mean(resid):+.3f} dex")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def sigma_calibration(mu: np.ndarray, true: np.ndarray, sigma: np.ndarray) -> Figure:
    """Reliability of the predicted sigma: observed against nominal coverage, and the pulls.

    Left: for each nominal central coverage p, the share of clusters with |resid| / sigma below
    the Gaussian quantile of p (on the diagonal when sigma is calibrated; below it when sigma is
    too small). Right: histogram of resid / sigma against the standard normal.
    """
    pull = (np.asarray(mu, np.float64) - np.asarray(true, np.float64)) / np.maximum(
        np.asarray(sigma, np.float64), 1e-12)
    nominal = np.linspace(0.02, 0.98, 49)
    z = np.array([NormalDist().inv_cdf(0.5 + p / 2) for p in nominal])
    observed = np.array([np.mean(np.abs(pull) <= k) for k in z])
    fig, (ax_rel, ax_pull) = plt.subplots(1, 2, figsize=(9, 3.8))
    ax_rel.plot([0, 1], [0, 1], "r-", lw=1, label="calibrated")
    ax_rel.plot(nominal, observed, "o-", ms=3, label="model")
    cov68 = float(np.mean(np.abs(pull) <= 1.0))
    ax_rel.set(xlabel="nominal coverage", ylabel="observed coverage", xlim=(0, 1), ylim=(0, 1),
               title=f"Sigma reliability (68% -> {cov68:.2f})")
    ax_rel.legend(loc="upper left", fontsize="small")
    lim = max(4.0, float(np.percentile(np.abs(pull), 99)) if len(pull) else 4.0)
    ax_pull.hist(np.clip(pull, -lim, lim), bins=30, range=(-lim, lim), density=True, alpha=0.6,
                 label="resid / sigma")
    grid = np.linspace(-lim, lim, 200)
    ax_pull.plot(grid, [NormalDist().pdf(g) for g in grid], "r-", lw=1, label="N(0, 1)")
    ax_pull.set(xlabel="(predicted - true) / sigma", ylabel="density",
                title=f"Pulls: std {np.std(pull):.2f} (1 when calibrated)")
    ax_pull.legend(fontsize="small")
    for ax in (ax_rel, ax_pull):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _running_band(ax: Axes, x: np.ndarray, y: np.ndarray) -> None:
    """Median and 16-84% range of y in equal-count bins of x (skipped with too few points)."""
    if len(x) < 2 * RESIDUAL_BINS:
        return
    order = np.argsort(x)
    centres, med, lo, hi = [], [], [], []
    for idx in np.array_split(order, RESIDUAL_BINS):
        centres.append(np.median(x[idx]))
        q16, q50, q84 = np.percentile(y[idx], [16, 50, 84])
        med.append(q50)
        lo.append(q16)
        hi.append(q84)
    ax.fill_between(centres, lo, hi, color="C1", alpha=0.25, label="16-84%")
    ax.plot(centres, med, color="C1", lw=2, label="median")
