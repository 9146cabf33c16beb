"""Per-cluster quality flags of `hpo predict`: where a mass leans on extrapolation or on little light.

    hpo predict xray-cluster-mass@champion clusters.h5 -o masses      # column flags, a bit mask

Bits (FLAGS, in the order of the table):
    1  z_outside_training         redshift outside the model's training clusters' range
    2  exposure_outside_training  exposure_s outside that range (a depth the model never saw)
    4  mass_outside_training      predicted log_mass outside the training masses' range
    8  faint                      net counts in the central aperture below 3 sigma of its background
   16  counts_outside_training    the cluster's total counts outside the training clusters' range

Bits 1, 2, 4 and 16 need the training ranges a logged model records in its metadata (models logged
before they were recorded have none: those bits are then never set, and the summary says so).
"""

from __future__ import annotations

import numpy as np

from hpo.data.baseline import APERTURE_FRACTION

FLAGS: dict[str, int] = {
    "z_outside_training": 1,
    "exposure_outside_training": 2,
    "mass_outside_training": 4,
    "faint": 8,
    "counts_outside_training": 16,
}
MEANING = {
    "z_outside_training": "redshift outside the model's training range",
    "exposure_outside_training": "exposure_s outside the model's training range",
    "mass_outside_training": "predicted log_mass outside the training masses' range",
    "faint": "net aperture counts below 3 sigma of the background",
    "counts_outside_training": "total counts outside the training clusters' range",
}
FAINT_SIGMA = 3.0
BACKGROUND_FRACTION = 0.4  # pixels beyond this share of the side from the centre are background


def cluster_flags(
    images: np.ndarray,
    redshift: np.ndarray,
    log_mass: np.ndarray,
    exposure: np.ndarray | None,
    ranges: dict[str, tuple[float, float]],
) -> tuple[np.ndarray, list[str]]:
    """The flags of each cluster and the names of the bits that could not be checked.

    Args:
        images: (N, H, W, C) counts.
        redshift: (N,) z.
        log_mass: (N,) predicted log10 M500.
        exposure: (N,) exposure_s, s, or None.
        ranges: the model's training ranges ({"redshift": (lo, hi), ...}; {} if it records none).

    Returns:
        flags (N,) int16 (a bit mask of FLAGS), and the bit names left unchecked.
    """
    flags = np.zeros(len(redshift), np.int16)
    unchecked = []
    counts = images.sum(axis=(1, 2, 3), dtype=np.float64)
    for name, key, values in (("z_outside_training", "redshift", redshift),
                              ("exposure_outside_training", "exposure_s", exposure),
                              ("mass_outside_training", "log_mass", log_mass),
                              ("counts_outside_training", "total_counts", counts)):
        if key not in ranges or values is None:
            unchecked.append(name)
            continue
        lo, hi = ranges[key]
        # NaN is outside every range: a mass the network could not give leans on nothing.
        outside = ~((np.asarray(values) >= lo) & (np.asarray(values) <= hi))
        flags[outside] |= FLAGS[name]
    flags[aperture_significance(images) < FAINT_SIGMA] |= FLAGS["faint"]
    return flags, unchecked


def aperture_significance(images: np.ndarray) -> np.ndarray:
    """(N,) net counts in the central aperture (radius APERTURE_FRACTION of the side, as the
    counts baseline's) over the Poisson sigma of the background expected there, the background
    per pixel read beyond BACKGROUND_FRACTION of the side from the centre (the cut-out's corners)."""
    _, h, w, _ = images.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy + 0.5 - h / 2, xx + 0.5 - w / 2)
    inner = r <= APERTURE_FRACTION * min(h, w)
    outer = r > BACKGROUND_FRACTION * min(h, w)
    per_pixel = images.sum(axis=3)
    source = per_pixel[:, inner].sum(axis=1, dtype=np.float64)
    background = per_pixel[:, outer].mean(axis=1, dtype=np.float64) * inner.sum()
    return (source - background) / np.sqrt(np.maximum(background, 1.0))


def names(flags: int) -> str:
    """The set bits of one cluster's flags as names joined by ';' ('' for none)."""
    return ";".join(name for name, bit in FLAGS.items() if flags & bit)
