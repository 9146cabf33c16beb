"""eROSITA event files (eSASS format): reading them, the survey's standard cuts, the cut-out WCS.

    hpo cutouts tiles/em01_*_020_EventList_c010.fits --catalog cat.fits -o clusters.h5

An eSASS event file (eROSITA DR1: one per 3.6 x 3.6 degree sky tile, `em01_RRRDDD_020_EventList_
c010.fits`) holds a binary table EVENTS (TIME s, RA and DEC deg, PI eV, PAT_TYP, FLAG, TM_NR, ...)
and good-time intervals per telescope module (GTI1..GTI7, or one GTI). The standard cuts below are
those of `evtool flag=0xc00fff30 pattern=15` with GTI filtering, as eRASS1 analyses run it; each
carries its source in EventCuts.describe().
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy import log as astropy_log
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from hpo.data.contract import reading
from hpo.errors import DataContractError

EVENT_COLUMNS = ("TIME", "RA", "DEC", "PI", "PAT_TYP", "FLAG", "TM_NR")
TELESCOPE_MODULES = (1, 2, 3, 4, 5, 6, 7)

# FLAG bits of eSASS event files (eROSITA EDR "Event files" product description, also listed in
# DAXA's daxa/process/erosita/_common.py). 0xc00fff30 rejects the bits named here; the bits it
# keeps are ownership (0x1 MPE, 0x2 IKI) and PHA quality (0x1000000-0x4000000).
FLAG_BITS = {
    0x10: "trailing event",
    0x20: "next to CCD border",
    0x100: "next to on-board bad pixel",
    0x200: "next to bright pixel",
    0x400: "next to dead pixel",
    0x800: "next to flickering pixel",
    0x1000: "on flickering pixel",
    0x2000: "on bad pixel",
    0x4000: "on dead pixel",
    0x8000: "out of field of view",
    0x10000: "outside quality GTI",
    0x20000: "outside GTI",
    0x40000: "preceding a MIP",
    0x80000: "MIP associated",
    0x40000000: "corrupt event",
    0x80000000: "corrupt frame",
}
STANDARD_FLAG_MASK = 0xC00FFF30  # == the sum of FLAG_BITS


@dataclass(frozen=True)
class EventCuts:
    """The event selection, eSASS `evtool` semantics.

    Attributes:
        flag_mask: drop an event if FLAG & flag_mask != 0 (evtool `flag=0xc00fff30`).
        patterns: bit mask over PAT_TYP 1 single, 2 double, 3 triple, 4 quadruple (evtool
            `pattern=15`: all four valid patterns); any other PAT_TYP is dropped.
        pi_min_ev, pi_max_ev: keep pi_min_ev <= PI < pi_max_ev, eV: the contract's channel range
            (eSASS calibrates 200-10000 eV; 8-10 keV has no channel of the contract).
        light_leak_tms, light_leak_min_ev: drop events of these modules below this energy (TM5
            and TM7 have no on-chip optical filter; eRASS1 soft-band analyses use them only above
            0.8 keV because of their light leak).
        gti: keep only events inside their module's good-time intervals.
    """

    flag_mask: int = STANDARD_FLAG_MASK
    patterns: int = 15
    pi_min_ev: float = 200.0
    pi_max_ev: float = 8000.0
    light_leak_tms: tuple[int, ...] = (5, 7)
    light_leak_min_ev: float = 800.0
    gti: bool = True

    def describe(self) -> dict:
        """The cuts with their sources, for the provenance of a cut-out file."""
        return {
            **asdict(self),
            "flag_mask": hex(self.flag_mask),
            "sources": {
                "flag_mask": "eSASS evtool flag=0xc00fff30, the eRASS1 standard (bits: eROSITA "
                "EDR event-file description)",
                "patterns": "eSASS evtool pattern=15: singles, doubles, triples, quadruples",
                "pi_range": "the contract's channel edges, inside eSASS's calibrated 0.2-10 keV",
                "light_leak": "TM5/TM7 optical light leak: eRASS1 soft-band analyses use these "
                "modules above 0.8 keV only",
                "gti": "each module's GTI extension (evtool gti=GTI)",
            },
        }


@dataclass
class EventList:
    """The columns of one event file that cut-outs need, and its good-time intervals.

    Attributes:
        path: the file.
        time: (n,) float64 s; ra, dec: (n,) float64 deg; pi: (n,) float64 eV; pat_typ, tm_nr:
            (n,) int64; flag: (n,) uint32 (wider types are cut to 32 bits).
        gti: module number (or 0 for all modules) -> (k, 2) float64 [START, STOP) intervals, s.
    """

    path: Path
    time: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    pi: np.ndarray
    pat_typ: np.ndarray
    flag: np.ndarray
    tm_nr: np.ndarray
    gti: dict[int, np.ndarray]

    def __len__(self) -> int:
        return int(self.time.size)

    def take(self, keep: np.ndarray) -> EventList:
        """The events at `keep` (a mask or indices)."""
        cols = {k: getattr(self, k)[keep] for k in ("time", "ra", "dec", "pi", "pat_typ", "flag",
                                                   "tm_nr")}
        return EventList(self.path, gti=self.gti, **cols)


def read_events(path: str | Path) -> EventList:
    """Reads and checks one eSASS event file.

    Raises:
        DataContractError: unreadable (any error of astropy's on its bytes or header: cut short,
            overwritten, a bad keyword), no EVENTS table or no event in it, a missing column or
            one that holds no number per event, PI not in eV (keV is detected from the column's
            unit or its values), no GTI extension, coordinates out of range; one line naming the
            file.
    """
    path = Path(path)
    if not path.exists():
        raise DataContractError(f"event file not found: {path}")
    with _astropy_held() as said, reading(path, "FITS file", said):
        with fits.open(path, memmap=False) as hdul:
            events = _read_events(hdul, path)
    bad = ~(np.isfinite(events.ra) & np.isfinite(events.dec) & (np.abs(events.dec) <= 90))
    if bad.any():
        raise DataContractError(
            f"{path}: EVENTS has {int(bad.sum())} events with RA/DEC that are not finite degrees "
            f"(DEC within +-90)")
    return events


@contextmanager
def _astropy_held() -> Iterator[list[str]]:
    """What astropy warns and logs meanwhile ("File may have been truncated", a header it
    repairs), held in a list instead of printed: an error then says it in its one line."""
    said: list[str] = []

    def hold(record: logging.LogRecord) -> bool:
        said.append(" ".join(record.getMessage().split()))
        return False

    def show(message: Warning | str, *args: object, **kwargs: object) -> None:
        said.append(" ".join(str(message).split()))

    astropy_log.addFilter(hold)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", AstropyWarning)
            warnings.showwarning = show  # restored by catch_warnings
            yield said
    finally:
        astropy_log.removeFilter(hold)


def _read_events(hdul: fits.HDUList, path: Path) -> EventList:
    """The EventList of an open event file (read_events checks its coordinates)."""
    names = [h.name for h in hdul]
    if "EVENTS" in names and not isinstance(hdul["EVENTS"], fits.BinTableHDU):
        raise DataContractError(
            f"{path}: EVENTS is {type(hdul['EVENTS']).__name__}, not a binary table of events")
    if "EVENTS" not in names:
        raise DataContractError(
            f"{path}: no EVENTS extension (HDUs: {', '.join(names)}); an eSASS event file "
            f"holds its events in a binary table named EVENTS{_looks_like_map(hdul, path)}")
    table = hdul["EVENTS"]
    have = [c.upper() for c in table.columns.names]
    lacking = [c for c in EVENT_COLUMNS if c not in have]
    if lacking:
        raise DataContractError(
            f"{path}: EVENTS lacks column(s) {', '.join(lacking)} (has: {', '.join(have)}); "
            f"hpo cutouts needs {', '.join(EVENT_COLUMNS)}")
    if table.data is None or len(table.data) == 0:
        raise DataContractError(f"{path}: EVENTS holds no events")
    pi = _column(table, "PI", path)
    _check_pi_unit(path, table.columns["PI"].unit, pi)
    return EventList(
        path=path,
        time=_column(table, "TIME", path),
        ra=_column(table, "RA", path),
        dec=_column(table, "DEC", path),
        pi=pi,
        pat_typ=_column(table, "PAT_TYP", path, whole=True),
        flag=(_column(table, "FLAG", path, whole=True) & 0xFFFFFFFF).astype(np.uint32),
        tm_nr=_column(table, "TM_NR", path, whole=True),
        gti=_read_gtis(hdul, path),
    )


def _column(table: fits.BinTableHDU, name: str, path: Path, *, whole: bool = False) -> np.ndarray:
    """Column `name` of a table as float64, or with `whole` as int64 (PAT_TYP, FLAG and TM_NR
    are integers in eSASS; floats are taken when whole), refused unless it holds one number per
    row."""
    values = np.asarray(table.data[name])
    if values.ndim != 1 or values.dtype.kind not in "iuf":
        raise DataContractError(
            f"{path}: {table.name} column {name} must hold one number per row, got format "
            f"{table.columns[name].format} ({values.dtype}, shape {values.shape})")
    if not whole:
        return values.astype(np.float64)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)  # a uint64 above 2**63 wraps: FLAG keeps its low 32 bits
    bad = np.flatnonzero(~np.isfinite(values) | (np.abs(values) >= 2**63)
                         | (values != np.round(values)))
    if bad.size:
        raise DataContractError(
            f"{path}: {table.name} column {name} must hold whole numbers, found "
            f"{values[bad[0]]!r} in row {bad[0] + 1}")
    return values.astype(np.int64)


def _looks_like_map(hdul: fits.HDUList, path: Path) -> str:
    for hdu in hdul:
        if getattr(hdu, "is_image", False) and hdu.data is not None and hdu.data.ndim == 2:
            if WCS(hdu.header).has_celestial:
                return f"; it looks like an exposure map: pass it as --exposure {path}"
    return ""


def _check_pi_unit(path: Path, unit: str | None, pi: np.ndarray) -> None:
    unit = (unit or "").strip()
    if unit and unit.lower() != "ev":
        said = "keV" if unit.lower() == "kev" else f"'{unit}'"
        raise DataContractError(
            f"{path}: EVENTS column PI is in {said}, but eSASS PI is in eV (200-10000 for "
            f"0.2-10 keV); convert it (PI x 1000 for keV) or use the eSASS event file")
    finite = pi[np.isfinite(pi)]
    if finite.size and np.percentile(finite, 99) < 50.0:
        raise DataContractError(
            f"{path}: EVENTS column PI looks like keV (99% of values below "
            f"{np.percentile(finite, 99):.3g}), but eSASS PI is in eV (200-10000 for 0.2-10 keV); "
            f"multiply by 1000 or use the eSASS event file")


def _read_gtis(hdul: fits.HDUList, path: Path) -> dict[int, np.ndarray]:
    """GTI<n> per module, or one GTI (or STDGTI) for all modules, keyed 0."""
    gtis: dict[int, np.ndarray] = {}
    for hdu in hdul:
        name = hdu.name.upper()
        tm = None
        if name in ("GTI", "STDGTI"):
            tm = 0
        elif name.startswith("GTI") and name[3:].isdigit():
            tm = int(name[3:])
        if tm is None or not isinstance(hdu, fits.BinTableHDU):
            continue
        cols = [c.upper() for c in hdu.columns.names]
        if "START" not in cols or "STOP" not in cols:
            raise DataContractError(f"{path}: extension {name} lacks START/STOP (has: "
                                    f"{', '.join(cols)})")
        if hdu.data is None or len(hdu.data) == 0:  # no interval: that module has no good time
            gtis.setdefault(tm, np.zeros((0, 2)))
            continue
        gtis.setdefault(tm, np.column_stack([_column(hdu, "START", path),
                                             _column(hdu, "STOP", path)]))
    if not gtis:
        raise DataContractError(
            f"{path}: no GTI extension (GTI1..GTI7 or GTI); an eSASS event file carries its good "
            f"time intervals, and hpo cutouts keeps only events inside them")
    return gtis


def apply_cuts(events: EventList, cuts: EventCuts) -> tuple[EventList, dict[str, int]]:
    """The events that pass `cuts`, and how many each cut removed (each event counted once, under
    the first cut it fails: gti, flag, pattern, energy, light_leak)."""
    n = len(events)
    fail: dict[str, np.ndarray] = {}
    if cuts.gti:
        fail["gti"] = ~_inside_gti(events)
    fail["flag"] = (events.flag.astype(np.int64) & cuts.flag_mask) != 0
    valid = (events.pat_typ >= 1) & (events.pat_typ <= 4)
    bit = np.left_shift(1, np.clip(events.pat_typ - 1, 0, 3))
    fail["pattern"] = ~(valid & ((cuts.patterns & bit) != 0))
    fail["energy"] = ~((events.pi >= cuts.pi_min_ev) & (events.pi < cuts.pi_max_ev))
    fail["light_leak"] = np.isin(events.tm_nr, cuts.light_leak_tms) & (
        events.pi < cuts.light_leak_min_ev)
    removed: dict[str, int] = {}
    dropped = np.zeros(n, dtype=bool)
    for name, mask in fail.items():
        removed[name] = int(np.count_nonzero(mask & ~dropped))
        dropped |= mask
    return events.take(~dropped), removed


def _inside_gti(events: EventList) -> np.ndarray:
    inside = np.zeros(len(events), dtype=bool)
    for tm in np.unique(events.tm_nr):
        sel = events.tm_nr == tm
        gti = events.gti.get(int(tm), events.gti.get(0))
        if gti is None or not len(gti):
            continue  # a module without intervals has no good time
        order = np.argsort(gti[:, 0])
        start, stop = gti[order, 0], gti[order, 1]
        k = np.searchsorted(start, events.time[sel], side="right") - 1
        ok = k >= 0
        hit = np.zeros(k.size, dtype=bool)
        hit[ok] = events.time[sel][ok] < stop[k[ok]]
        inside[sel] = hit
    return inside


def merge_events(lists: list[EventList]) -> tuple[EventList, int]:
    """One list of the events of several files, each photon once.

    Neighbouring DR1 sky tiles overlap, and a photon in the overlap is in both files with the
    same TIME, TM_NR, RA, DEC and PI: those repeats are dropped.

    Returns:
        The merged events (GTIs no longer apply: cut first) and how many repeats were dropped.
    """
    cols = {k: np.concatenate([getattr(e, k) for e in lists])
            for k in ("time", "ra", "dec", "pi", "pat_typ", "flag", "tm_nr")}
    merged = EventList(Path("merged"), gti={}, **cols)
    if len(lists) < 2:
        return merged, 0
    order = np.lexsort((cols["ra"], cols["time"]))  # a photon's copies become neighbours
    same = np.ones(order.size - 1, dtype=bool)
    for key in ("time", "ra", "dec", "tm_nr", "pi"):
        same &= cols[key][order[1:]] == cols[key][order[:-1]]
    keep = np.sort(np.concatenate([order[:1], order[1:][~same]]))
    return merged.take(keep), int(same.sum())


def cutout_wcs(ra: float, dec: float, size: int, pixel_arcsec: float) -> WCS:
    """The TAN projection of a size x size cut-out centred on (ra, dec), north up, east left.

    Pixel (0, 0) is the south-east corner; rows grow north (Dec), columns grow west; the centre
    lies between the four middle pixels, as in the simulator's images. ICRS (eSASS writes FK5
    J2000, the same to well below a pixel).
    """
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(ra), float(dec)]
    w.wcs.crpix = [size / 2.0 + 0.5, size / 2.0 + 0.5]
    w.wcs.cdelt = [-pixel_arcsec / 3600.0, pixel_arcsec / 3600.0]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w
