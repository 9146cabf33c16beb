"""Figures logged with each trial: loss curves and predicted against true mass."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on workers; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def loss_curves(history: dict[str, list[float]]) -> Figure:
    """Training loss and train/validation residual std against epoch."""
    fig, (ax_loss, ax_std) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    ax_loss.plot(epochs, history.get("loss", []), label="train loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    for key, label in (("train_residual_std", "train"), ("val_residual_std", "validation")):
        if key in history:
            ax_std.plot(np.arange(1, len(history[key]) + 1), history[key], label=label)
    ax_std.set(xlabel="epoch", ylabel="residual std [dex]", title="Residual std")
    for ax in (ax_loss, ax_std):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def predicted_vs_true(mu: np.ndarray, true: np.ndarray, sigma: np.ndarray | None = None) -> Figure:
    """Scatter of predicted against true log10 M with the 1:1 line."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if sigma is not None:
        ax.errorbar(true, mu, yerr=sigma, fmt="none", alpha=0.2, lw=0.5)
    ax.scatter(true, mu, s=6, alpha=0.6)
    lo, hi = float(min(true.min(), mu.min())), float(max(true.max(), mu.max()))
    ax.plot([lo, hi], [lo, hi], "r-", lw=1, label="1:1")
    std = float(np.std(mu - true))
    ax.set(xlabel="true log10 M500", ylabel="predicted log10 M500",
           title=f"Validation: residual std {std:.3f} dex")
    ax.legend()
    fig.tight_layout()
    return fig
