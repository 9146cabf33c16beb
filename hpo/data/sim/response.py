"""The spectral and instrument response: effective area, absorption, channel counts, background.

    hpo simulate data/mock.h5 --n 1000 --seed 0     # every cluster's spectrum is folded here

A thermal spectrum with a Gaunt-like tilt is redshifted, absorbed by the Galactic N_H and folded
through the effective area into the channels by midpoint quadrature; AGN (absorbed power law)
and the background (particle, sky power law, soft foreground) get channel shares the same way.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gamma
from scipy.special import gammainc

from hpo.data.cosmology import FlatLCDM
from hpo.data.cosmology import MPC_CM
from hpo.data.sim.config import SimConfig

KEV_ERG = 1.602_176_634e-9  # one keV in erg


def effective_area(energy_kev: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """Effective area whose counts a cut-out keeps at `energy_kev` (any shape), cm^2: the seven
    modules' area less TM5 and TM7 below 0.8 keV under the light-leak cut that `hpo cutouts`
    applies by default (instrument.light_leak_cut)."""
    return _modules_area(energy_kev, cfg) * cfg.instrument.kept_share(energy_kev)


def _modules_area(energy_kev: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """The seven modules' effective area, cm^2: log-log interpolation of the table."""
    e = np.log(np.asarray(cfg.instrument.area_energy_kev))
    a = np.log(np.asarray(cfg.instrument.area_cm2))
    return np.exp(np.interp(np.log(energy_kev), e, a))


def transmission(energy_kev: np.ndarray, nh_cm2: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """Galactic photoelectric transmission exp(-N_H sigma(E)), broadcast of the two inputs."""
    sp = cfg.spectrum
    return np.exp(-nh_cm2 * sp.sigma_abs_1kev_cm2 * energy_kev ** (-sp.abs_energy_slope))


def _energy_grid(cfg: SimConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Midpoints (K,) keV, widths (K,) keV and channel index (K,) of the quadrature grid.

    Each channel has spectrum.quadrature_bins sub-bins; a channel that the light-leak energy
    splits has them on both sides of it (in proportion, at least 2 each), so that the step in
    the area falls on a sub-bin edge rather than inside one.
    """
    edges = np.asarray(cfg.spectrum.channel_edges_kev)
    m = cfg.spectrum.quadrature_bins
    cut = cfg.instrument.light_leak_kev if cfg.instrument.light_leak_cut else None
    mids, widths, chans = [], [], []
    for c, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        pieces = [(lo, cut), (cut, hi)] if cut is not None and lo < cut < hi else [(lo, hi)]
        for a, b in pieces:
            k = m if len(pieces) == 1 else max(2, round(m * (b - a) / (hi - lo)))
            w = (b - a) / k
            mids.append(a + w * (np.arange(k) + 0.5))
            widths.append(np.full(k, w))
            chans.append(np.full(k, c))
    return np.concatenate(mids), np.concatenate(widths), np.concatenate(chans)


def band_integral(
    lo: np.ndarray | float, hi: np.ndarray | float, kt: np.ndarray, g: float
) -> np.ndarray:
    """Integral of (E/kT)^-g exp(-E/kT) dE from lo to hi keV, keV (incomplete gamma function)."""
    a = 1.0 - g
    return kt * gamma(a) * (gammainc(a, hi / kt) - gammainc(a, lo / kt))


def channel_counts(
    log_lx: np.ndarray,
    kt: np.ndarray,
    redshift: np.ndarray,
    nh_cm2: np.ndarray,
    exposure_s: np.ndarray,
    cfg: SimConfig,
) -> np.ndarray:
    """Counts per channel from the whole cluster: L folded through the response (no cut-out, PSF).

    dL/dE ~ (E/kT)^-g exp(-E/kT), normalised to 10^log_lx in the rest band; the observed energy
    flux density is (1+z) dL/dE(E (1+z)) / (4 pi D_L^2), divided by the photon energy, absorbed,
    times effective area and exposure, integrated over each channel.

    Args:
        log_lx: (n,) log10 rest-frame band luminosity, erg/s.
        kt: (n,) temperature, keV.
        redshift: (n,) z > 0.
        nh_cm2: (n,) Galactic column, cm^-2.
        exposure_s: (n,) exposure, s.
        cfg: the simulator config.

    Returns:
        (n, C) float64 expected counts.
    """
    cosmo = FlatLCDM.from_config(cfg.cosmology)
    g = cfg.spectrum.gaunt_index
    lo, hi = cfg.scaling.lx_band_kev
    kt = np.asarray(kt, dtype=np.float64)[:, None]
    z = np.asarray(redshift, dtype=np.float64)[:, None]
    d_l_cm = cosmo.luminosity_distance_mpc(z) * MPC_CM
    # erg/s/keV per unit shape, so that the rest band holds exactly L
    norm = 10.0 ** np.asarray(log_lx, dtype=np.float64)[:, None] / band_integral(lo, hi, kt, g)
    mid, width, chan = _energy_grid(cfg)
    x = mid[None, :] * (1.0 + z) / kt
    flux_e = (1.0 + z) * norm * x ** (-g) * np.exp(-x) / (4.0 * np.pi * d_l_cm**2)
    photons = flux_e / (mid * KEV_ERG)  # photons/s/cm^2/keV
    nh = np.asarray(nh_cm2, dtype=np.float64)[:, None]
    weight = effective_area(mid, cfg) * width * transmission(mid, nh, cfg)
    rate = photons * weight * np.asarray(exposure_s, dtype=np.float64)[:, None]
    return _sum_channels(rate, chan, len(cfg.spectrum.channel_edges_kev) - 1)


def _sum_channels(per_bin: np.ndarray, chan: np.ndarray, n_chan: int) -> np.ndarray:
    out = np.zeros((per_bin.shape[0], n_chan))
    for c in range(n_chan):
        out[:, c] = per_bin[:, chan == c].sum(axis=1)
    return out


def agn_counts_per_flux(nh: np.ndarray, exposure: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """(n, C) counts per unit observed 0.5-2 keV energy fluence (erg/cm^2), absorbed power law."""
    gamma = cfg.point_sources.photon_index
    mid, width, chan = _energy_grid(cfg)
    e = np.linspace(0.5, 2.0, 2001)
    band = np.trapezoid(e ** (1.0 - gamma), e) * KEV_ERG  # erg/cm^2/s per unit photon norm
    weight = (
        mid ** (-gamma) * effective_area(mid, cfg) * width * transmission(mid, nh[:, None], cfg)
    )
    return _sum_channels(
        weight * exposure[:, None] / band, chan, len(cfg.spectrum.channel_edges_kev) - 1
    )


def background_spectrum(cfg: SimConfig) -> np.ndarray:
    """(C,) share of the background's band rate (background.rate_per_arcmin2, all seven modules)
    in each channel that a cut-out keeps; sums to 1 without the light-leak cut, less with it (the
    cut drops those modules' particle and sky events alike)."""
    bg = cfg.background
    mid, width, chan = _energy_grid(cfg)
    n_chan = len(cfg.spectrum.channel_edges_kev) - 1
    kept = cfg.instrument.kept_share(mid)
    area = _modules_area(mid, cfg)
    parts = [width, mid ** (-bg.sky_photon_index) * area * width]
    parts.append(np.exp(-mid / bg.soft_kt_kev) / mid * area * width)
    shares = [_sum_channels((p * kept)[None, :], chan, n_chan)[0] / p.sum() for p in parts]
    sky = (1 - bg.soft_fraction) * shares[1] + bg.soft_fraction * shares[2]
    return bg.particle_fraction * shares[0] + (1 - bg.particle_fraction) * sky
