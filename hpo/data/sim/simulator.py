"""The eROSITA-like mock cluster generator of docs/simulator.md: draws, Poisson images, HDF5.

    hpo simulate data/mock.h5 --n 10000 --seed 0 --preset eRASS:8 [--config sim.yaml]

One cluster, in order: population (M500, z) -> scaling relations with correlated log-normal
scatter (kT, soft-band L) -> elliptical, offset beta model (plus an optional cool core) on 4"
sky pixels, binned to 8" -> King PSF by FFT over the whole batch -> thermal spectrum with a
Gaunt-like tilt, redshifted (K-correction), absorbed, folded through the effective area into
10 channels -> plus background and AGN point sources -> Poisson counts. Every hidden draw is
returned under `truth/`.

The settings live in hpo.data.sim.config, the spectral and instrument response in
hpo.data.sim.response, the maps and expected counts in hpo.data.sim.imaging; this module draws the
hidden parameters, makes the Poisson images and writes the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from hpo.data.cosmology import ARCSEC_PER_RAD
from hpo.data.cosmology import FlatLCDM
from hpo.data.cosmology import MPC_CM
from hpo.data.sim.config import load_sim_config
from hpo.data.sim.config import PopulationConfig
from hpo.data.sim.config import SimConfig
from hpo.data.sim.imaging import expected_parts
from hpo.data.sim.imaging import grid_pixels
from hpo.data.sim.imaging import PointSources
from hpo.data.sim.response import band_integral
from hpo.errors import ConfigError
from hpo.outputs import atomic_outputs

__all__ = [
    "CHUNK_CLUSTERS",
    "GENERATOR",
    "SimConfig",
    "draw_clusters",
    "draw_point_sources",
    "load_sim_config",
    "simulate_chunk",
    "write_mock",
]

GENERATOR = "hpo.simulator/2"  # 2: the light-leak cut in the response (instrument.light_leak_cut)
CHUNK_CLUSTERS = 1000  # clusters per RNG stream and per HDF5 write; part of the seed's meaning
_BLOCK = 250  # clusters per image batch inside a chunk (bounds the temporaries to ~30 MB each)
_COUNT_MAX = np.iinfo(np.uint16).max


# ---------------------------------------------------------------------------------------------
# draws


def draw_clusters(
    rng: np.random.Generator,
    n: int,
    cfg: SimConfig,
    *,
    log_mass: np.ndarray | None = None,
    redshift: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Draws n clusters' hidden parameters; every draw is made even when overridden.

    Args:
        rng: the stream to draw from.
        n: number of clusters.
        cfg: the simulator config.
        log_mass: optional (n,) fixed log10(M500/Msun), replacing the population draw.
        redshift: optional (n,) fixed z, replacing the population draw.

    Returns:
        (n,) float64 arrays: 'log_mass', 'redshift' and the truth names (without `truth/`):
        log_lx (erg/s), kT (keV), dln_lx, dln_kt, log_e_z, r500_kpc, r500_arcsec, rc_arcsec, beta,
        axis_ratio, angle_deg, offset_x_arcsec, offset_y_arcsec, cool_core (0/1),
        cc_flux_fraction, cc_rc_arcsec, nh_cm2, exposure_s, bkg_rate (counts/s/arcmin^2),
        flux_soft (observed 0.5-2 keV unabsorbed, erg/s/cm^2), k_correction.
    """
    pop, sc, pr, sp = cfg.population, cfg.scaling, cfg.profile, cfg.spectrum
    cosmo = FlatLCDM.from_config(cfg.cosmology)
    z = rng.uniform(*pop.redshift_range, size=n)
    lm = _draw_log_mass(rng, z, pop)
    if redshift is not None:
        z = np.broadcast_to(np.asarray(redshift, dtype=np.float64), (n,)).copy()
    if log_mass is not None:
        lm = np.broadcast_to(np.asarray(log_mass, dtype=np.float64), (n,)).copy()
    # scaling relations with correlated log-normal scatter
    e_z = cosmo.e(z)
    g1, g2 = rng.standard_normal(n), rng.standard_normal(n)
    dln_kt = sc.sigma_ln_kt * g1
    dln_lx = sc.sigma_ln_lx * (sc.rho_lx_kt * g1 + np.sqrt(1.0 - sc.rho_lx_kt**2) * g2)
    m_rel = 10.0**lm / sc.pivot_mass_msun
    kt = sc.kt_pivot_kev * (e_z * m_rel) ** sc.kt_mass_slope * np.exp(dln_kt)
    lx = sc.lx_pivot_erg_s * m_rel**sc.lx_mass_slope * e_z**sc.lx_ez_slope * np.exp(dln_lx)
    # size
    r500 = cosmo.r500_mpc(10.0**lm, z)
    r500_arcsec = r500 / cosmo.angular_diameter_distance_mpc(z) * ARCSEC_PER_RAD
    # shape
    beta = rng.uniform(*pr.beta_range, size=n)
    xc = pr.xc_median * np.exp(pr.sigma_ln_xc * rng.standard_normal(n))
    q = rng.uniform(*pr.axis_ratio_range, size=n)
    angle = rng.uniform(0.0, 180.0, size=n)
    off = pr.offset_sigma_r500 * r500_arcsec[:, None] * rng.standard_normal((n, 2))
    cool = rng.uniform(size=n) < pr.cool_core_probability
    cc_frac = np.where(cool, rng.uniform(*pr.cool_core_flux_range, size=n), 0.0)
    # sky and survey
    log_nh = (float(np.log(sp.nh_range_cm2[0])), float(np.log(sp.nh_range_cm2[1])))
    nh = np.exp(rng.uniform(*log_nh, size=n))
    exposure = _draw_exposure(rng, n, cfg)
    bkg_rate = cfg.background.rate_per_arcmin2 * np.exp(
        cfg.background.sigma_ln_rate * rng.standard_normal(n)
    )
    # observed soft-band flux (K-corrected): rest band (1+z) [0.5, 2] keV lands in 0.5-2 keV
    lo, hi = sc.lx_band_kev
    kcorr = band_integral(0.5 * (1 + z), 2.0 * (1 + z), kt, sp.gaunt_index) / band_integral(
        lo, hi, kt, sp.gaunt_index
    )
    d_l_cm = cosmo.luminosity_distance_mpc(z) * MPC_CM
    rc = xc * r500_arcsec
    return {
        "log_mass": lm,
        "redshift": z,
        "log_lx": np.log10(lx),
        "kT": kt,
        "dln_lx": dln_lx,
        "dln_kt": dln_kt,
        "log_e_z": np.log10(e_z),
        "r500_kpc": 1e3 * r500,
        "r500_arcsec": r500_arcsec,
        "rc_arcsec": rc,
        "beta": beta,
        "axis_ratio": q,
        "angle_deg": angle,
        "offset_x_arcsec": off[:, 0],
        "offset_y_arcsec": off[:, 1],
        "cool_core": cool.astype(np.float64),
        "cc_flux_fraction": cc_frac,
        "cc_rc_arcsec": pr.cool_core_rc_ratio * rc,
        "nh_cm2": nh,
        "exposure_s": exposure,
        "bkg_rate": bkg_rate,
        "flux_soft": lx * kcorr / (4.0 * np.pi * d_l_cm**2),
        "k_correction": kcorr,
    }


def _draw_exposure(rng: np.random.Generator, n: int, cfg: SimConfig) -> np.ndarray:
    """Per-cluster exposure, s: one uniform draw each, on a linear or a log scale."""
    lo, hi = cfg.survey.exposure_range()
    if cfg.survey.distribution() == "log_uniform":
        return np.exp(rng.uniform(np.log(lo), np.log(hi), size=n))
    return rng.uniform(lo, hi, size=n)


def _draw_log_mass(rng: np.random.Generator, z: np.ndarray, pop: PopulationConfig) -> np.ndarray:
    lo, hi = pop.log_mass_range
    if pop.mass_function == "uniform":
        return rng.uniform(lo, hi, size=z.size)
    out = np.empty(z.size)
    todo = np.arange(z.size)
    while todo.size:  # power law by inverse CDF, the cutoff by rejection
        u = rng.uniform(size=todo.size)
        s1 = pop.mass_slope + 1.0
        if abs(s1) < 1e-9:
            lm = lo + u * (hi - lo)
        else:
            m = ((10**lo) ** s1 + u * ((10**hi) ** s1 - (10**lo) ** s1)) ** (1.0 / s1)
            lm = np.log10(m)
        keep = np.ones(todo.size, dtype=bool)
        if pop.mass_function == "cutoff_power_law":
            m_star = 10**pop.cutoff_log_mass * (1.0 + z[todo]) ** (-pop.cutoff_evolution)
            keep = rng.uniform(size=todo.size) < np.exp(-(10**lm - 10**lo) / m_star)
        out[todo[keep]] = lm[keep]
        todo = todo[~keep]
    return out


def draw_point_sources(rng: np.random.Generator, n: int, cfg: SimConfig) -> PointSources:
    """Poisson numbers of AGN over each padded cut-out, power-law fluxes, uniform positions."""
    ps = cfg.point_sources
    half = grid_pixels(cfg) * cfg.instrument.pixel_arcsec / 2.0
    area_deg2 = (2.0 * half / 3600.0) ** 2
    counts = rng.poisson(ps.density_per_deg2 * area_deg2, size=n)
    m = int(counts.sum())
    # truncated Pareto by inverse CDF: N(>S) ~ S^-slope between flux_min and flux_max
    a = ps.lognlogs_slope
    tail = (ps.flux_max_erg_s_cm2 / ps.flux_min_erg_s_cm2) ** (-a)
    u = rng.uniform(size=m)
    flux = ps.flux_min_erg_s_cm2 * (1.0 - u * (1.0 - tail)) ** (-1.0 / a)
    xy = rng.uniform(-half, half, size=(m, 2))
    return PointSources(np.repeat(np.arange(n), counts), xy[:, 0], xy[:, 1], flux)


# ---------------------------------------------------------------------------------------------
# chunks


def simulate_chunk(rng: np.random.Generator, n: int, cfg: SimConfig) -> dict[str, np.ndarray]:
    """Simulates n clusters: draws, expected counts, Poisson images.

    Returns:
        'images' (n, N, N, C) uint16 counts (N = image_size, C channels), 'redshift',
        'log_mass' and 'exposure_s' (n,) float32 (the exposure is data: real surveys know it from
        their exposure maps), and 'truth/<name>' (n,) float32 for every draw of
        `draw_clusters` plus n_agn, cluster_counts, bkg_counts, agn_counts (expected counts in
        the cut-out) and total_counts (the image's sum).
    """
    params = draw_clusters(rng, n, cfg)
    sources = draw_point_sources(rng, n, cfg) if cfg.point_sources.enabled else None
    size, n_chan = cfg.instrument.image_size, len(cfg.spectrum.channel_edges_kev) - 1
    images = np.empty((n, size, size, n_chan), dtype=np.uint16)
    extra = {k: np.zeros(n) for k in ("cluster_counts", "bkg_counts", "agn_counts", "n_agn")}
    for start in range(0, n, _BLOCK):
        sl = slice(start, min(n, start + _BLOCK))
        sub = {k: v[sl] for k, v in params.items()}
        parts = expected_parts(sub, cfg, _select(sources, sl))
        images[sl] = _poisson_image(rng, parts)
        extra["cluster_counts"][sl] = parts["cluster_map"].sum(axis=(1, 2)) * parts[
            "cluster_spec"
        ].sum(axis=1)
        extra["agn_counts"][sl] = parts["agn_map"].sum(axis=(1, 2)) * parts["agn_spec"].sum(axis=1)
        extra["bkg_counts"][sl] = parts["bkg_pixel"].sum(axis=1) * size**2
    if sources is not None:
        extra["n_agn"] = np.bincount(sources.cluster, minlength=n).astype(np.float64)
    out: dict[str, np.ndarray] = {
        "images": images,
        "redshift": params.pop("redshift").astype(np.float32),
        "log_mass": params.pop("log_mass").astype(np.float32),
        "exposure_s": params["exposure_s"].astype(np.float32),
    }
    params.update(extra)
    params["total_counts"] = images.sum(axis=(1, 2, 3), dtype=np.int64).astype(np.float64)
    out.update({f"truth/{k}": v.astype(np.float32) for k, v in sorted(params.items())})
    return out


def _poisson_image(rng: np.random.Generator, parts: dict[str, np.ndarray]) -> np.ndarray:
    """(b, N, N, C) uint16 Poisson counts of the expected parts, without the (b, N, N, C) rates.

    Independent Poisson counts per channel equal a Poisson total per pixel whose photons each
    pick a channel with probability rate_c / rate_total; the second form touches only the
    pixels that received photons. Counts above 65535 saturate (never seen at eROSITA depths).
    """
    cmap, amap = parts["cluster_map"], parts["agn_map"]
    cspec, aspec, bpix = parts["cluster_spec"], parts["agn_spec"], parts["bkg_pixel"]
    b, size, _ = cmap.shape
    n_chan = cspec.shape[1]
    total = (
        cmap * cspec.sum(axis=1)[:, None, None]
        + amap * aspec.sum(axis=1)[:, None, None]
        + bpix.sum(axis=1)[:, None, None]
    )
    counts = rng.poisson(total).ravel()
    hit = np.flatnonzero(counts)
    owner = hit // (size * size)
    rates = (
        cmap.ravel()[hit, None] * cspec[owner]
        + amap.ravel()[hit, None] * aspec[owner]
        + bpix[owner]
    )
    cum = np.cumsum(rates, axis=1)
    cum /= cum[:, -1:]
    cum[:, -1] = 1.0
    cum += np.arange(hit.size)[:, None]  # row r spans (r, r + 1]: one sorted array for all rows
    row = np.repeat(np.arange(hit.size), counts[hit])
    pick = np.searchsorted(cum.ravel(), row + rng.uniform(size=row.size), side="right")
    chan = np.clip(pick - row * n_chan, 0, n_chan - 1)
    per_hit = np.bincount(row * n_chan + chan, minlength=hit.size * n_chan)
    image = np.zeros((b * size * size, n_chan), dtype=np.uint16)
    image[hit] = np.minimum(per_hit, _COUNT_MAX).reshape(hit.size, n_chan)
    return image.reshape(b, size, size, n_chan)


def _select(sources: PointSources | None, sl: slice) -> PointSources | None:
    if sources is None:
        return None
    keep = (sources.cluster >= sl.start) & (sources.cluster < sl.stop)
    return PointSources(
        sources.cluster[keep] - sl.start,
        sources.x_arcsec[keep],
        sources.y_arcsec[keep],
        sources.flux[keep],
    )


# ---------------------------------------------------------------------------------------------
# file


def write_mock(
    path: str | Path, n: int, seed: int, cfg: SimConfig | None = None, progress: bool = False,
    jobs: int = 1, *, overwrite: bool = True,
) -> Path:
    """Writes n simulated clusters to an HDF5 file following the data contract, chunk by chunk.

    Chunk i (CHUNK_CLUSTERS clusters) draws from SeedSequence(seed).spawn(...)[i], so the same
    (n, seed, cfg) gives the same file, byte for byte, whatever `jobs`; memory stays bounded for
    any n. The file is written next to `path` and renamed into place when complete; on any
    failure nothing is left (hpo.outputs).

    Args:
        path: output file (.h5).
        n: number of clusters, >= 1.
        seed: non-negative integer seed.
        cfg: the simulator config; None for defaults.
        progress: show a tqdm bar.
        jobs: processes simulating chunks at once (chunks are independent draws).
        overwrite: replace `path` if it exists (`hpo simulate` passes its --overwrite, False by
            default; a script rewriting its own file keeps this default).

    Returns:
        The path written.

    Raises:
        ConfigError: n < 1 or seed < 0.
        OutputError: `path` exists (without `overwrite`) or cannot be written.
    """
    cfg = cfg or SimConfig()
    if n < 1 or seed < 0:
        raise ConfigError(f"write_mock needs n >= 1 and seed >= 0, got {n=}, {seed=}")
    path = Path(path)
    with atomic_outputs([path], overwrite=overwrite) as (tmp,):
        fill_mock(tmp, n, seed, cfg, progress, jobs)
    return path


def fill_mock(file: Path, n: int, seed: int, cfg: SimConfig, progress: bool = False,
              jobs: int = 1) -> None:
    """write_mock's file, written at `file` itself (no temporary: for a caller that writes it
    whole or not at all with other files, as `hpo simulate --events` does)."""
    n_chunks = -(-n // CHUNK_CLUSTERS)
    streams = np.random.SeedSequence(seed).spawn(n_chunks)
    sizes = [min(n, (i + 1) * CHUNK_CLUSTERS) - i * CHUNK_CLUSTERS for i in range(n_chunks)]
    pool = ProcessPoolExecutor(min(jobs, n_chunks)) if jobs > 1 and n_chunks > 1 else None
    draws = (pool.map(_draw_chunk, streams, sizes, [cfg] * n_chunks) if pool is not None
             else map(_draw_chunk, streams, sizes, [cfg] * n_chunks))
    try:
        _write_chunks(file, n, seed, cfg, draws, sizes, progress)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _write_chunks(file: Path, n: int, seed: int, cfg: SimConfig,
                  draws: Iterable[dict[str, np.ndarray]], sizes: list[int], progress: bool) -> None:
    """The file, chunk by chunk as `draws` yields them."""
    size, n_chan = cfg.instrument.image_size, len(cfg.spectrum.channel_edges_kev) - 1
    with h5py.File(file, "w") as f, tqdm(total=n, disable=not progress, unit="cluster") as bar:
        for i, chunk in enumerate(draws):  # in chunk order, whichever process drew it
            start = i * CHUNK_CLUSTERS
            stop = start + sizes[i]
            if i == 0:
                _create(f, chunk, n)
            for key, arr in chunk.items():
                f[key][start:stop] = arr
            bar.update(stop - start)
        f.attrs["channel_edges_keV"] = np.asarray(cfg.spectrum.channel_edges_kev)
        f.attrs["pixel_arcsec"] = cfg.instrument.pixel_arcsec
        f.attrs["generator"] = GENERATOR
        f.attrs["seed"] = int(seed)
        f.attrs["preset"] = cfg.survey.preset
        f.attrs["exposure_range_s"] = np.asarray(cfg.survey.exposure_range())
        f.attrs["exposure_distribution"] = cfg.survey.distribution()
        f.attrs["chunk_clusters"] = CHUNK_CLUSTERS
        f.attrs["image_shape"] = np.asarray([size, size, n_chan])
        f.attrs["sim_config"] = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)


def _draw_chunk(stream: np.random.SeedSequence, size: int, cfg: SimConfig) -> dict[str, np.ndarray]:
    return simulate_chunk(np.random.default_rng(stream), size, cfg)


def _create(f: h5py.File, chunk: dict[str, np.ndarray], n: int) -> None:
    for key, arr in chunk.items():
        rows = 64 if arr.ndim > 1 else 65536
        f.create_dataset(
            key,
            shape=(n, *arr.shape[1:]),
            dtype=arr.dtype,
            chunks=(min(n, rows), *arr.shape[1:]),
            compression="gzip",
            compression_opts=4,
            shuffle=True,
        )
