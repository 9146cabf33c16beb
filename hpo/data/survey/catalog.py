"""A cluster catalogue (FITS table) for `hpo cutouts`: positions, redshifts, IDs, its own masses.

    hpo cutouts EVENTS.fits --catalog erass1cl_primary_v3.2.fits --z-column BEST_Z --id-column NAME

Columns are named by the caller (case-insensitive); a mass is converted with the unit its column
declares (TUNIT) or the one given, never guessed, and is kept only as `reference/log_mass`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import Table

from hpo.data.contract import describe_repeated
from hpo.data.contract import repeated
from hpo.errors import DataContractError
from hpo.errors import first_line

MASS_UNITS = {"Msun": 1.0, "1e13Msun": 1e13, "1e14Msun": 1e14, "log10Msun": None}
"""--mass-unit choices: the factor to Msun, or None for a column of log10(M/Msun)."""
MASS_LIKE = ("M500", "M500C", "M500_MSUN")  # columns worth a hint when no mass column is named


@dataclass(frozen=True)
class CatalogColumns:
    """Which catalogue columns hold what (matched case-insensitively).

    Attributes:
        ra, dec: position, deg (or any angle unit the column declares).
        redshift: the redshift column; empty, NaN or <= 0 values mean "no redshift".
        id: the ID column kept as `cluster_id` (integers or strings).
        mass: an M500 column kept as `reference/log_mass`, or None.
        mass_unit: one of MASS_UNITS when the mass column declares no unit (or to confirm it).
        exposure: an exposure column (s), used when no exposure map is given, or None.
    """

    ra: str = "RA"
    dec: str = "DEC"
    redshift: str = "Z"
    id: str = "ID"
    mass: str | None = None
    mass_unit: str | None = None
    exposure: str | None = None


@dataclass
class Catalog:
    """The rows of a catalogue, as (n,) arrays.

    Attributes:
        ids: int64 or object (str) IDs; ra, dec: float64 deg; redshift: float64, NaN when absent;
        log_mass: float64 log10(M500/Msun) (NaN when absent) or None; exposure_s: float64 s or
        None; notes: what was read how (units), for the provenance.
    """

    path: Path
    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    redshift: np.ndarray
    log_mass: np.ndarray | None
    exposure_s: np.ndarray | None
    notes: list[str]

    def __len__(self) -> int:
        return int(self.ra.size)


def read_catalog(path: str | Path, cols: CatalogColumns) -> Catalog:
    """Reads the first table of a FITS catalogue.

    Raises:
        DataContractError: unreadable, no table, a named column missing (listing those there
            are and the option that names it), coordinates out of range, a mass without a unit
            or with masses implausible in the unit given; one line naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise DataContractError(f"catalogue not found: {path}")
    try:
        table = Table.read(path, format="fits")
    except (OSError, ValueError, TypeError) as exc:
        raise DataContractError(
            f"{path}: not a readable FITS table ({first_line(exc)}); the catalogue is a FITS "
            f"binary table with RA, DEC and a redshift column") from None
    if len(table) == 0:
        raise DataContractError(f"{path}: the catalogue has no rows")
    notes: list[str] = []
    ra = _angle(table, _column(table, path, cols.ra, "RA", "--ra-column"), path, notes)
    dec = _angle(table, _column(table, path, cols.dec, "DEC", "--dec-column"), path, notes)
    if np.any(~np.isfinite(ra)) or np.any(~np.isfinite(dec)) or np.any(np.abs(dec) > 90):
        raise DataContractError(f"{path}: columns {cols.ra}/{cols.dec} hold positions that are "
                                f"not finite or have |DEC| > 90 deg")
    z_name = _column(table, path, cols.redshift, "redshift", "--z-column")
    redshift = _floats(table[z_name])
    redshift[~(redshift > 0)] = np.nan
    ids = _ids(table[_column(table, path, cols.id, "ID", "--id-column")], path)
    log_mass = None
    if cols.mass is not None:
        log_mass = _log_mass(table, _column(table, path, cols.mass, "mass", "--mass-column"),
                             cols.mass_unit, path, notes)
    else:
        hint = [c for c in table.colnames if c.upper() in MASS_LIKE]
        if hint:
            notes.append(f"column {hint[0]} not kept (--mass-column {hint[0]} keeps it as "
                         f"reference/log_mass)")
    exposure = None
    if cols.exposure is not None:
        exposure = _seconds(table, _column(table, path, cols.exposure, "exposure",
                                           "--exposure-column"), path)
    return Catalog(path, ids, (ra % 360.0), dec, redshift, log_mass, exposure, notes)


def _column(table: Table, path: Path, name: str, what: str, option: str) -> str:
    if name in table.colnames:
        return name
    found = [c for c in table.colnames if c.upper() == name.upper()]
    if len(found) == 1:
        return found[0]
    shown = ", ".join(table.colnames[:40]) + (", ..." if len(table.colnames) > 40 else "")
    raise DataContractError(
        f"{path}: no {what} column '{name}' (columns: {shown}); name it with {option}")


def _floats(column) -> np.ndarray:
    """A column as float64, masked or empty entries as NaN."""
    if hasattr(column, "mask") and np.any(column.mask):
        return np.ma.filled(column.astype(np.float64), np.nan)
    return np.asarray(column, dtype=np.float64).copy()


def _angle(table: Table, name: str, path: Path, notes: list[str]) -> np.ndarray:
    unit = table[name].unit
    values = _floats(table[name])
    if unit is None or unit == u.deg:
        return values
    try:
        values = (values * unit).to_value(u.deg)
    except (u.UnitsError, TypeError, ValueError):
        raise DataContractError(f"{path}: column {name} has unit '{unit}', which is not an "
                                f"angle") from None
    notes.append(f"{name} converted from {unit} to deg")
    return values


def _ids(column, path: Path) -> np.ndarray:
    values = np.asarray(column)
    if np.issubdtype(values.dtype, np.integer):
        ids = values.astype(np.int64)
    elif values.dtype.kind in "SU":
        ids = np.array([(v.decode() if isinstance(v, bytes) else str(v)).strip()
                        for v in values.tolist()], dtype=object)
    else:
        raise DataContractError(
            f"{path}: ID column {column.name} holds {values.dtype} values; IDs are integers or "
            f"strings")
    _unique(ids, column.name, path)
    return ids


def _unique(ids: np.ndarray, name: str, path: Path) -> None:
    """Raises DataContractError naming the IDs given to more than one row: a cut-out, a mass and
    a skipped line must each say which cluster they are."""
    twice = repeated(ids)
    if twice:
        raise DataContractError(f"{path}: ID column {name} gives {describe_repeated(twice)}; IDs "
                                "must be unique (name another column with --id-column)")


def _log_mass(table: Table, name: str, given: str | None, path: Path,
              notes: list[str]) -> np.ndarray:
    values = _floats(table[name])
    declared = table[name].unit
    factor: float | None
    if given is not None and given not in MASS_UNITS:
        raise DataContractError(
            f"--mass-unit must be one of {', '.join(MASS_UNITS)}, got '{given}'")
    if isinstance(declared, u.DexUnit) and declared.physical_unit == u.Msun:
        factor = None
        if given is not None and MASS_UNITS[given] is not None:
            raise DataContractError(
                f"{path}: column {name} is declared log10(Msun) (TUNIT '{declared}'), but "
                f"--mass-unit says {given}")
    elif declared is not None and declared.is_equivalent(u.Msun):
        factor = float((1.0 * declared).to_value(u.Msun))
        if given is not None and MASS_UNITS[given] != factor:
            raise DataContractError(
                f"{path}: column {name} is declared in '{declared}' (TUNIT), but --mass-unit says "
                f"{given}")
    elif given is None:
        said = "declares no unit" if declared is None else f"has unit '{declared}', not a mass"
        raise DataContractError(
            f"{path}: mass column {name} {said}; say which with --mass-unit "
            f"{'|'.join(MASS_UNITS)}")
    else:
        factor = MASS_UNITS[given]
    if factor is None:
        log_mass = np.where(np.isfinite(values), values, np.nan)
        notes.append(f"{name} read as log10(M/Msun)")
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_mass = np.where(values > 0, np.log10(values * factor), np.nan)
        notes.append(f"{name} read in units of {factor:g} Msun")
    finite = log_mass[np.isfinite(log_mass)]
    if finite.size and not 11.0 <= np.median(finite) <= 16.5:
        raise DataContractError(
            f"{path}: column {name} read as {notes[-1].split(' read ')[1]} gives a median "
            f"log10(M500/Msun) of {np.median(finite):.2f}, outside 11-16.5 for clusters; check "
            f"its unit (--mass-unit)")
    return log_mass


def _seconds(table: Table, name: str, path: Path) -> np.ndarray:
    values = _floats(table[name])
    unit = table[name].unit
    if unit is None:
        return values  # exposure columns without a unit are seconds (eSASS, eRASS1 catalogues)
    if not unit.is_equivalent(u.s):
        raise DataContractError(f"{path}: exposure column {name} has unit '{unit}', not a time")
    return (values * unit).to_value(u.s)
