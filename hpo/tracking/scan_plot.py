"""The lab report's scan plot of a grid study: the metric against the scanned parameter.

    hpo report filters     # report/scan.png in the study's parent run

One line per combination of the other grid parameters; at each value of the scanned parameter,
the mean over seeds (`train.seed`, from study.repeats) with a +-1 std error bar and every seed
as a faint dot; the counts baseline and the oracle floor of the data as horizontal lines.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from hpo.keys import METRIC
from hpo.tracking import plots  # noqa: F401  (selects the Agg backend before pyplot)

SEED_PARAM = "train.seed"
FLOOR_STYLES = {  # line style, colour, legend name
    "counts_baseline": ("--", "0.4", "counts baseline"),
    "feature_baseline": ("-.", "tab:red", "feature baseline (trees)"),
    "oracle_floor": (":", "k", "oracle floor"),
}


def scanned_param(trials: Sequence[FrozenTrial], order: Sequence[str]) -> str | None:
    """The grid parameter with most distinct values among `trials` (ties: first in `order`)."""
    counts = {p: len({repr(t.params[p]) for t in trials if p in t.params})
              for p in order if p != SEED_PARAM}
    counts = {p: n for p, n in counts.items() if n > 0}
    return max(counts, key=lambda p: (counts[p], -list(order).index(p))) if counts else None


def scan(
    trials: Sequence[FrozenTrial],
    x_param: str,
    *,
    x_order: Sequence[Any] = (),
    metric: str = METRIC,
    floors: dict[str, float] | None = None,
    title: str = "",
) -> Figure:
    """The scan figure of the COMPLETE trials among `trials`.

    Args:
        trials: a grid study's trials; params other than x_param and train.seed make the lines.
        x_param: the scanned parameter (dotted config path).
        x_order: its grid values in the order to draw them (categorical axes); numbers are sorted.
        metric: the objective's name, for the y axis (dex).
        floors: {"counts_baseline": dex, "feature_baseline": dex, "oracle_floor": dex}, each
            optional.
        title: the figure title (default: metric against x_param); the spread follows it.
    """
    import matplotlib.pyplot as plt

    done = [t for t in trials
            if t.state == TrialState.COMPLETE and x_param in t.params and t.value is not None]
    others = sorted({p for t in done for p in t.params} - {x_param, SEED_PARAM})
    xs = [t.params[x_param] for t in done]
    numeric = bool(xs) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    if numeric:
        positions = {x: float(x) for x in sorted(set(xs))}
    else:
        extra = sorted({x for x in xs if x not in set(x_order)}, key=repr)
        ordered = [x for x in x_order if x in set(xs)] + extra
        positions = {x: float(i) for i, x in enumerate(ordered)}

    series: dict[tuple, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in done:
        series[tuple(t.params.get(p) for p in others)][t.params[x_param]].append(float(t.value))  # type: ignore[arg-type]

    fig, ax = plt.subplots(figsize=(max(6.5, 0.8 * len(positions) + 3), 4.5))
    n_seeds = max((len(v) for s in series.values() for v in s.values()), default=0)
    for i, (key, by_x) in enumerate(sorted(series.items(), key=lambda kv: repr(kv[0]))):
        xv = sorted(by_x, key=lambda x: positions[x])
        offset = (i - (len(series) - 1) / 2) * 0.06 if not numeric else 0.0  # keep bars apart
        px = np.array([positions[x] + offset for x in xv])
        mean = np.array([np.mean(by_x[x]) for x in xv])
        std = np.array([np.std(by_x[x]) for x in xv])
        label = ", ".join(f"{p.split('.')[-1]}={_label(v)}"
                          for p, v in zip(others, key, strict=True)) or "mean"
        line = ax.errorbar(px, mean, yerr=std, marker="o", ms=5, capsize=3, lw=1.5, label=label)
        for x, p in zip(xv, px, strict=True):
            ax.scatter([p] * len(by_x[x]), by_x[x], s=10, alpha=0.35, color=line[0].get_color())
    for floor, value in (floors or {}).items():
        if floor in FLOOR_STYLES and value is not None and np.isfinite(value):
            style, color, name = FLOOR_STYLES[floor]
            ax.axhline(value, ls=style, color=color, lw=1.2, label=f"{name} {value:.3f} dex")
    if numeric:
        values = np.array(list(positions.values()))
        if values.size and values.min() > 0 and values.max() / values.min() >= 50:
            ax.set_xscale("log")
    else:
        labels = [_label(x) for x in positions]
        slanted = max(map(len, labels), default=0) > 8
        ax.set_xticks(list(positions.values()), labels, rotation=30 if slanted else 0,
                      ha="right" if slanted else "center")
    spread = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one run per point"
    head = title or f"{metric} against {x_param}"
    ax.set(xlabel=x_param, ylabel=f"{metric} [dex]", title=f"{head}\n{spread}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def _label(value: Any, width: int = 32) -> str:
    """A short tick or legend label; JSON-encoded choices become k=v lists."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, dict):
        text = ", ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}"
                         for k, v in value.items())
    elif isinstance(value, float):
        text = f"{value:.3g}"
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."
