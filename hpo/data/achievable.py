"""The achievable floor: log M from each mock image by the estimator that knows the generator.

    floor = achievable_floor(ds)          # on the floors' 20%: residual std, its interval, ...
    post = posterior_log_mass(ds, idx)    # per cluster: posterior mean and sd of log M

For each cluster the generator's own draws are replayed from the file's seed (hpo.data.sim:
draw_clusters, draw_point_sources, then expected_parts for the maps and response), so every
nuisance is known exactly: profile shape and size, ellipticity, centroid, cool core, N_H,
exposure, background level, every AGN. Only what carries the mass is free: log L and log kT.
Their Poisson likelihood over the whole image (every pixel and channel) is combined with the
generator's own prior (its mass function and scaling relations with their correlated scatter)
into the posterior of log M, whose mean is the estimate (the Bayes estimator: the least
squared error any estimator of the same information can have).

It is a lower (optimistic) estimate of what any estimator can reach from the photons: a real one
must also infer the nuisances. It leaves out one thing a real one could use, the angular size
(R500 in arcsec: the profile is taken as given, not as a function of the mass); on the noise-free
truth that is worth 0.003 dex (0.092 -> 0.089 with log rc and log D_A added, 3,000 clusters).

The posterior is integrated on a grid in (log L, log kT), zoomed pass by pass onto the posterior
(a pass spans its mean +- HALF_WIDTH sd in t = log kT and in log L given t, sheared along their
correlation) until the grid resolves it. The likelihood on a node costs a few operations per
channel: the log terms over the counted pixels, sum_p n_pc ln(m_p s_c + B_pc), are a function of
the channel's cluster counts s_c alone, tabulated once per cluster in ln s_c (cubic Hermite, the
exact derivative at each knot); the response in log kT is tabulated from channel_counts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpo.data.baseline import FIT_FRACTION
from hpo.data.contract import Dataset
from hpo.data.sim.config import SimConfig
from hpo.data.sim.imaging import expected_parts
from hpo.data.sim.imaging import PointSources
from hpo.data.sim.response import channel_counts
from hpo.data.sim.simulator import draw_clusters
from hpo.data.sim.simulator import draw_point_sources
from hpo.data.sim.simulator import GENERATOR
from hpo.errors import DataContractError

LN10 = math.log(10.0)
LOG_L_REF = 44.0  # the response is tabulated at this log L (counts scale with L)
GRID = 48  # nodes per axis of a pass
HALF_WIDTH = 6.0  # a pass spans the posterior's mean +- this many sd
PRIOR_SD = 5.0  # the first pass spans the prior's scaling relation +- this many scatter sd
MAX_PASSES = 12
CONVERGED = 0.3  # a pass is final when the posterior's sd is at least this share of the one it was
# built from: its step is then <= 0.85 sd, where a sum over a smooth peak errs by < 1e-8
MASS_NODES = 100  # prior's log M nodes (0.02 dex over the default range; its scatter is ~0.1 dex)
U_STEP = 0.2  # step of the likelihood table in ln s_c (cubic Hermite: < 1e-4 in the log-lik.)
U_MARGIN = 3.0  # the table reaches this far (ln) beyond the first pass's range
T_STEP = 0.01  # step of the response table in log kT, dex
T_MARGIN = 0.3  # the table reaches this far (dex) beyond the first pass's range
BLOCK = 250  # clusters replayed and imaged at once (the simulator's own block)
BOOTSTRAP = 2000  # resamples of the scored clusters for the interval


@dataclass(frozen=True)
class Replay:
    """The generator's draws for some clusters of a file and the factors of their expected counts.

    Attributes:
        params: draw_clusters' draws, (n,) float64 each, in the order asked for.
        parts: expected_parts' factors: cluster_map (n, N, N), cluster_spec (n, C), agn_map
            (n, N, N), agn_spec (n, C), bkg_pixel (n, C).
        sources: their AGN (cluster indices into the n), or None.
        cfg: the file's simulator config.
    """

    params: dict[str, np.ndarray]
    parts: dict[str, np.ndarray]
    sources: PointSources | None
    cfg: SimConfig

    def expected_images(self) -> np.ndarray:
        """(n, N, N, C) noise-free expected counts: cluster, AGN and background."""
        p = self.parts
        return (p["cluster_map"][..., None] * p["cluster_spec"][:, None, None, :]
                + p["agn_map"][..., None] * p["agn_spec"][:, None, None, :]
                + p["bkg_pixel"][:, None, None, :])


def file_config(ds: Dataset) -> SimConfig:
    """The simulator config a file was written with; refuses a file of another generator.

    Raises:
        DataContractError: no generator or sim_config attribute, or another generator's file.
    """
    where = ds.path or "data set"
    if ds.attrs.get("generator") != GENERATOR:
        raise DataContractError(
            f"{where}: the achievable floor replays the draws of {GENERATOR}, but the file's "
            f"generator is {ds.attrs.get('generator')!r}; simulate it again with this code")
    return SimConfig.model_validate(json.loads(ds.attrs["sim_config"]))


def replay(ds: Dataset, idx: np.ndarray) -> Replay:
    """The generator's draws for clusters `idx` of a whole simulated file, checked against it.

    Each chunk's stream is SeedSequence(seed).spawn(n_chunks)[i], as simulate_chunk drew it: the
    clusters' draws, then the AGN; the Poisson images come after and are not needed.

    Raises:
        DataContractError: another generator's file, repeated indices, or draws that do not
            reproduce the file (log_mass, redshift, the expected cluster, AGN and background
            counts).
    """
    where = ds.path or "data set"
    cfg = file_config(ds)
    idx = np.asarray(idx, dtype=np.int64)
    if np.unique(idx).size != idx.size:
        raise DataContractError(f"{where}: replay needs distinct cluster indices")
    n, chunk = len(ds), int(ds.attrs["chunk_clusters"])
    streams = np.random.SeedSequence(int(ds.attrs["seed"])).spawn(-(-n // chunk))
    params: dict[str, np.ndarray] = {}
    src: list[tuple[np.ndarray, ...]] = []
    for i in np.unique(idx // chunk):
        rows = np.flatnonzero(idx // chunk == i)
        local = idx[rows] - i * chunk
        size = min(n, (i + 1) * chunk) - i * chunk
        rng = np.random.default_rng(streams[i])
        drawn = draw_clusters(rng, size, cfg)
        for key, value in drawn.items():
            params.setdefault(key, np.empty(idx.size))[rows] = value[local]
        if cfg.point_sources.enabled:
            s = draw_point_sources(rng, size, cfg)
            owner = np.full(size, -1)
            owner[local] = rows
            keep = owner[s.cluster] >= 0
            src.append((owner[s.cluster[keep]], s.x_arcsec[keep], s.y_arcsec[keep], s.flux[keep]))
    sources = None
    if cfg.point_sources.enabled:
        sources = PointSources(*(np.concatenate([s[k] for s in src]) for k in range(4)))
    parts = _parts(params, sources, cfg)
    _check(ds, idx, params, parts, where)
    return Replay(params, parts, sources, cfg)


def _parts(params: dict[str, np.ndarray], sources: PointSources | None, cfg: SimConfig
           ) -> dict[str, np.ndarray]:
    """expected_parts block by block (its temporaries grow with the clusters imaged at once)."""
    n = params["redshift"].size
    blocks = []
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        sub = {k: v[start:stop] for k, v in params.items()}
        part_src = None
        if sources is not None:
            keep = (sources.cluster >= start) & (sources.cluster < stop)
            part_src = PointSources(sources.cluster[keep] - start, sources.x_arcsec[keep],
                                    sources.y_arcsec[keep], sources.flux[keep])
        blocks.append(expected_parts(sub, cfg, part_src))
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def _check(ds: Dataset, idx: np.ndarray, params: dict[str, np.ndarray],
           parts: dict[str, np.ndarray], where: Any) -> None:
    found = {"redshift": ds.redshift[idx]}
    if ds.log_mass is not None:
        found["log_mass"] = ds.log_mass[idx]
    size = parts["cluster_map"].shape[-1]
    mine = {
        "redshift": params["redshift"],
        "log_mass": params["log_mass"],
        "cluster_counts": (parts["cluster_map"].sum(axis=(1, 2))
                           * parts["cluster_spec"].sum(axis=1)),
        "bkg_counts": parts["bkg_pixel"].sum(axis=1) * size**2,
        "agn_counts": parts["agn_map"].sum(axis=(1, 2)) * parts["agn_spec"].sum(axis=1),
    }
    for key in ("cluster_counts", "bkg_counts", "agn_counts"):
        if key in ds.truth:
            found[key] = ds.truth[key][idx]
    for key, value in found.items():
        if not np.allclose(mine[key], value.astype(np.float64), rtol=1e-4, atol=1e-6):
            raise DataContractError(
                f"{where}: the replayed draws do not reproduce the file's {key}: the file was not "
                f"written by this code's {GENERATOR} with its recorded seed and sim_config")


@dataclass(frozen=True)
class _Prior:
    """The generator's prior on (log L, log kT) of one cluster: a mixture over a log M grid."""

    log_mass: np.ndarray  # (K,)
    log_w: np.ndarray  # (K,) log prior weight of each node (mass function, quadrature)
    mean: np.ndarray  # (K, 2) scaling-relation (log L, log kT) without scatter
    inv_cov: np.ndarray  # (2, 2) inverse scatter covariance, dex^-2

    def terms(self, ell: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """log prior density, E[log M | node] and E[log M^2 | node] at nodes (any shape)."""
        d_l = ell[..., None] - self.mean[:, 0]
        d_t = t[..., None] - self.mean[:, 1]
        a, b, c = self.inv_cov[0, 0], self.inv_cov[0, 1], self.inv_cov[1, 1]
        logp = self.log_w - 0.5 * (a * d_l**2 + 2.0 * b * d_l * d_t + c * d_t**2)
        top = logp.max(axis=-1, keepdims=True)
        w = np.exp(logp - top)
        total = w.sum(axis=-1)
        m1 = (w @ self.log_mass) / total
        m2 = (w @ self.log_mass**2) / total
        return np.log(total) + top[..., 0], m1, m2


def _priors(params: dict[str, np.ndarray], cfg: SimConfig) -> list[_Prior]:
    """Each cluster's prior at its redshift, from the generator's own scaling relations."""
    pop, sc = cfg.population, cfg.scaling
    lo, hi = pop.log_mass_range
    lm = lo + (hi - lo) * (np.arange(MASS_NODES) + 0.5) / MASS_NODES  # midpoint rule
    z = params["redshift"]
    n = z.size
    # draw_clusters at fixed (M, z): its log L and kT less the scatter it drew and reports
    drawn = draw_clusters(np.random.default_rng(0), n * MASS_NODES, cfg,
                          log_mass=np.tile(lm, n), redshift=np.repeat(z, MASS_NODES))
    ell = (drawn["log_lx"] - drawn["dln_lx"] / LN10).reshape(n, MASS_NODES)
    t = (np.log10(drawn["kT"]) - drawn["dln_kt"] / LN10).reshape(n, MASS_NODES)
    s_l, s_t = max(sc.sigma_ln_lx, 1e-3) / LN10, max(sc.sigma_ln_kt, 1e-3) / LN10
    rho = float(np.clip(sc.rho_lx_kt, -0.999, 0.999))
    inv_cov = np.linalg.inv(np.array([[s_l**2, rho * s_l * s_t], [rho * s_l * s_t, s_t**2]]))
    out = []
    for i in range(n):
        log_w = _log_mass_function(lm, float(z[i]), cfg)
        out.append(_Prior(lm, log_w, np.column_stack([ell[i], t[i]]), inv_cov))
    return out


def _log_mass_function(lm: np.ndarray, z: float, cfg: SimConfig) -> np.ndarray:
    """log density of log10 M at z, up to a constant (the population of PopulationConfig)."""
    pop = cfg.population
    if pop.mass_function == "uniform":
        return np.zeros_like(lm)
    m = 10.0**lm
    out = (pop.mass_slope + 1.0) * np.log(m)  # dn/dlog M = M dn/dM
    if pop.mass_function == "cutoff_power_law":
        m_star = 10**pop.cutoff_log_mass * (1.0 + z) ** (-pop.cutoff_evolution)
        out -= (m - 10 ** pop.log_mass_range[0]) / m_star
    return out - out.max()


class _Cluster:
    """One cluster's log-likelihood of (log L, log kT), its image and nuisances fixed."""

    def __init__(self, counts: np.ndarray, cmap: np.ndarray, background: np.ndarray,
                 t_grid: np.ndarray, ln_f: np.ndarray, ell_range: tuple[float, float],
                 t_range: tuple[float, float]) -> None:
        # counts (P, C), cmap (P,), background (P, C): the expected counts without the cluster
        self.t0, self.t_step = float(t_grid[0]), float(t_grid[1] - t_grid[0])
        self.ln_f = ln_f  # (T, C): ln counts per channel at LOG_L_REF, on t_grid
        self.d_ln_f = np.gradient(ln_f, self.t_step, axis=0)
        self.map_sum = float(cmap.sum())
        pix, chan = np.nonzero(counts)
        n, m, b = counts[pix, chan], cmap[pix], np.maximum(background[pix, chan], 1e-300)
        n_chan = ln_f.shape[1]
        shift = (np.asarray(ell_range) - LOG_L_REF) * LN10
        rows = (t_grid >= t_range[0]) & (t_grid <= t_range[1])
        top = ln_f[rows].max(axis=0) + shift[1] + U_MARGIN  # (C,)
        # where the cluster is below e^-20 of the background in every counted pixel the table is
        # flat: no need to go lower
        flat = np.full(n_chan, np.inf)
        np.minimum.at(flat, chan, np.log(b / np.maximum(m, 1e-300)) - 20.0)
        self.u0 = np.minimum(np.maximum(ln_f[rows].min(axis=0) + shift[0] - U_MARGIN, flat),
                             top - U_STEP)
        n_u = int(np.ceil((top - self.u0).max() / U_STEP)) + 1
        u = self.u0[chan][:, None] + U_STEP * np.arange(n_u)  # (nnz, U)
        x = m[:, None] * np.exp(u)
        onehot = np.zeros((n_chan, pix.size))
        onehot[chan, np.arange(pix.size)] = 1.0
        self.g = onehot @ (n[:, None] * np.log(x + b[:, None]))  # (C, U)
        self.dg = onehot @ (n[:, None] * x / (x + b[:, None]))  # d/du

    def response(self, t: np.ndarray) -> np.ndarray:
        """(len(t), C) ln counts per channel at LOG_L_REF (cubic Hermite in log kT)."""
        return _hermite(self.ln_f, self.d_ln_f, (t - self.t0) / self.t_step, self.t_step)

    def loglik(self, ell: np.ndarray, ln_f: np.ndarray) -> np.ndarray:
        """Log-likelihood (up to a constant) at nodes ell (R, T), column j at ln_f[j] (T, C)."""
        u = (ell[..., None] - LOG_L_REF) * LN10 + ln_f[None, :, :]  # (R, T, C)
        pos = (u - self.u0) / U_STEP
        c = np.arange(u.shape[-1])
        g = _hermite(self.g.T, self.dg.T, pos, U_STEP, column=c)
        return g.sum(axis=-1) - self.map_sum * np.exp(u).sum(axis=-1)


def _hermite(y: np.ndarray, dy: np.ndarray, pos: np.ndarray, step: float,
             column: np.ndarray | None = None) -> np.ndarray:
    """Cubic Hermite interpolation of tabulated y (K, C) with derivatives dy at fractional
    positions pos (..., C) (or (...,) for every column); linear beyond the ends."""
    k = y.shape[0]
    if column is None:
        pos = np.broadcast_to(np.asarray(pos)[..., None], (*np.shape(pos), y.shape[1]))
        column = np.arange(y.shape[1])
    i = np.clip(np.floor(pos).astype(np.int64), 0, k - 2)
    s = np.clip(pos - i, 0.0, 1.0)
    y0, y1 = y[i, column], y[i + 1, column]
    d0, d1 = dy[i, column] * step, dy[i + 1, column] * step
    s2, s3 = s * s, s * s * s
    inside = ((2 * s3 - 3 * s2 + 1) * y0 + (s3 - 2 * s2 + s) * d0 + (-2 * s3 + 3 * s2) * y1
              + (s3 - s2) * d1)
    below = y[0, column] + dy[0, column] * step * np.minimum(pos, 0.0)
    above = y[-1, column] + dy[-1, column] * step * np.maximum(pos - (k - 1), 0.0)
    return np.where(pos < 0, below, np.where(pos > k - 1, above, inside))


@dataclass
class _Box:
    """A pass's grid: t = mean_t + w_t g_j; log L = mean_l + slope (t - mean_t) + w_l g_i."""

    mean_l: float
    mean_t: float
    slope: float
    w_l: float
    w_t: float

    def nodes(self) -> tuple[np.ndarray, np.ndarray]:
        g = np.linspace(-1.0, 1.0, GRID)
        t = self.mean_t + self.w_t * g
        ell = self.mean_l + self.slope * (t - self.mean_t)[None, :] + self.w_l * g[:, None]
        return ell, t  # (GRID, GRID) rows of log L per t column, (GRID,)

    def step(self) -> tuple[float, float]:
        return 2.0 * self.w_l / (GRID - 1), 2.0 * self.w_t / (GRID - 1)


def _moments(weights: np.ndarray, ell: np.ndarray, t: np.ndarray, box: _Box) -> _Box:
    """The box of mean +- HALF_WIDTH sd of weighted nodes, at least a step wide each way."""
    w = weights / weights.sum()
    tt = np.broadcast_to(t[None, :], ell.shape)
    m_l, m_t = float((w * ell).sum()), float((w * tt).sum())
    v_t = float((w * (tt - m_t) ** 2).sum())
    c_lt = float((w * (ell - m_l) * (tt - m_t)).sum())
    v_l = float((w * (ell - m_l) ** 2).sum())
    step_l, step_t = box.step()
    sd_t = max(math.sqrt(max(v_t, 0.0)), step_t)
    slope = c_lt / v_t if v_t > (1e-3 * step_t) ** 2 else box.slope
    sd_l = max(math.sqrt(max(v_l - slope * c_lt, 0.0)), step_l)
    return _Box(m_l, m_t, slope, HALF_WIDTH * sd_l, HALF_WIDTH * sd_t)


def _integrate(cluster: _Cluster, prior: _Prior | None, box: _Box
               ) -> tuple[_Box, np.ndarray, np.ndarray, np.ndarray, int]:
    """Zooms `box` onto the posterior (the likelihood alone without a prior) until a pass
    resolves it; returns the last pass's box, weights, nodes and the passes run."""
    for n_pass in range(1, MAX_PASSES + 1):
        ell, t = box.nodes()
        logp = cluster.loglik(ell, cluster.response(t))
        if prior is not None:
            logp = logp + prior.terms(ell, np.broadcast_to(t[None, :], ell.shape))[0]
        w = np.exp(logp - logp.max())
        new = _moments(w, ell, t, box)
        if new.w_l >= CONVERGED * box.w_l and new.w_t >= CONVERGED * box.w_t:
            return box, w, ell, t, n_pass
        box = new
    return box, w, ell, t, MAX_PASSES


def posterior_log_mass(ds: Dataset, idx: np.ndarray, *, images: np.ndarray | None = None
                       ) -> dict[str, np.ndarray]:
    """The posterior of log M of clusters `idx` of a simulated file, every nuisance known.

    Args:
        ds: a whole file written by hpo.data.sim (its draws are replayed from its seed).
        idx: the clusters.
        images: (len(idx), N, N, C) counts to use instead of the file's (e.g. expected counts).

    Returns:
        (len(idx),) float64 arrays: 'mean' and 'sd' of log M, 'log_lx' and 'log_kt' (posterior
        means), 'oracle' (E[log M | the true log L and log kT]: the same prior, no photon noise),
        'passes' (grid passes run).

    Raises:
        DataContractError: see `replay`.
    """
    idx = np.asarray(idx, dtype=np.int64)
    out = {k: np.empty(idx.size) for k in ("mean", "sd", "log_lx", "log_kt", "oracle", "passes")}
    for start in range(0, idx.size, BLOCK):
        sl = slice(start, min(idx.size, start + BLOCK))
        rep = replay(ds, idx[sl])
        counts = ds.images[idx[sl]] if images is None else images[sl]
        priors = _priors(rep.params, rep.cfg)
        clusters = _clusters(rep, counts, priors)
        for j, (cluster, prior, box) in enumerate(clusters):
            box, w, ell, t, n_pass = _integrate(cluster, prior, box)
            tt = np.broadcast_to(t[None, :], ell.shape)
            _, m1, m2 = prior.terms(ell, tt)
            w = w / w.sum()
            mean = float((w * m1).sum())
            k = start + j
            out["mean"][k] = mean
            out["sd"][k] = math.sqrt(max(float((w * m2).sum()) - mean**2, 0.0))
            out["log_lx"][k], out["log_kt"][k] = float((w * ell).sum()), float((w * tt).sum())
            true_l = np.array([rep.params["log_lx"][j]])
            true_t = np.array([np.log10(rep.params["kT"][j])])
            out["oracle"][k] = prior.terms(true_l, true_t)[1][0]
            out["passes"][k] = n_pass
    return out


def likelihood_peak(ds: Dataset, idx: np.ndarray, *, images: np.ndarray | None = None
                    ) -> dict[str, np.ndarray]:
    """The maximum-likelihood (log L, log10 kT) of clusters `idx`, every nuisance known.

    The grid first settles on the likelihood as on a posterior (`_integrate` without a prior:
    its extent and its slope in log L against log kT), then zooms onto its highest node, by a
    factor of about 6 a pass, for MAX_PASSES passes. On noise-free expected counts (`images`) it
    returns the truth.
    """
    idx = np.asarray(idx, dtype=np.int64)
    out = {"log_lx": np.empty(idx.size), "log_kt": np.empty(idx.size)}
    for start in range(0, idx.size, BLOCK):
        sl = slice(start, min(idx.size, start + BLOCK))
        rep = replay(ds, idx[sl])
        counts = ds.images[idx[sl]] if images is None else images[sl]
        priors = _priors(rep.params, rep.cfg)
        for j, (cluster, _, box) in enumerate(_clusters(rep, counts, priors)):
            box = _integrate(cluster, None, box)[0]
            for _ in range(MAX_PASSES):
                ell, t = box.nodes()
                logp = cluster.loglik(ell, cluster.response(t))
                i_l, i_t = np.unravel_index(np.argmax(logp), logp.shape)
                step_l, step_t = box.step()
                box = _Box(float(ell[i_l, i_t]), float(t[i_t]), box.slope, 4 * step_l, 4 * step_t)
            out["log_lx"][start + j], out["log_kt"][start + j] = box.mean_l, box.mean_t
    return out


def _clusters(rep: Replay, counts: np.ndarray, priors: list[_Prior]
              ) -> list[tuple[_Cluster, _Prior, _Box]]:
    """Each cluster's likelihood, prior and first box (the prior's support: its scaling relation
    over the mass range, +- PRIOR_SD scatter sd)."""
    n, size = counts.shape[0], counts.shape[1]
    n_pix = size * size
    boxes = []
    for prior in priors:
        w = np.exp(prior.log_w - prior.log_w.max())
        w /= w.sum()
        cov = np.linalg.inv(prior.inv_cov)
        m = w @ prior.mean
        d = prior.mean - m
        v = (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(axis=0) + cov
        slope = v[0, 1] / v[1, 1]
        sd_l = math.sqrt(v[0, 0] - slope * v[0, 1])
        t_lo = prior.mean[:, 1].min() - PRIOR_SD * math.sqrt(cov[1, 1])
        t_hi = prior.mean[:, 1].max() + PRIOR_SD * math.sqrt(cov[1, 1])
        mid = 0.5 * (t_lo + t_hi)
        mean_l = m[0] + slope * (mid - m[1])
        boxes.append(_Box(mean_l, mid, slope, HALF_WIDTH * sd_l, 0.5 * (t_hi - t_lo)))
    t_lo = min(b.mean_t - b.w_t for b in boxes) - T_MARGIN
    t_hi = max(b.mean_t + b.w_t for b in boxes) + T_MARGIN
    t_grid = np.arange(t_lo, t_hi + T_STEP, T_STEP)
    p = rep.params
    each = lambda key: np.repeat(p[key], t_grid.size)  # noqa: E731
    spec = channel_counts(np.full(n * t_grid.size, LOG_L_REF), np.tile(10.0**t_grid, n),
                          each("redshift"), each("nh_cm2"), each("exposure_s"), rep.cfg)
    ln_f = np.log(np.maximum(spec, 1e-300)).reshape(n, t_grid.size, -1)
    parts = rep.parts
    out = []
    for j in range(n):
        box = boxes[j]
        background = (parts["agn_map"][j].reshape(n_pix, 1) * parts["agn_spec"][j]
                      + parts["bkg_pixel"][j])
        ell_lo = box.mean_l - box.w_l - abs(box.slope) * box.w_t
        ell_hi = box.mean_l + box.w_l + abs(box.slope) * box.w_t
        cluster = _Cluster(np.asarray(counts[j], dtype=np.float64).reshape(n_pix, -1),
                           parts["cluster_map"][j].reshape(n_pix), background, t_grid, ln_f[j],
                           (ell_lo, ell_hi), (box.mean_t - box.w_t - T_MARGIN,
                                              box.mean_t + box.w_t + T_MARGIN))
        out.append((cluster, priors[j], box))
    return out


def split_eval(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The floors' fit and evaluation clusters (hpo.data.baseline.floors' 80% / 20% shuffle)."""
    order = np.random.default_rng(seed).permutation(n)
    n_fit = int(round(FIT_FRACTION * n))
    return order[:n_fit], order[n_fit:]


def achievable_floor(ds: Dataset, seed: int = 0, *, max_eval: int | None = None,
                     bootstrap: int = BOOTSTRAP) -> dict[str, Any]:
    """The achievable floor of a simulated file, on the floors' evaluation clusters.

    Args:
        ds: a whole file written by hpo.data.sim, with log_mass.
        seed: the floors' shuffle seed (the same 20% as `floors`), and the bootstrap's.
        max_eval: score only the first this many of the evaluation clusters (a random subset).
        bootstrap: resamples of the scored clusters for the 68% interval of the residual std.

    Returns:
        {"achievable_floor": std of (posterior mean - true) log M, dex, "achievable_floor_68":
        [16th, 84th percentile] of it over the resamples, "achievable_bias", "achievable_rmse",
        "achievable_coverage68": share of clusters within their posterior mean +- sd,
        "achievable_sd_rms": root mean square of the posterior sds (the rmse the model predicts
        for itself: the Bayes estimator's mean squared error is the mean posterior variance),
        "oracle_posterior": the std of E[log M | true log L, log kT] (the same prior, noise-free),
        "n_eval": clusters scored}.
    """
    where = ds.path or "data set"
    if ds.log_mass is None:
        raise DataContractError(
            f"{where}: missing key 'log_mass', which the achievable floor needs")
    ev = split_eval(len(ds), seed)[1][:max_eval]
    post = posterior_log_mass(ds, ev)
    y = ds.log_mass[ev].astype(np.float64)
    resid = post["mean"] - y
    oracle = post["oracle"] - y
    return {
        "achievable_floor": float(np.std(resid)),
        "achievable_floor_68": bootstrap_interval(resid, bootstrap, seed),
        "achievable_bias": float(np.mean(resid)),
        "achievable_rmse": float(np.sqrt(np.mean(resid**2))),
        "achievable_coverage68": float(np.mean(np.abs(resid) <= post["sd"])),
        "achievable_sd_rms": float(np.sqrt(np.mean(post["sd"] ** 2))),
        "oracle_posterior": float(np.std(oracle)),
        "n_eval": int(ev.size),
    }


def bootstrap_interval(resid: np.ndarray, n: int = BOOTSTRAP, seed: int = 0,
                       level: float = 0.68) -> list[float]:
    """The central `level` interval of std(resid) over n resamples of the clusters."""
    rng = np.random.default_rng(seed)
    stds = np.std(resid[rng.integers(0, resid.size, size=(n, resid.size))], axis=1)
    lo, hi = np.percentile(stds, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]
