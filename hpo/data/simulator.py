"""The eROSITA-like mock cluster generator of docs/simulator.md: config, draws, counts, HDF5.

    hpo simulate data/mock.h5 --n 10000 --seed 0 --preset eRASS:8 [--config sim.yaml]

One cluster, in order: population (M500, z) -> scaling relations with correlated log-normal
scatter (kT, soft-band L) -> elliptical, offset beta model (plus an optional cool core) on 4"
sky pixels, binned to 8" -> King PSF by FFT over the whole batch -> thermal spectrum with a
Gaunt-like tilt, redshifted (K-correction), absorbed, folded through the effective area into
10 channels -> plus background and AGN point sources -> Poisson counts. Every hidden draw is
returned under `truth/`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from typing import Any
from typing import Literal

import h5py
import numpy as np
import scipy.fft
import yaml
from pydantic import AfterValidator
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import ValidationError
from pydantic import field_validator
from pydantic import model_validator
from scipy.special import gamma
from scipy.special import gammainc
from tqdm import tqdm

from hpo.data.cosmology import ARCSEC_PER_RAD
from hpo.data.cosmology import MPC_CM
from hpo.data.cosmology import CosmologyConfig
from hpo.data.cosmology import FlatLCDM
from hpo.errors import ConfigError

GENERATOR = "hpo.simulator/1"
CHUNK_CLUSTERS = 1000  # clusters per RNG stream and per HDF5 write; part of the seed's meaning
_BLOCK = 250  # clusters per image batch inside a chunk (bounds the temporaries to ~30 MB each)
KEV_ERG = 1.602_176_634e-9  # one keV in erg
_COUNT_MAX = np.iinfo(np.uint16).max

PRESETS: dict[str, tuple[float, float]] = {
    "eRASS1": (150.0, 250.0),  # one all-sky pass
    "eRASS:4": (800.0, 1250.0),  # four passes stacked
    "eRASS:8": (1600.0, 2500.0),  # the full eight-pass depth
    "eFEDS": (1200.0, 2200.0),  # the equatorial depth field, after vignetting
}
"""Survey presets: per-cluster exposure range (s), drawn uniformly within it."""


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if not value[0] <= value[1]:
        raise ValueError(f"a range must be (low, high) with low <= high, got {value}")
    return value


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------------------------
# configuration


class PopulationConfig(_Section):
    log_mass_range: Range = Field((13.0, 15.0), description="log10(M500/Msun) bounds.")
    mass_function: Literal["uniform", "power_law", "cutoff_power_law"] = Field(
        "uniform",
        description="uniform in log M; power_law dn/dM ~ M^mass_slope; cutoff_power_law adds a "
        "Tinker-like exp(-M/M*(z)) that thins massive clusters at high z.",
    )
    mass_slope: float = Field(-2.0, description="dn/dM ~ M^mass_slope (power-law options).")
    cutoff_log_mass: float = Field(14.8, description="log10 M*(z=0)/Msun of the cutoff.")
    cutoff_evolution: float = Field(2.0, description="M*(z) = M*(0) (1+z)^-cutoff_evolution.")
    redshift_range: Range = Field((0.05, 1.0), description="z drawn uniformly in this range.")

    @field_validator("redshift_range")
    @classmethod
    def _positive_z(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0:
            raise ValueError(f"redshift must be > 0, got range {value}")
        return value


class ScalingConfig(_Section):
    pivot_mass_msun: float = Field(3e14, gt=0, description="Pivot mass of both relations, Msun.")
    kt_pivot_kev: float = Field(5.0, gt=0, description="kT at the pivot mass and z=0, keV.")
    kt_mass_slope: float = Field(
        2 / 3, description="kT ~ (E(z) M)^kt_mass_slope (self-similar 2/3)."
    )
    sigma_ln_kt: float = Field(0.15, ge=0, description="Log-normal scatter of kT at fixed M, z.")
    lx_pivot_erg_s: float = Field(1e44, gt=0, description="Soft-band L at the pivot mass, erg/s.")
    lx_mass_slope: float = Field(1.5, description="L ~ M^lx_mass_slope (literature 1.4-1.6).")
    lx_ez_slope: float = Field(2.0, description="L ~ E(z)^lx_ez_slope.")
    sigma_ln_lx: float = Field(0.40, ge=0, description="Log-normal scatter of L at fixed M, z.")
    rho_lx_kt: float = Field(
        0.5, ge=-1, le=1, description="Correlation of the ln L and ln kT scatters (0.3-0.5)."
    )
    lx_band_kev: Range = Field((0.5, 2.0), description="Rest-frame band of L, keV.")


class ProfileConfig(_Section):
    beta_range: Range = Field((0.55, 0.85), description="Beta drawn uniformly; must be > 0.5.")
    xc_median: float = Field(0.15, gt=0, description="Median core radius rc / R500.")
    sigma_ln_xc: float = Field(0.3, ge=0, description="Log-normal scatter of rc / R500.")
    axis_ratio_range: Range = Field((0.6, 1.0), description="Minor/major axis ratio, uniform.")
    offset_sigma_r500: float = Field(
        0.03,
        ge=0,
        description="Centroid offset from the cut-out centre, Gaussian sigma per axis, R500.",
    )
    truncation_r500: float = Field(
        3.0,
        gt=0,
        description="The model ends at this elliptical radius (R500); it emits all of L.",
    )
    cool_core_probability: float = Field(
        0.3, ge=0, le=1, description="Chance of a second, compact beta component (0 turns it off)."
    )
    cool_core_rc_ratio: float = Field(0.2, gt=0, description="Cool-core rc / main rc.")
    cool_core_flux_range: Range = Field(
        (0.1, 0.4), description="Share of L in the cool-core component, uniform."
    )

    @field_validator("beta_range")
    @classmethod
    def _beta_above_half(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0.5:
            raise ValueError(f"beta must be > 0.5 for a finite luminosity, got range {value}")
        return value


class SpectrumConfig(_Section):
    gaunt_index: float = Field(
        0.3, ge=0, lt=1, description="dL/dE ~ (E/kT)^-gaunt_index exp(-E/kT): Gaunt-like tilt."
    )
    nh_range_cm2: Range = Field((1e20, 5e20), description="Galactic N_H, log-uniform, cm^-2.")
    sigma_abs_1kev_cm2: float = Field(
        2.4e-22, ge=0, description="Photoelectric cross-section per H atom at 1 keV, cm^2."
    )
    abs_energy_slope: float = Field(
        8 / 3, description="sigma(E) = sigma(1 keV) E^-abs_energy_slope."
    )
    channel_edges_kev: list[float] = Field(
        [0.2, 0.5, 0.7, 1.0, 1.3, 1.6, 2.0, 2.5, 3.5, 5.0, 8.0],
        description="Observed-frame channel edges, keV, increasing; C channels need C+1 edges.",
    )
    quadrature_bins: int = Field(
        32, ge=2, description="Energy sub-bins per channel (midpoint rule)."
    )

    @field_validator("channel_edges_kev")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if len(value) < 2 or value[0] <= 0 or any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError(f"channel edges must be > 0 and strictly increasing, got {value}")
        return value


class InstrumentConfig(_Section):
    area_energy_kev: list[float] = Field(
        [0.2, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0], description="Effective-area table energies, keV."
    )
    area_cm2: list[float] = Field(
        [150.0, 1000.0, 1400.0, 1150.0, 800.0, 300.0, 120.0, 25.0],
        description="Effective area of the seven modules together, cm^2 (log-log interpolated).",
    )
    sky_pixel_arcsec: float = Field(4.0, gt=0, description="Native sky pixel, arcsec.")
    binning: int = Field(2, ge=1, description="Sky pixels per image pixel along each axis.")
    image_size: int = Field(50, ge=8, description="Cut-out side, image pixels.")
    psf_enabled: bool = Field(True, description="Convolve with the PSF (off: ideal optics).")
    psf_model: Literal["king", "gaussian"] = Field("king", description="PSF radial shape.")
    psf_hew_arcsec: float = Field(28.0, gt=0, description="PSF half-energy width (diameter).")
    psf_king_slope: float = Field(1.5, gt=1, description="King PSF ~ (1 + r^2/r_k^2)^-slope.")
    psf_truncation_arcsec: float = Field(
        100.0,
        gt=0,
        description="PSF radius kept (renormalised inside); also the cut-out's margin.",
    )

    @model_validator(mode="after")
    def _area_table(self) -> InstrumentConfig:
        e, a = self.area_energy_kev, self.area_cm2
        if len(e) != len(a) or len(e) < 2:
            raise ValueError(f"area table needs >= 2 matching rows, got {len(e)} and {len(a)}")
        if any(y <= x for x, y in zip(e, e[1:])) or min(e) <= 0 or min(a) <= 0:
            raise ValueError("area_energy_kev must increase and both columns must be > 0")
        return self

    @property
    def pixel_arcsec(self) -> float:
        """Image pixel, arcsec (sky pixel times binning)."""
        return self.sky_pixel_arcsec * self.binning


class SurveyConfig(_Section):
    preset: str = Field("eRASS:8", description=f"Exposure preset, one of {sorted(PRESETS)}.")
    exposure_range_s: Range | None = Field(
        None, description="Per-cluster exposure range, s; None takes the preset's."
    )

    @field_validator("preset")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset '{value}'; valid presets: {', '.join(PRESETS)}")
        return value

    def exposure_range(self) -> tuple[float, float]:
        """The exposure range in force, s."""
        return self.exposure_range_s or PRESETS[self.preset]


class BackgroundConfig(_Section):
    enabled: bool = Field(True, description="Add the flat background (off: no background).")
    rate_per_arcmin2: float = Field(
        4e-3, ge=0, description="Median rate over all channels, counts/s/arcmin^2."
    )
    sigma_ln_rate: float = Field(0.15, ge=0, description="Log-normal cluster-to-cluster scatter.")
    particle_fraction: float = Field(
        0.4, ge=0, le=1, description="Share of particle background (flat per keV, not folded)."
    )
    sky_photon_index: float = Field(1.4, description="Cosmic X-ray background photon index.")
    soft_fraction: float = Field(
        0.3, ge=0, le=1, description="Share of the sky part that is soft."
    )
    soft_kt_kev: float = Field(0.2, gt=0, description="Temperature of the soft foreground, keV.")


class PointSourceConfig(_Section):
    enabled: bool = Field(True, description="Add unrelated AGN (off: none).")
    density_per_deg2: float = Field(
        300.0, ge=0, description="N(>flux_min) per deg^2 (0.5-2 keV logN-logS)."
    )
    flux_min_erg_s_cm2: float = Field(2e-15, gt=0, description="Faintest AGN, 0.5-2 keV.")
    flux_max_erg_s_cm2: float = Field(1e-12, gt=0, description="Brightest AGN, 0.5-2 keV.")
    lognlogs_slope: float = Field(1.2, gt=0, description="N(>S) ~ S^-lognlogs_slope.")
    photon_index: float = Field(1.9, description="AGN power-law photon index (absorbed by N_H).")


class SimConfig(_Section):
    """Every number of the simulator; defaults are docs/simulator.md's literature values."""

    cosmology: CosmologyConfig = CosmologyConfig()
    population: PopulationConfig = PopulationConfig()
    scaling: ScalingConfig = ScalingConfig()
    profile: ProfileConfig = ProfileConfig()
    spectrum: SpectrumConfig = SpectrumConfig()
    instrument: InstrumentConfig = InstrumentConfig()
    survey: SurveyConfig = SurveyConfig()
    background: BackgroundConfig = BackgroundConfig()
    point_sources: PointSourceConfig = PointSourceConfig()


def apply_sim_overrides(
    overrides: dict[str, Any], *, base: SimConfig | None = None, where: str = "overrides"
) -> SimConfig:
    """Applies nested or dotted overrides ({"profile.beta_range": [0.6, 0.7]}) and validates once.

    Raises:
        ConfigError: an unknown key or a refused value, naming `where` and the key.
    """
    tree = (base or SimConfig()).model_dump(mode="python")
    for key, value in _flatten(overrides).items():
        node_type: type[BaseModel] = SimConfig
        node = tree
        *parents, leaf = key.split(".")
        for i, part in enumerate([*parents, leaf]):
            fields = node_type.model_fields
            if part not in fields:
                here = ".".join(key.split(".")[:i]) or "the top level"
                raise ConfigError(f"{where}: unknown key '{key}'; {here} has: {', '.join(fields)}")
            ann = fields[part].annotation
            if i < len(parents):
                if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                    raise ConfigError(
                        f"{where}: key '{key}' goes below '{part}', which is a value"
                    )
                node_type, node = ann, node[part]
        node[leaf] = value
    try:
        return SimConfig.model_validate(tree)
    except ValidationError as exc:
        parts = [
            f"'{'.'.join(str(p) for p in err['loc'])}': {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        ]
        raise ConfigError(f"{where}: {'; '.join(parts)}") from None


def load_sim_config(path: str | Path | None = None, preset: str | None = None) -> SimConfig:
    """The simulator config: defaults, then a YAML file of overrides, then the preset name.

    Args:
        path: YAML mapping of nested or dotted overrides of SimConfig, or None for defaults.
        preset: one of PRESETS; overrides `survey.preset` of the file. None keeps the file's.

    Raises:
        ConfigError: a missing or malformed file, an unknown key (naming file and key), a refused
            value, or an unknown preset (listing the valid ones).
    """
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}")
    overrides: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path, where = Path(path), str(path)
        if not path.exists():
            raise ConfigError(f"simulator config file not found: {path}")
        try:
            overrides = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(overrides, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {overrides!r}")
    cfg = apply_sim_overrides(overrides, where=where)
    if preset is not None:
        cfg = apply_sim_overrides({"survey.preset": preset}, base=cfg, where="--preset")
    return cfg


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---------------------------------------------------------------------------------------------
# response: effective area, absorption, channels


def effective_area(energy_kev: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """Effective area at `energy_kev` (any shape), cm^2; log-log interpolation of the table."""
    e = np.log(np.asarray(cfg.instrument.area_energy_kev))
    a = np.log(np.asarray(cfg.instrument.area_cm2))
    return np.exp(np.interp(np.log(energy_kev), e, a))


def transmission(energy_kev: np.ndarray, nh_cm2: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """Galactic photoelectric transmission exp(-N_H sigma(E)), broadcast of the two inputs."""
    sp = cfg.spectrum
    return np.exp(-nh_cm2 * sp.sigma_abs_1kev_cm2 * energy_kev ** (-sp.abs_energy_slope))


def _energy_grid(cfg: SimConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Midpoints (K,) keV, widths (K,) keV and channel index (K,) of the quadrature grid."""
    edges = np.asarray(cfg.spectrum.channel_edges_kev)
    m = cfg.spectrum.quadrature_bins
    frac = (np.arange(m) + 0.5) / m
    width = np.diff(edges)
    mid = (edges[:-1, None] + width[:, None] * frac[None, :]).ravel()
    return mid, np.repeat(width / m, m), np.repeat(np.arange(edges.size - 1), m)


def _band_integral(
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
    norm = 10.0 ** np.asarray(log_lx, dtype=np.float64)[:, None] / _band_integral(lo, hi, kt, g)
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


def _agn_counts_per_flux(nh: np.ndarray, exposure: np.ndarray, cfg: SimConfig) -> np.ndarray:
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
    """(C,) share of the background in each channel; sums to 1."""
    bg = cfg.background
    mid, width, chan = _energy_grid(cfg)
    n_chan = len(cfg.spectrum.channel_edges_kev) - 1
    area = effective_area(mid, cfg)
    parts = [width, mid ** (-bg.sky_photon_index) * area * width]
    parts.append(np.exp(-mid / bg.soft_kt_kev) / mid * area * width)
    shares = [_sum_channels(p[None, :], chan, n_chan)[0] for p in parts]
    shares = [s / s.sum() for s in shares]
    sky = (1 - bg.soft_fraction) * shares[1] + bg.soft_fraction * shares[2]
    return bg.particle_fraction * shares[0] + (1 - bg.particle_fraction) * sky


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
    exposure = rng.uniform(*cfg.survey.exposure_range(), size=n)
    bkg_rate = cfg.background.rate_per_arcmin2 * np.exp(
        cfg.background.sigma_ln_rate * rng.standard_normal(n)
    )
    # observed soft-band flux (K-corrected): rest band (1+z) [0.5, 2] keV lands in 0.5-2 keV
    lo, hi = sc.lx_band_kev
    kcorr = _band_integral(0.5 * (1 + z), 2.0 * (1 + z), kt, sp.gaunt_index) / _band_integral(
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


def draw_point_sources(rng: np.random.Generator, n: int, cfg: SimConfig) -> PointSources:
    """Poisson numbers of AGN over each padded cut-out, power-law fluxes, uniform positions."""
    ps = cfg.point_sources
    half = _grid_pixels(cfg) * cfg.instrument.pixel_arcsec / 2.0
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
# images


def _pad_pixels(cfg: SimConfig) -> int:
    ins = cfg.instrument
    return int(np.ceil(ins.psf_truncation_arcsec / ins.pixel_arcsec)) if ins.psf_enabled else 0


def _grid_pixels(cfg: SimConfig) -> int:
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
    g = _grid_pixels(cfg) * ins.binning
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
    parts = _expected_parts(params, cfg, sources)
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


def _expected_parts(
    params: dict[str, np.ndarray], cfg: SimConfig, sources: PointSources | None
) -> dict[str, np.ndarray]:
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
    agn_spec = _agn_counts_per_flux(params["nh_cm2"], params["exposure_s"], cfg)
    pix_arcmin2 = (ins.pixel_arcsec / 60.0) ** 2
    bkg_total = params["bkg_rate"] * params["exposure_s"] * pix_arcmin2 * cfg.background.enabled
    return {
        "cluster_map": both[:n],
        "cluster_spec": spec,
        "agn_map": both[n:],
        "agn_spec": agn_spec,
        "bkg_pixel": bkg_total[:, None] * background_spectrum(cfg)[None, :],
    }


def simulate_chunk(rng: np.random.Generator, n: int, cfg: SimConfig) -> dict[str, np.ndarray]:
    """Simulates n clusters: draws, expected counts, Poisson images.

    Returns:
        'images' (n, N, N, C) uint16 counts (N = image_size, C channels), 'redshift' and
        'log_mass' (n,) float32, and 'truth/<name>' (n,) float32 for every draw of
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
        parts = _expected_parts(sub, cfg, _select(sources, sl))
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
    path: str | Path, n: int, seed: int, cfg: SimConfig | None = None, progress: bool = False
) -> Path:
    """Writes n simulated clusters to an HDF5 file following the data contract, chunk by chunk.

    Chunk i (CHUNK_CLUSTERS clusters) draws from SeedSequence(seed).spawn(...)[i], so the same
    (n, seed, cfg) gives the same file, byte for byte; memory stays bounded for any n. The file
    is written next to `path` and renamed into place when complete.

    Args:
        path: output file (.h5).
        n: number of clusters, >= 1.
        seed: non-negative integer seed.
        cfg: the simulator config; None for defaults.
        progress: show a tqdm bar.

    Returns:
        The path written.

    Raises:
        ConfigError: n < 1 or seed < 0.
    """
    cfg = cfg or SimConfig()
    if n < 1 or seed < 0:
        raise ConfigError(f"write_mock needs n >= 1 and seed >= 0, got {n=}, {seed=}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    n_chunks = -(-n // CHUNK_CLUSTERS)
    streams = np.random.SeedSequence(seed).spawn(n_chunks)
    size, n_chan = cfg.instrument.image_size, len(cfg.spectrum.channel_edges_kev) - 1
    with h5py.File(tmp, "w") as f, tqdm(total=n, disable=not progress, unit="cluster") as bar:
        for i, stream in enumerate(streams):
            start = i * CHUNK_CLUSTERS
            stop = min(n, start + CHUNK_CLUSTERS)
            chunk = simulate_chunk(np.random.default_rng(stream), stop - start, cfg)
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
        f.attrs["chunk_clusters"] = CHUNK_CLUSTERS
        f.attrs["image_shape"] = np.asarray([size, size, n_chan])
        f.attrs["sim_config"] = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    os.replace(tmp, path)
    return path


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
