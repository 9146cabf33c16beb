"""Aperture photometry of count images: what an X-ray astronomer measures before any model.

    phot = aperture_photometry(ds.images)       # counts per aperture and channel, background
    phot.net_counts()                            # (N, A, C): background-subtracted counts

Concentric circular apertures around the image centre (where a cut-out puts the cluster) of
APERTURE_RADII x the image side (2.5, 5, 7.5, 10 and 15 pixels of a 50-pixel image, 20" to 120"
at 8"/pixel; 10 pixels is the aperture of the counts baseline; at least 1 pixel), each cumulative
(every photon within the radius), per energy channel; and the background per pixel and channel,
the mean over an annulus from BACKGROUND_INNER x the side to the image edge (corners included:
1236 of 2500 pixels of a 50-pixel image), scaled to each aperture's area for the net counts. A
pixel belongs to an aperture when its centre lies within the radius.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

APERTURE_RADII = (0.05, 0.10, 0.15, 0.20, 0.30)  # shares of the image side (min of H, W)
BACKGROUND_INNER = 0.40  # the background annulus starts here (share of the side) and runs to the edge
_CHUNK = 512  # clusters summed at once (a float64 copy of 512 images of 50 x 50 x 10 is 100 MB)


@dataclass(frozen=True)
class Photometry:
    """Aperture counts of N images.

    Attributes:
        counts: (N, A, C) counts within each of the A apertures (smallest first), per channel.
        background: (N, C) background counts per pixel, per channel (the annulus mean).
        areas: (A,) pixels within each aperture.
        background_area: pixels of the background annulus.
    """

    counts: np.ndarray
    background: np.ndarray
    areas: np.ndarray
    background_area: int

    def net_counts(self) -> np.ndarray:
        """(N, A, C) counts minus the background scaled to each aperture's area (may be < 0)."""
        return self.counts - self.background[:, None, :] * self.areas[None, :, None]


def aperture_masks(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The apertures' masks (A, H, W) and the background annulus' mask (H, W), as booleans."""
    yy, xx = np.mgrid[:h, :w]
    r2 = (yy + 0.5 - h / 2) ** 2 + (xx + 0.5 - w / 2) ** 2
    side = min(h, w)
    apertures = np.stack([r2 <= max(f * side, 1.0) ** 2 for f in APERTURE_RADII])
    return apertures, r2 >= (BACKGROUND_INNER * side) ** 2


def aperture_photometry(images: np.ndarray) -> Photometry:
    """Counts per aperture and channel and the background per pixel of (N, H, W, C) images.

    Raises:
        ValueError: an image too small for a background annulus outside the apertures (below
            3 x 3 pixels).
    """
    n, h, w, c = images.shape
    apertures, annulus = aperture_masks(h, w)
    if not apertures.any(axis=(1, 2)).all() or not annulus.any():
        raise ValueError(f"images of {h} x {w} pixels are too small for aperture photometry")
    weights = np.concatenate([apertures, annulus[None]]).reshape(len(apertures) + 1, h * w)
    weights = weights.astype(np.float64)
    sums = np.empty((n, len(weights), c))
    for start in range(0, n, _CHUNK):
        block = np.asarray(images[start : start + _CHUNK], dtype=np.float64).reshape(-1, h * w, c)
        sums[start : start + _CHUNK] = np.matmul(weights, block)  # (B, A + 1, C)
    background_area = int(annulus.sum())
    return Photometry(
        counts=sums[:, :-1],
        background=sums[:, -1] / background_area,
        areas=apertures.sum(axis=(1, 2)).astype(np.float64),
        background_area=background_area,
    )
