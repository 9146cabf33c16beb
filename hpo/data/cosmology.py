"""Flat LCDM distances and densities, vectorised over redshift (tabulated once, then interpolated).

hpo simulate data/mock.h5 --n 1000 --seed 0     # every simulated cluster goes through FlatLCDM
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from scipy.integrate import cumulative_simpson

C_KM_S = 299_792.458  # speed of light, km/s
G_CGS = 6.674_30e-8  # gravitational constant, cm^3 g^-1 s^-2
MPC_CM = 3.085_677_581e24  # one megaparsec, cm
MSUN_G = 1.988_409_87e33  # one solar mass (IAU 2015 nominal), g
ARCSEC_PER_RAD = 206_264.806_247

_Z_STEP = 2e-4  # grid spacing of the comoving-distance table (interpolation error < 1e-8)
_Z_TABLE_MIN = 10.0  # the table always reaches at least this redshift
# The highest redshift the package takes (the data contract, the simulator's range): no galaxy
# cluster is known beyond z ~ 2, and the distance table grows with the largest z asked for
# (z = 1e30 asked for 5e33 grid points).
Z_MAX = 20.0


class CosmologyConfig(BaseModel):
    """The flat LCDM model the simulator and the floors assume."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    h0: float = Field(70.0, gt=0, description="Hubble constant H0, km/s/Mpc.")
    omega_m: float = Field(
        0.3, gt=0, le=1, description="Matter density today; Omega_Lambda = 1 - omega_m (flat)."
    )


class FlatLCDM:
    """Flat LCDM with radiation neglected; every method takes z as a scalar or an array.

    Distances come from a cumulative Simpson integral of 1/E(z) on a fine grid, then linear
    interpolation, so a million redshifts cost one `np.interp`.

    Args:
        h0: Hubble constant, km/s/Mpc.
        omega_m: matter density today (Omega_Lambda = 1 - omega_m).
    """

    def __init__(self, h0: float = 70.0, omega_m: float = 0.3) -> None:
        if h0 <= 0 or not 0 < omega_m <= 1:
            raise ValueError(f"need h0 > 0 and 0 < omega_m <= 1, got {h0=}, {omega_m=}")
        self.h0 = float(h0)
        self.omega_m = float(omega_m)
        self.hubble_distance_mpc = C_KM_S / self.h0

    @classmethod
    def from_config(cls, cfg: CosmologyConfig) -> FlatLCDM:
        """The model a CosmologyConfig describes."""
        return cls(cfg.h0, cfg.omega_m)

    def e(self, z: np.ndarray | float) -> np.ndarray:
        """E(z) = H(z) / H0 = sqrt(Om (1+z)^3 + 1 - Om), dimensionless, shape of z."""
        z = _check_z(z)
        return np.sqrt(self.omega_m * (1.0 + z) ** 3 + (1.0 - self.omega_m))

    def comoving_distance_mpc(self, z: np.ndarray | float) -> np.ndarray:
        """Line-of-sight comoving distance D_C(z), Mpc, shape of z."""
        z = _check_z(z)
        zmax = float(np.max(z)) if z.size else 0.0
        grid, table = _table(self.omega_m, max(_Z_TABLE_MIN, 1.5 * zmax))
        return self.hubble_distance_mpc * np.interp(z, grid, table)

    def angular_diameter_distance_mpc(self, z: np.ndarray | float) -> np.ndarray:
        """D_A(z) = D_C / (1+z), Mpc: a length L at z subtends L / D_A radians."""
        z = _check_z(z)
        return self.comoving_distance_mpc(z) / (1.0 + z)

    def luminosity_distance_mpc(self, z: np.ndarray | float) -> np.ndarray:
        """D_L(z) = D_C (1+z), Mpc: a bolometric flux is L / (4 pi D_L^2)."""
        z = _check_z(z)
        return self.comoving_distance_mpc(z) * (1.0 + z)

    def critical_density_msun_mpc3(self, z: np.ndarray | float) -> np.ndarray:
        """rho_crit(z) = 3 H(z)^2 / (8 pi G), Msun / Mpc^3, shape of z."""
        h0_s = self.h0 / (MPC_CM / 1e5)  # km/s/Mpc -> 1/s
        rho0_cgs = 3.0 * h0_s**2 / (8.0 * np.pi * G_CGS)  # g / cm^3
        rho0 = rho0_cgs * MPC_CM**3 / MSUN_G
        return rho0 * self.e(z) ** 2

    def r500_mpc(self, m500_msun: np.ndarray, z: np.ndarray) -> np.ndarray:
        """R500 from M500 = (4/3) pi 500 rho_crit(z) R500^3, Mpc."""
        rho = self.critical_density_msun_mpc3(z)
        return (3.0 * np.asarray(m500_msun, dtype=np.float64) / (4.0 * np.pi * 500.0 * rho)) ** (
            1.0 / 3.0
        )


def _check_z(z: np.ndarray | float) -> np.ndarray:
    arr = np.asarray(z, dtype=np.float64)
    if arr.size and not (np.all(np.isfinite(arr)) and float(np.min(arr)) >= 0.0):
        raise ValueError(f"redshift must be finite and >= 0, got min {np.nanmin(arr)}")
    if arr.size and float(np.max(arr)) > Z_MAX:
        raise ValueError(f"redshift must be <= {Z_MAX:g}, got max {np.max(arr):g}")
    return arr


@lru_cache(maxsize=8)
def _table_cached(omega_m: float, zmax: float) -> tuple[np.ndarray, np.ndarray]:
    grid = np.linspace(0.0, zmax, int(np.ceil(zmax / _Z_STEP)) + 1)
    inv_e = 1.0 / np.sqrt(omega_m * (1.0 + grid) ** 3 + (1.0 - omega_m))
    table = cumulative_simpson(inv_e, x=grid, initial=0.0)
    grid.setflags(write=False)
    table.setflags(write=False)
    return grid, table


def _table(omega_m: float, zmax: float) -> tuple[np.ndarray, np.ndarray]:
    # Round the reach up to a power of two so that nearby zmax values share one table.
    reach = float(2.0 ** np.ceil(np.log2(zmax)))
    return _table_cached(omega_m, reach)
