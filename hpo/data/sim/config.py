"""The simulator's settings: one pydantic tree (SimConfig), survey presets, dotted overrides.

    hpo simulate data/mock.h5 --n 1000 --seed 0 --preset eFEDS --config sim.yaml

Defaults are docs/simulator.md's literature values; `load_sim_config` applies a YAML file of
nested or dotted overrides, then the preset name, and validates once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from typing import Any
from typing import Literal

import numpy as np
from pydantic import AfterValidator
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import field_validator
from pydantic import model_validator

from hpo.config.overrides import override_model
from hpo.config.overrides import read_yaml
from hpo.data.cosmology import CosmologyConfig
from hpo.data.cosmology import Z_MAX
from hpo.errors import ConfigError

PRESETS: dict[str, tuple[float, float]] = {
    "eRASS1": (150.0, 250.0),  # one all-sky pass
    "eRASS:4": (800.0, 1250.0),  # four passes stacked
    "eRASS:8": (1600.0, 2500.0),  # the full eight-pass depth
    "eFEDS": (1200.0, 2200.0),  # the equatorial depth field, after vignetting
    "mixed": (150.0, 2500.0),  # every depth from eRASS1 to eRASS:8: trains one model for all
}
"""Survey presets: per-cluster exposure range (s), drawn uniformly within it (log-uniformly for
the presets of EXPOSURE_DISTRIBUTION)."""
EXPOSURE_DISTRIBUTION: dict[str, str] = {"mixed": "log_uniform"}  # else uniform
MODULES = 7  # eROSITA's telescope modules TM1-7; area_cm2 is theirs together


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if not value[0] <= value[1]:
        raise ValueError(f"a range must be (low, high) with low <= high, got {value}")
    return value


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
        if value[1] > Z_MAX:
            raise ValueError(
                f"redshift must be <= {Z_MAX:g} (the data contract's), got range {value}")
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
    light_leak_cut: bool = Field(
        True,
        description="Cut-outs keep no counts of light_leak_modules below light_leak_kev, as `hpo "
        "cutouts` drops them by default (their optical light leak); off: every module at every "
        "energy, the twin of `hpo cutouts --keep-light-leak`.",
    )
    light_leak_modules: list[int] = Field(
        [5, 7], description="Telescope modules (of TM1-7) without the on-chip filter."
    )
    light_leak_kev: float = Field(0.8, gt=0, description="Energy below which they are cut, keV.")

    @model_validator(mode="after")
    def _area_table(self) -> InstrumentConfig:
        e, a = self.area_energy_kev, self.area_cm2
        if len(e) != len(a) or len(e) < 2:
            raise ValueError(f"area table needs >= 2 matching rows, got {len(e)} and {len(a)}")
        if any(y <= x for x, y in zip(e, e[1:])) or min(e) <= 0 or min(a) <= 0:
            raise ValueError("area_energy_kev must increase and both columns must be > 0")
        return self

    @field_validator("light_leak_modules")
    @classmethod
    def _modules(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or not set(value) <= set(range(1, MODULES + 1)):
            raise ValueError(f"light_leak_modules must be distinct modules of 1-{MODULES}, got {value}")
        if len(value) == MODULES:
            raise ValueError("light_leak_modules cannot be every module: no area would be left")
        return value

    def kept_share(self, energy_kev: np.ndarray) -> np.ndarray:
        """Share of the seven modules' area whose counts a cut-out keeps at `energy_kev`."""
        energy_kev = np.asarray(energy_kev, dtype=np.float64)
        if not self.light_leak_cut:
            return np.ones_like(energy_kev)
        kept = 1.0 - len(self.light_leak_modules) / MODULES
        return np.where(energy_kev < self.light_leak_kev, kept, 1.0)

    @property
    def pixel_arcsec(self) -> float:
        """Image pixel, arcsec (sky pixel times binning)."""
        return self.sky_pixel_arcsec * self.binning


class SurveyConfig(_Section):
    preset: str = Field("eRASS:8", description=f"Exposure preset, one of {sorted(PRESETS)}.")
    exposure_range_s: Range | None = Field(
        None, description="Per-cluster exposure range, s; None takes the preset's."
    )
    exposure_distribution: Literal["uniform", "log_uniform"] | None = Field(
        None,
        description="How exposures are drawn within the range; None takes the preset's (log_uniform "
        "for `mixed`, an equal share of clusters per factor of depth; uniform for the others).",
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

    def distribution(self) -> str:
        """The exposure distribution in force: uniform or log_uniform."""
        return self.exposure_distribution or EXPOSURE_DISTRIBUTION.get(self.preset, "uniform")

    @model_validator(mode="after")
    def _positive_for_log(self) -> SurveyConfig:
        if self.distribution() == "log_uniform" and self.exposure_range()[0] <= 0:
            raise ValueError(f"a log_uniform exposure needs a range above 0 s, got {self.exposure_range()}")
        return self


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
    return override_model(SimConfig, overrides, base=base, where=where)


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
    overrides = read_yaml(Path(path)) if path is not None else {}
    cfg = apply_sim_overrides(overrides, where=str(path) if path is not None else "defaults")
    if preset is not None:
        cfg = apply_sim_overrides({"survey.preset": preset}, base=cfg, where="--preset")
    return cfg
