"""The two floors every model is judged against: the oracle floor (truth) and the counts baseline.

    hpo baseline data/mock.h5 [--json]

Both are linear least-squares fits of log10(M500) fitted on a deterministic 80% of the clusters
and scored on the other 20% as the standard deviation of (predicted - true), dex:
- oracle floor: on the noise-free truth log L (truth/log_lx), log10 kT (truth/kT) and log10 E(z),
  i.e. the best any estimator could do if photon noise vanished;
- counts baseline: on log10 aperture counts, two hardness ratios and z (with log E(z) and
  log D_L(z)), i.e. what the classic method reads from the image without a network;
- counts-rate baseline (with_exposure, for a file with exposure_s): the same with log10 exposure
  as one more feature, i.e. on count rates: the classic method on a file of mixed depths.
Neither floor changes for a file that gained exposure_s: the oracle floor is noise-free, and the
counts baseline is fitted within one file, whose depth the counts already carry.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from hpo.data.contract import Dataset
from hpo.data.cosmology import CosmologyConfig
from hpo.data.cosmology import FlatLCDM
from hpo.data.lazy import H5Source
from hpo.errors import DataContractError

FIT_FRACTION = 0.8
APERTURE_FRACTION = 0.2  # aperture radius as a share of the image side (10 px of 50)


def floors(ds: Dataset, seed: int = 0, *, with_exposure: bool = False) -> dict[str, Any]:
    """The oracle floor and the counts baseline of a data set.

    Args:
        ds: a validated data set with log_mass; truth/log_lx and truth/kT enable the oracle floor.
        seed: seed of the fit/evaluation shuffle (80% / 20%).
        with_exposure: also the counts-rate baseline, for a file with exposure_s.

    Returns:
        {"oracle_floor": dex or None (no truth/log_lx or truth/kT), "counts_baseline": dex,
        "n_fit": clusters fitted, "n_eval": clusters scored}, and "counts_rate_baseline" (dex)
        with `with_exposure` and exposure_s.

    Raises:
        DataContractError: no log_mass, fewer than 10 clusters, or non-positive truth/kT.
    """
    where = ds.path or "data set"
    if ds.log_mass is None:
        raise DataContractError(f"{where}: missing key 'log_mass', which the floors need")
    n = len(ds)
    if n < 10:
        raise DataContractError(f"{where}: the floors need at least 10 clusters, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_fit = int(round(FIT_FRACTION * n))
    fit, ev = order[:n_fit], order[n_fit:]
    y = ds.log_mass.astype(np.float64)
    z = ds.redshift.astype(np.float64)
    cosmo = FlatLCDM.from_config(_cosmology(ds.attrs))
    log_e = np.log10(cosmo.e(z))

    oracle = None
    if "log_lx" in ds.truth and "kT" in ds.truth:
        kt = ds.truth["kT"].astype(np.float64)
        if np.any(kt <= 0):
            raise DataContractError(
                f"truth/kT must be > 0: {where} key 'truth/kT' has "
                f"{int(np.sum(kt <= 0))} values <= 0"
            )
        features = np.column_stack([ds.truth["log_lx"].astype(np.float64), np.log10(kt), log_e])
        oracle = _residual_std(features, y, fit, ev)

    features = np.column_stack(
        [*_count_features(ds.images), z, log_e, np.log10(cosmo.luminosity_distance_mpc(z))]
    )
    out = {
        "oracle_floor": oracle,
        "counts_baseline": _residual_std(features, y, fit, ev),
        "n_fit": int(fit.size),
        "n_eval": int(ev.size),
    }
    if with_exposure and ds.exposure_s is not None:
        rates = np.column_stack([features, np.log10(ds.exposure_s.astype(np.float64))])
        out["counts_rate_baseline"] = _residual_std(rates, y, fit, ev)
    return out


def _count_features(images: np.ndarray) -> list[np.ndarray]:
    """log10 counts in a central aperture and log10 hardness ratios of its channel thirds."""
    _, h, w, c = images.shape
    yy, xx = np.mgrid[:h, :w]
    radius = APERTURE_FRACTION * min(h, w)
    mask = (((yy + 0.5 - h / 2) ** 2 + (xx + 0.5 - w / 2) ** 2) <= radius**2).astype(np.float32)
    per_channel = np.einsum("nhwc,hw->nc", images, mask, dtype=np.float64)  # (N, C)
    bands = [
        per_channel[:, idx].sum(axis=1) for idx in np.array_split(np.arange(c), 3) if idx.size
    ]
    out = [np.log10(per_channel.sum(axis=1) + 1.0)]
    out += [np.log10((b + 1.0) / (a + 1.0)) for a, b in zip(bands, bands[1:])]
    return out


def _residual_std(x: np.ndarray, y: np.ndarray, fit: np.ndarray, ev: np.ndarray) -> float:
    design = np.column_stack([np.ones(len(y)), x])
    coef, *_ = np.linalg.lstsq(design[fit], y[fit], rcond=None)
    return float(np.std(y[ev] - design[ev] @ coef))


def _cosmology(attrs: dict[str, Any]) -> CosmologyConfig:
    """The file's cosmology if the simulator recorded one, else the default flat LCDM."""
    raw = attrs.get("sim_config")
    if isinstance(raw, str):
        try:
            return CosmologyConfig(**json.loads(raw).get("cosmology", {}))
        except (ValueError, TypeError, AttributeError):
            pass  # a foreign or older config: the default cosmology is the documented fallback
    return CosmologyConfig()


FLOORS_MAX_CLUSTERS = 20_000  # enough for floors to 3 digits; a streamed file is not read whole


def data_summary(dataset: Dataset | H5Source) -> dict:
    """What a study's parent run records about its data: fingerprint, path and (labelled) floors."""
    info: dict = {"fingerprint": dataset.fingerprint(), "path": str(dataset.path)}
    if dataset.log_mass is not None:
        sample = dataset
        if isinstance(dataset, H5Source):
            sample = dataset.subset(np.arange(min(len(dataset), FLOORS_MAX_CLUSTERS)))
        info["floors"] = {k: v for k, v in floors(sample).items() if v is not None}
    return info
