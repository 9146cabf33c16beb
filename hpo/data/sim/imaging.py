"""The cut-out images: elliptical beta models, the PSF kernel, FFT convolution, expected counts.

    hpo simulate data/mock.h5 --n 1000 --seed 0     # every cut-out is built here

Each cluster's model is evaluated on 4" sky pixels over a grid padded by the PSF radius, binned
to image pixels, joined by its AGN, convolved with the PSF over the whole batch and cropped; the
maps times the channel counts of hpo.data.sim.response give the expected counts per component.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from hpo.data.sim.config import SimConfig
from hpo.data.sim.response import agn_counts_per_flux
from hpo.data.sim.response import background_spectrum
from hpo.data.sim.response import channel_counts


@dataclass(frozen=True)
class PointSources:
    """AGN drawn around n cut-outs; positions relative to the cut-out centre.

    Attributes:
        cluster: (m,) int index of the cut-out each source falls in.
        x_arcsec, y_arcsec: (m,) position, arcsec.
        flux: (m,) observed 0.5-2 keV flux, erg/s/cm^2.
    """

    cluster: np.ndarray
    x_arcsec: np.ndarray
    y_arcsec: np.ndarray
    flux: np.ndarray


def _pad_pixels(cfg: SimConfig) -> int:
    ins = cfg.instrument
    return int(np.ceil(ins.psf_truncation_arcsec / ins.pixel_arcsec)) if ins.psf_enabled else 0


def grid_pixels(cfg: SimConfig) -> int:
    """Side of the padded image grid, image pixels: the cut-out plus the PSF margin each side."""
    return cfg.instrument.image_size + 2 * _pad_pixels(cfg)


def psf_kernel(cfg: SimConfig) -> np.ndarray:
    """(2p+1, 2p+1) PSF on image pixels (5x5 sub-sampled per pixel), truncated, sums to 1."""
    ins = cfg.instrument
    p, sub = _pad_pixels(cfg), 5
    offs = (np.arange((2 * p + 1) * sub) + 0.5) / sub - (p + 0.5)
    r2 = (offs[:, None] ** 2 + offs[None, :] ** 2) * ins.pixel_arcsec**2
    half = ins.psf_hew_arcsec / 2.0
    if ins.psf_model == "gaussian":
        sigma = half / np.sqrt(2.0 * np.log(2.0))
        k = np.exp(-r2 / (2.0 * sigma**2))
    else:  # King: the untruncated profile holds half its energy within HEW / 2
        s = ins.psf_king_slope
        r_k = half / np.sqrt(0.5 ** (1.0 / (1.0 - s)) - 1.0)
        k = (1.0 + r2 / r_k**2) ** (-s)
    k = np.where(r2 <= ins.psf_truncation_arcsec**2, k, 0.0)
    k = k.reshape(2 * p + 1, sub, 2 * p + 1, sub).sum(axis=(1, 3))
    return k / k.sum()


def _beta_maps(
    rc: np.ndarray, beta: np.ndarray, geo: dict[str, np.ndarray], cfg: SimConfig
) -> np.ndarray:
    """(n, G, G) float64 elliptical beta models on the padded image grid, each summing to its
    share of the whole (truncated) model that lands on the grid.

    Evaluated on sky pixels and binned. The sampled sum inside the largest ellipse that fits the
    grid is pinned to the analytic enclosed fraction, which removes the sampling error of cores
    comparable to a pixel.

    Args:
        rc: (n,) core radius, arcsec.
        beta: (n,) slope.
        geo: (n,) arrays 'q' (axis ratio), 'angle_deg', 'dx', 'dy' (centre, arcsec), 'r_trunc'
            (elliptical truncation radius, arcsec).
        cfg: the simulator config.
    """
    q, angle_deg, dx, dy = geo["q"], geo["angle_deg"], geo["dx"], geo["dy"]
    r_trunc = geo["r_trunc"]
    ins = cfg.instrument
    g = grid_pixels(cfg) * ins.binning
    half = g * ins.sky_pixel_arcsec / 2.0
    axis = ((np.arange(g) + 0.5) * ins.sky_pixel_arcsec - half).astype(np.float32)
    th = np.deg2rad(angle_deg)
    c, s, iq2 = np.cos(th), np.sin(th), 1.0 / q**2
    a_, c_, b_ = c**2 + s**2 * iq2, s**2 + c**2 * iq2, 2.0 * c * s * (1.0 - iq2)
    col = lambda v: np.asarray(v, dtype=np.float32)[:, None, None]  # noqa: E731
    u = axis[None, None, :] - col(dx)
    v = axis[None, :, None] - col(dy)
    # elliptical radius^2, (n, g, g), built in place: two full-size arrays at most
    r2 = u * v
    r2 *= col(b_)
    r2 += col(a_) * u**2
    r2 += col(c_) * v**2
    # largest ellipse that fits inside the grid, capped by the truncation
    wx, wy = np.sqrt(c**2 + q**2 * s**2), np.sqrt(s**2 + q**2 * c**2)
    a_fit = np.minimum((half - np.abs(dx)) / wx, (half - np.abs(dy)) / wy)
    a_in = np.minimum(a_fit, r_trunc)
    in_fit = r2 <= col(a_in**2)
    beyond = r2 > col(r_trunc**2)
    prof = np.divide(r2, col(rc**2), out=r2)
    prof += 1.0
    np.power(prof, col(0.5 - 3.0 * beta), out=prof)
    prof[beyond] = 0.0
    inside = np.sum(prof, axis=(1, 2), where=in_fit, dtype=np.float64)
    e1 = 1.5 - 3.0 * beta
    frac = (1.0 - (1.0 + a_in**2 / rc**2) ** e1) / (1.0 - (1.0 + r_trunc**2 / rc**2) ** e1)
    scale = frac / np.maximum(inside, 1e-300)
    b = ins.binning
    binned = prof.reshape(-1, g // b, b, g // b, b).sum(axis=(2, 4), dtype=np.float64)
    return binned * scale[:, None, None]


def _cluster_maps(params: dict[str, np.ndarray], cfg: SimConfig) -> np.ndarray:
    """(n, G, G) unit-luminosity cluster model (main plus cool core) on the padded grid."""
    r_t = cfg.profile.truncation_r500 * params["r500_arcsec"]
    geo = {
        "q": params["axis_ratio"],
        "angle_deg": params["angle_deg"],
        "dx": params["offset_x_arcsec"],
        "dy": params["offset_y_arcsec"],
        "r_trunc": r_t,
    }
    main = _beta_maps(params["rc_arcsec"], params["beta"], geo, cfg)
    f = params["cc_flux_fraction"]
    cc = np.flatnonzero(f > 0)
    out = main * (1.0 - f)[:, None, None]
    if cc.size:
        core_geo = {k: v[cc] for k, v in geo.items()}
        core = _beta_maps(params["cc_rc_arcsec"][cc], params["beta"][cc], core_geo, cfg)
        out[cc] += core * f[cc, None, None]
    return out


def _convolve(maps: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """PSF-convolves (m, G, G) maps by FFT and crops them to (m, N, N)."""
    p, n_img = _pad_pixels(cfg), cfg.instrument.image_size
    if p == 0:
        return maps
    g = maps.shape[-1]
    kernel = np.zeros((g, g))
    k = psf_kernel(cfg)
    kernel[: 2 * p + 1, : 2 * p + 1] = k
    kernel = np.roll(kernel, (-p, -p), axis=(0, 1))  # centre at (0, 0)
    # single precision: 2x faster, and 1e-7 of the peak is far below one photon
    spectrum = scipy.fft.rfft2(maps.astype(np.float32)) * scipy.fft.rfft2(
        kernel.astype(np.float32)
    )
    out = scipy.fft.irfft2(spectrum, s=(g, g))[:, p : p + n_img, p : p + n_img]
    return np.clip(out, 0.0, None).astype(np.float64)


def expected_counts(
    params: dict[str, np.ndarray], cfg: SimConfig, sources: PointSources | None = None
) -> dict[str, np.ndarray]:
    """Noise-free expected counts of each component in the cut-out.

    Args:
        params: the draws of `draw_clusters` (n clusters).
        cfg: the simulator config; its switches turn PSF, background and point sources off.
        sources: AGN from `draw_point_sources`, or None for none.

    Returns:
        'cluster', 'background', 'point_sources' and their sum 'total', each (n, N, N, C) float64
        expected counts.
    """
    parts = expected_parts(params, cfg, sources)
    out = {
        "cluster": parts["cluster_map"][..., None] * parts["cluster_spec"][:, None, None, :],
        "point_sources": parts["agn_map"][..., None] * parts["agn_spec"][:, None, None, :],
        "background": np.broadcast_to(
            parts["bkg_pixel"][:, None, None, :],
            parts["cluster_map"].shape + parts["bkg_pixel"].shape[-1:],
        ),
    }
    out["total"] = out["cluster"] + out["point_sources"] + out["background"]
    return out


def expected_parts(
    params: dict[str, np.ndarray], cfg: SimConfig, sources: PointSources | None
) -> dict[str, np.ndarray]:
    """The factors of `expected_counts`, kept apart so that no (n, N, N, C) array is needed.

    Returns:
        'cluster_map' (n, N, N) share of each cluster's counts per pixel (PSF applied),
        'cluster_spec' (n, C) its counts per channel, 'agn_map' (n, N, N) AGN flux per pixel
        (erg/s/cm^2, PSF applied), 'agn_spec' (n, C) counts per unit of that flux, and
        'bkg_pixel' (n, C) background counts per pixel; all float64.
    """
    n = params["redshift"].size
    ins = cfg.instrument
    spec = channel_counts(
        params["log_lx"],
        params["kT"],
        params["redshift"],
        params["nh_cm2"],
        params["exposure_s"],
        cfg,
    )
    maps = _cluster_maps(params, cfg)
    g = maps.shape[-1]
    agn = np.zeros_like(maps)
    if sources is not None and sources.cluster.size:
        half = g * ins.pixel_arcsec / 2.0
        ix = np.clip(((sources.x_arcsec + half) // ins.pixel_arcsec).astype(int), 0, g - 1)
        iy = np.clip(((sources.y_arcsec + half) // ins.pixel_arcsec).astype(int), 0, g - 1)
        np.add.at(agn, (sources.cluster, iy, ix), sources.flux)
    both = _convolve(np.concatenate([maps, agn]), cfg)
    agn_spec = agn_counts_per_flux(params["nh_cm2"], params["exposure_s"], cfg)
    pix_arcmin2 = (ins.pixel_arcsec / 60.0) ** 2
    bkg_total = params["bkg_rate"] * params["exposure_s"] * pix_arcmin2 * cfg.background.enabled
    return {
        "cluster_map": both[:n],
        "cluster_spec": spec,
        "agn_map": both[n:],
        "agn_spec": agn_spec,
        "bkg_pixel": bkg_total[:, None] * background_spectrum(cfg)[None, :],
    }
