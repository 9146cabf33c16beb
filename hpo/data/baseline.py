"""The floors every model is judged against: the oracle floor (truth), the counts baseline and the
feature baseline (gradient-boosted trees on aperture photometry).

    hpo baseline data/mock.h5 [--json]

Each is fitted on a deterministic 80% of the clusters (a shuffle with `seed`, 0 by default) and
scored on the other 20%, the same clusters for all three so they stand side by side, as the
standard deviation of (predicted - true) log10(M500), dex:
- oracle floor: a linear least-squares fit on the noise-free truth log L (truth/log_lx),
  log10 kT (truth/kT) and log10 E(z), i.e. the best any estimator could do if photon noise
  vanished;
- counts baseline: a linear fit on log10 aperture counts, two hardness ratios and z (with
  log E(z) and log D_L(z)), i.e. what the classic method reads from the image without a network;
- counts-rate baseline (with_exposure, for a file with exposure_s): the same with log10 exposure
  as one more feature, i.e. on count rates: the classic method on a file of mixed depths;
- feature baseline: gradient-boosted trees (scikit-learn's HistGradientBoostingRegressor) on
  aperture photometry (hpo.data.photometry: counts per channel in 5 concentric apertures, the
  background per channel from an outer annulus, net counts, hardness ratios, concentrations and
  a luminosity proxy per aperture), z, log E(z), log D_L and, where the file has it, log10
  exposure_s: the estimator a scientist tries first, and the one a CNN must beat to be worth its
  cost. `feature_baseline(ds, train, test)` scores it on given clusters, e.g. a model's own
  training and test split (hpo.data.split), for a results table.
Neither linear floor changes for a file that gained exposure_s: the oracle floor is noise-free,
and the counts baseline is fitted within one file, whose depth the counts already carry. The
feature baseline uses exposure_s where present: it is data, as a real survey knows it.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from hpo.data.contract import Dataset
from hpo.data.cosmology import CosmologyConfig
from hpo.data.cosmology import FlatLCDM
from hpo.data.lazy import H5Source
from hpo.data.photometry import aperture_photometry
from hpo.errors import DataContractError

FIT_FRACTION = 0.8
APERTURE_FRACTION = 0.2  # aperture radius as a share of the image side (10 px of 50)
FEATURE_MIN_CLUSTERS = 50  # clusters the trees need to fit (10% of them stop the boosting early)
# The trees' settings: a few hundred rounds at a moderate rate, stopped when 20 rounds in a row
# do not improve the squared error on 10% of the fitted clusters held out inside the fit.
TREE_PARAMS = {"learning_rate": 0.08, "max_iter": 400, "max_leaf_nodes": 31, "min_samples_leaf": 20,
               "l2_regularization": 1.0, "early_stopping": True, "validation_fraction": 0.1,
               "n_iter_no_change": 20}


def floors(ds: Dataset, seed: int = 0, *, with_exposure: bool = False,
           features: bool = True, features_max_fit: int | None = None) -> dict[str, Any]:
    """The oracle floor, the counts baseline and the feature baseline of a data set.

    Args:
        ds: a validated data set with log_mass; truth/log_lx and truth/kT enable the oracle floor.
        seed: seed of the fit/evaluation shuffle (80% / 20%), and of the trees.
        with_exposure: also the counts-rate baseline, for a file with exposure_s.
        features: also the feature baseline (the trees; 1-3 s for 10,000 clusters on 2 cores).
        features_max_fit: fit the trees on only the first this many of the fit clusters (a random
            subset: the fit clusters are shuffled), still scored on all the eval clusters.

    Returns:
        {"oracle_floor": dex or None (no truth/log_lx or truth/kT), "counts_baseline": dex,
        "feature_baseline": dex or None, "feature_baseline_bias": mean (predicted - true), dex,
        "feature_baseline_n_fit": clusters the trees fitted, "n_fit": clusters fitted, "n_eval":
        clusters scored}: every floor is fitted on the same n_fit clusters (the trees on
        feature_baseline_n_fit of them, all unless capped) and scored on the same n_eval;
        "feature_baseline_skipped" (why it is
        None: fewer than FEATURE_MIN_CLUSTERS clusters, or images too small for apertures)
        instead of the bias when it is None; and "counts_rate_baseline" (dex) with
        `with_exposure` and exposure_s. Without `features`, no feature_baseline* keys.

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
        truth = np.column_stack([ds.truth["log_lx"].astype(np.float64), np.log10(kt), log_e])
        oracle = _residual_std(truth, y, fit, ev)

    counts = np.column_stack(
        [*_count_features(ds.images), z, log_e, np.log10(cosmo.luminosity_distance_mpc(z))]
    )
    out = {
        "oracle_floor": oracle,
        "counts_baseline": _residual_std(counts, y, fit, ev),
        "n_fit": int(fit.size),
        "n_eval": int(ev.size),
    }
    if with_exposure and ds.exposure_s is not None:
        rates = np.column_stack([counts, np.log10(ds.exposure_s.astype(np.float64))])
        out["counts_rate_baseline"] = _residual_std(rates, y, fit, ev)
    if features:
        try:
            trees = feature_baseline(ds, fit[:features_max_fit], ev, seed=seed)
        except FeatureBaselineUnavailable as exc:
            out.update(feature_baseline=None, feature_baseline_skipped=exc.reason)
        else:
            out.update(feature_baseline=trees["residual_std"], feature_baseline_bias=trees["bias"],
                       feature_baseline_n_fit=trees["n_train"])
    return out


class FeatureBaselineUnavailable(DataContractError):
    """Too few clusters, or images too small, for the feature baseline; `reason` says which."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: the feature baseline needs {reason}")
        self.reason = f"needs {reason}"


def feature_baseline(ds: Dataset, train: np.ndarray, test: np.ndarray, *, seed: int = 0
                     ) -> dict[str, Any]:
    """Gradient-boosted trees on aperture photometry, fitted on `train` and scored on `test`.

    `floors` calls it on its 80% / 20% shuffle; a results table calls it on a model's own split
    (hpo.data.split.split_indices: train, and test or validation) to put it beside that model on
    exactly its clusters. The trees hold out 10% of `train` (drawn with `seed`) to stop early.

    Args:
        ds: a validated data set with log_mass.
        train, test: indices of the clusters to fit and to score, disjoint.
        seed: the trees' random_state (the early-stopping holdout); the same seed, the same number.

    Returns:
        {"residual_std": std of (predicted - true) on `test`, dex, "bias": their mean, dex,
        "n_train": len(train), "n_test": len(test), "iterations": boosting rounds kept}.

    Raises:
        DataContractError: no log_mass, fewer than FEATURE_MIN_CLUSTERS train clusters (as
            FeatureBaselineUnavailable), no test cluster, or images below 3 x 3 pixels.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor  # 1 s to import: only when fitting
    from threadpoolctl import threadpool_limits

    where = ds.path or "data set"
    if ds.log_mass is None:
        raise DataContractError(f"{where}: missing key 'log_mass', which the feature baseline needs")
    train, test = np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)
    if train.size < FEATURE_MIN_CLUSTERS:
        raise FeatureBaselineUnavailable(
            where, f"at least {FEATURE_MIN_CLUSTERS} clusters to fit, got {train.size}")
    if test.size < 1:
        raise DataContractError(f"{where}: the feature baseline needs at least 1 cluster to score")
    x = photometry_features(ds)
    y = ds.log_mass.astype(np.float64)
    model = HistGradientBoostingRegressor(**TREE_PARAMS, random_state=seed)
    # One thread: on a shared 2-core machine OpenMP's threads wait on each other (16,000 clusters
    # took 35-42 s with both cores, 2.5-4.4 s with one, under the same load).
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x[train], y[train])
        resid = model.predict(x[test]) - y[test]
    return {"residual_std": float(np.std(resid)), "bias": float(np.mean(resid)),
            "n_train": int(train.size), "n_test": int(test.size), "iterations": int(model.n_iter_)}


def photometry_features(ds: Dataset) -> np.ndarray:
    """(N, F) features of the trees: aperture photometry, redshift terms and log10 exposure_s.

    Per aperture (hpo.data.photometry, 5 radii) and channel: log10(counts + 1); per channel: the
    background per pixel; per aperture: the net counts (background-subtracted, all channels),
    two hardness ratios of the net counts in channel thirds, the concentration (net counts over
    those of the largest aperture) and a luminosity proxy, log10 net counts (per second with
    exposure_s) + 2 log10 D_L; then z, log10 E(z), log10 D_L and log10 exposure_s (if present).

    Raises:
        FeatureBaselineUnavailable: images below 3 x 3 pixels.
    """
    try:
        phot = aperture_photometry(ds.images)
    except ValueError as exc:
        raise FeatureBaselineUnavailable(
            ds.path or "data set", f"images of at least 3 x 3 pixels ({exc})") from None
    z = ds.redshift.astype(np.float64)
    cosmo = FlatLCDM.from_config(_cosmology(ds.attrs))
    log_dl = np.log10(cosmo.luminosity_distance_mpc(z))
    n, n_ap, n_ch = phot.counts.shape
    net = phot.net_counts()  # (N, A, C)
    bands = np.stack([net[:, :, idx].sum(axis=2) for idx in np.array_split(np.arange(n_ch), 3)
                      if idx.size], axis=2)  # (N, A, <= 3)
    bands = np.log10(np.clip(bands, 0.0, None) + 1.0)
    total = net.sum(axis=2)  # (N, A)
    log_total = np.log10(np.clip(total, 0.0, None) + 1.0)
    log_rate = log_total
    columns = [np.log10(phot.counts.reshape(n, -1) + 1.0), phot.background, total,
               (bands[:, :, 1:] - bands[:, :, :-1]).reshape(n, -1),
               log_total[:, :-1] - log_total[:, -1:]]
    extra = [z, np.log10(cosmo.e(z)), log_dl]
    if ds.exposure_s is not None:
        log_exposure = np.log10(ds.exposure_s.astype(np.float64))
        log_rate = log_total - log_exposure[:, None]
        extra.append(log_exposure)
    columns.append(log_rate + 2.0 * log_dl[:, None])
    return np.column_stack([*columns, *extra])


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
# The parent run's trees fit at most this many clusters: 8,000 (a 10,000-cluster file's 80%) take
# 1-3 s on 2 shared cores, 16,000 twice that, for 0.003 dex (a 20,000-cluster eRASS:8 mock: 0.164
# at 8,000 fit clusters, 0.161 at 16,000, on the same 4,000 eval clusters); `hpo baseline` fits them all.
SUMMARY_TREES_MAX_FIT = 8_000


def data_summary(dataset: Dataset | H5Source) -> dict:
    """What a study's parent run records about its data: fingerprint, path and (labelled) floors,
    the feature baseline's trees fitted on at most SUMMARY_TREES_MAX_FIT clusters."""
    info: dict = {"fingerprint": dataset.fingerprint(), "path": str(dataset.path)}
    if dataset.log_mass is not None:
        sample = dataset
        if isinstance(dataset, H5Source):
            sample = dataset.subset(np.arange(min(len(dataset), FLOORS_MAX_CLUSTERS)))
        found = floors(sample, features_max_fit=SUMMARY_TREES_MAX_FIT)
        info["floors"] = {k: v for k, v in found.items() if v is not None}
    return info
