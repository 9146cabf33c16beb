"""`hpo cutouts`: eROSITA event files and a cluster catalogue to a file of the data contract.

    hpo cutouts tiles/*_EventList_c010.fits --catalog cat.fits \
        --exposure 'tiles/*_024_ExposureMap_c010.fits' -o clusters.h5

Each file's events pass the standard cuts (hpo.data.survey.esass), photons repeated by overlapping
tiles are kept once, and every catalogue cluster gets an image in the contract's channels and
pixel scale, binned on a TAN projection centred on its position. A cluster outside every tile,
too near a tile's edge, without exposure or without a redshift is skipped and reported with its
ID (on stdout and in OUT.skipped.csv), never silently.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
from astropy.coordinates import CartesianRepresentation
from astropy.coordinates import UnitSphericalRepresentation
from astropy.io import fits
from astropy.wcs import WCS
from scipy.spatial import ConvexHull
from scipy.spatial import Delaunay
from scipy.spatial import QhullError
from scipy.spatial import cKDTree

from hpo import __version__
from hpo.data.sim.config import SimConfig
from hpo.data.survey.catalog import Catalog
from hpo.data.survey.catalog import CatalogColumns
from hpo.data.survey.catalog import read_catalog
from hpo.data.survey.esass import apply_cuts
from hpo.data.survey.esass import cutout_wcs
from hpo.data.survey.esass import EventCuts
from hpo.data.survey.esass import EventList
from hpo.data.survey.esass import merge_events
from hpo.data.survey.esass import read_events
from hpo.errors import DataContractError
from hpo.errors import first_line

GENERATOR = f"hpo cutouts {__version__}"
OUTSIDE, EDGE, NO_EXPOSURE, NO_REDSHIFT = (
    "outside every given tile", "too near a tile edge", "no exposure", "no redshift")
_WRITE_ROWS = 256  # cut-outs buffered per HDF5 write


@dataclass
class CutoutReport:
    """What `make_cutouts` wrote and skipped.

    Attributes:
        path: the HDF5 file; skipped_csv: the list of skipped clusters (ID, RA, DEC, reason).
        n_written: clusters in the file; skipped: (ID, reason) per skipped cluster.
        removed: events removed per cut, plus 'repeated' (photons in two overlapping tiles).
        exposure_source: where exposure_s came from, or why there is none.
        notes: how catalogue columns were read.
    """

    path: Path
    skipped_csv: Path
    n_written: int
    skipped: list[tuple[object, str]] = field(default_factory=list)
    removed: dict[str, int] = field(default_factory=dict)
    exposure_source: str = ""
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# where the tiles are


class Footprint:
    """The sky an event file covers: the convex hull of its events on a tangent plane at their
    centre (a DR1 tile is a convex 3.6 x 3.6 degree patch)."""

    def __init__(self, events: EventList):
        mean = CartesianRepresentation(*_unit(events.ra, events.dec).mean(axis=0))
        sph = mean.represent_as(UnitSphericalRepresentation)
        ra0, dec0 = float(sph.lon.deg), float(sph.lat.deg)
        self.centre = _unit(np.array([ra0]), np.array([dec0]))[0]
        self.wcs = cutout_wcs(ra0, dec0, 2, 3600.0)  # a plane in degrees
        pts = np.column_stack(self.wcs.world_to_pixel_values(events.ra, events.dec))
        try:
            hull = ConvexHull(pts[np.isfinite(pts).all(axis=1)])
        except (QhullError, ValueError):
            raise DataContractError(
                f"{events.path}: its {len(events)} events cover no area of sky") from None
        self.tri = Delaunay(hull.points[hull.vertices])
        corners = _unit(*self.wcs.pixel_to_world_values(*hull.points[hull.vertices].T))
        self.radius_deg = float(np.degrees(np.arccos(np.clip(corners @ self.centre, -1, 1))).max())

    def contains(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        near = _unit(ra, dec) @ self.centre > 0.5  # within 60 deg, where the plane is sound
        out = np.zeros(np.shape(ra), dtype=bool)
        if near.any():
            pts = np.column_stack(self.wcs.world_to_pixel_values(ra[near], dec[near]))
            out[near] = self.tri.find_simplex(pts) >= 0
        return out


class ExposureMap:
    """An exposure map: a FITS image (s) with a celestial WCS, sampled at the nearest pixel."""

    def __init__(self, path: Path):
        self.path = path
        if not path.exists():
            raise DataContractError(f"exposure map not found: {path}")
        try:
            with fits.open(path, memmap=False) as hdul:
                hdu = next((h for h in hdul if getattr(h, "is_image", False)
                            and h.data is not None and np.squeeze(h.data).ndim == 2), None)
                if hdu is None:
                    raise DataContractError(
                        f"{path}: no 2-D image; an exposure map is a FITS image with a WCS")
                self.wcs = WCS(hdu.header).celestial
                self.data = np.asarray(np.squeeze(hdu.data), dtype=np.float64)
        except (OSError, ValueError) as exc:
            raise DataContractError(
                f"{path}: not a readable FITS image ({first_line(exc)})") from None
        if not self.wcs.has_celestial:
            raise DataContractError(f"{path}: its image has no celestial WCS (CTYPE RA---/DEC--)")

    def sample(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Exposure at each position, s; NaN off the map."""
        x, y = self.wcs.world_to_pixel_values(ra, dec)
        ix, iy = np.floor(np.asarray(x) + 0.5), np.floor(np.asarray(y) + 0.5)
        h, w = self.data.shape
        ok = np.isfinite(ix) & np.isfinite(iy) & (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        out = np.full(np.shape(ra), np.nan)
        out[ok] = self.data[iy[ok].astype(int), ix[ok].astype(int)]
        return out


def expand_paths(values: list[Path], what: str) -> list[Path]:
    """Paths as given; a value that is not a file but a quoted glob ('tiles/*_ExposureMap*') is
    expanded here, sorted (one --exposure then takes them all)."""
    out: list[Path] = []
    for value in values:
        text = str(value)
        if not value.exists() and any(ch in text for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(text))
            if not found:
                raise DataContractError(f"{what} pattern '{text}' matches no file")
            out.extend(found)
        else:
            out.append(value)
    return out


# ---------------------------------------------------------------------------------------------
# the cut-outs


def make_cutouts(
    event_paths: list[Path],
    catalog_path: Path,
    out: Path,
    *,
    exposure_paths: list[Path] | None = None,
    columns: CatalogColumns | None = None,
    cuts: EventCuts | None = None,
    cfg: SimConfig | None = None,
) -> CutoutReport:
    """Cuts every catalogue cluster out of the event files and writes the contract's HDF5.

    Args:
        event_paths: eSASS event files (events may span several; overlapping tiles are fine).
        catalog_path: FITS cluster catalogue.
        out: HDF5 file to write; its skipped clusters go to OUT.skipped.csv beside it.
        exposure_paths: exposure maps (s) covering the tiles; exposure_s is the mean of their
            values over each cut-out's pixels. None: from `columns.exposure`, or no exposure_s.
        columns: which catalogue columns hold what.
        cuts: the event selection; None for the survey's standard cuts.
        cfg: image size, pixel scale and channel edges (the simulator's, which the models
            expect); None for defaults.

    Returns:
        A CutoutReport.

    Raises:
        DataContractError: bad survey input (see read_events, read_catalog, ExposureMap), or no
            catalogue position inside the given tiles.
    """
    columns, cuts, cfg = columns or CatalogColumns(), cuts or EventCuts(), cfg or SimConfig()
    exposure_paths = exposure_paths or []
    if exposure_paths and columns.exposure:
        raise DataContractError("give exposure maps (--exposure) or a catalogue exposure column "
                                "(--exposure-column), not both")
    if not event_paths:
        raise DataContractError("hpo cutouts needs at least one event file")
    size, pix = cfg.instrument.image_size, cfg.instrument.pixel_arcsec
    edges_ev = 1000.0 * np.asarray(cfg.spectrum.channel_edges_kev)
    cuts = replace(cuts, pi_min_ev=float(edges_ev[0]), pi_max_ev=float(edges_ev[-1]))
    cat = read_catalog(catalog_path, columns)

    # ---- events: read, footprints, cuts, one copy of each photon
    lists = [read_events(p) for p in event_paths]
    footprints = [Footprint(e) for e in lists]
    removed: dict[str, int] = {}
    kept = []
    for events in lists:
        passed, counts = apply_cuts(events, cuts)
        kept.append(passed)
        for k, v in counts.items():
            removed[k] = removed.get(k, 0) + v
    events, removed["repeated"] = merge_events(kept)
    maps = [ExposureMap(p) for p in exposure_paths]

    # ---- which clusters can be cut out
    centre_in = np.zeros(len(cat), dtype=bool)
    for fp in footprints:
        centre_in |= fp.contains(cat.ra, cat.dec)
    if not centre_in.any():
        ra_lo, ra_hi = np.percentile(np.concatenate([e.ra for e in lists]), [0, 100])
        de_lo, de_hi = np.percentile(np.concatenate([e.dec for e in lists]), [0, 100])
        raise DataContractError(
            f"{catalog_path}: none of its {len(cat)} positions lies inside the given tiles "
            f"(their events span RA {ra_lo:.2f}..{ra_hi:.2f}, DEC {de_lo:.2f}..{de_hi:.2f} deg)")
    half_diag = size * pix / np.sqrt(2.0) / 3600.0
    tree = cKDTree(_unit(events.ra, events.dec))
    chord = 2.0 * np.sin(np.radians(1.01 * half_diag) / 2.0)
    cat_vec = _unit(cat.ra, cat.dec)
    # the tiles each cut-out may touch: centre within a tile's radius plus the cut-out's
    near_tile = cat_vec @ np.array([fp.centre for fp in footprints]).T > np.cos(
        np.radians(np.array([fp.radius_deg for fp in footprints]) + half_diag))
    gx, gy = np.meshgrid(np.arange(size, dtype=float), np.arange(size, dtype=float))
    nchan = edges_ev.size - 1

    tmp = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    skipped: list[tuple[int, str]] = []
    rows: list[int] = []
    exposures: list[float] = []
    with h5py.File(tmp, "w") as f:
        images = f.create_dataset("images", shape=(0, size, size, nchan), dtype=np.uint16,
                                  maxshape=(None, size, size, nchan),
                                  chunks=(64, size, size, nchan), compression="gzip",
                                  compression_opts=4, shuffle=True)
        buffer: list[np.ndarray] = []
        for i in range(len(cat)):
            if not centre_in[i]:
                skipped.append((i, OUTSIDE))
                continue
            w = cutout_wcs(cat.ra[i], cat.dec[i], size, pix)
            pra, pdec = w.pixel_to_world_values(gx.ravel(), gy.ravel())
            covered = np.zeros(pra.size, dtype=bool)
            for fp, near in zip(footprints, near_tile[i]):
                if near:
                    covered |= fp.contains(pra, pdec)
            if not covered.all():
                skipped.append((i, EDGE))
                continue
            exposure = np.nan
            if maps:
                values = np.fmax.reduce([m.sample(pra, pdec) for m in maps])
                has = np.isfinite(values) & (values > 0)
                if not has.any():
                    skipped.append((i, NO_EXPOSURE))
                    continue
                if not has.all():
                    skipped.append((i, EDGE))
                    continue
                exposure = float(values.mean())
            elif cat.exposure_s is not None:
                exposure = float(cat.exposure_s[i])
                if not exposure > 0:
                    skipped.append((i, NO_EXPOSURE))
                    continue
            if not cat.redshift[i] > 0:
                skipped.append((i, NO_REDSHIFT))
                continue
            idx = tree.query_ball_point(cat_vec[i], chord)
            buffer.append(_bin(w, events, np.asarray(idx, dtype=np.int64), size, edges_ev))
            rows.append(i)
            exposures.append(exposure)
            if len(buffer) == _WRITE_ROWS:
                _append(images, buffer)
        _append(images, buffer)
        exposure_source = _write_vectors(f, cat, np.asarray(rows, dtype=np.int64),
                                         np.asarray(exposures), maps, columns)
        _write_attrs(f, cfg, event_paths, exposure_paths, catalog_path, columns, cuts, removed,
                     exposure_source, cat.notes, len(skipped))
    if not rows:
        tmp.unlink()
        raise DataContractError(
            f"{catalog_path}: every cluster was skipped ({_reasons(skipped, cat)}); nothing to "
            f"write")
    os.replace(tmp, out)
    skipped_csv = out.with_name(out.stem + ".skipped.csv")
    with skipped_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["cluster_id", "ra", "dec", "reason"])
        for i, reason in skipped:
            writer.writerow([cat.ids[i], f"{cat.ra[i]:.6f}", f"{cat.dec[i]:.6f}", reason])
    return CutoutReport(out, skipped_csv, len(rows), [(cat.ids[i], r) for i, r in skipped],
                        removed, exposure_source, cat.notes)


def _bin(w: WCS, events: EventList, idx: np.ndarray, size: int,
         edges_ev: np.ndarray) -> np.ndarray:
    """(size, size, C) uint16 counts of the events at idx on the cut-out's pixel grid."""
    x, y = w.world_to_pixel_values(events.ra[idx], events.dec[idx])
    ix, iy = np.floor(np.asarray(x) + 0.5), np.floor(np.asarray(y) + 0.5)
    nchan = edges_ev.size - 1
    ch = np.searchsorted(edges_ev, events.pi[idx], side="right") - 1
    ok = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size) & (ch >= 0) & (ch < nchan)
    flat = (iy[ok].astype(np.int64) * size + ix[ok].astype(np.int64)) * nchan + ch[ok]
    counts = np.bincount(flat, minlength=size * size * nchan)
    if counts.max(initial=0) > np.iinfo(np.uint16).max:
        raise DataContractError("a cut-out pixel holds more than 65535 photons in one channel")
    return counts.astype(np.uint16).reshape(size, size, nchan)


def _append(images: h5py.Dataset, buffer: list[np.ndarray]) -> None:
    if buffer:
        n = images.shape[0]
        images.resize(n + len(buffer), axis=0)
        images[n:] = np.stack(buffer)
        buffer.clear()


def _write_vectors(f: h5py.File, cat: Catalog, rows: np.ndarray, exposures: np.ndarray,
                   maps: list[ExposureMap], columns: CatalogColumns) -> str:
    f["redshift"] = cat.redshift[rows].astype(np.float32)
    ids = cat.ids[rows]
    if ids.dtype == object:
        f.create_dataset("cluster_id", data=ids.astype(str).tolist(),
                         dtype=h5py.string_dtype("utf-8"))
    else:
        f["cluster_id"] = ids
    f["ra"], f["dec"] = cat.ra[rows], cat.dec[rows]  # deg, the catalogue's positions
    if cat.log_mass is not None:
        f["reference/log_mass"] = cat.log_mass[rows].astype(np.float32)  # never a label
    if maps:
        f["exposure_s"] = exposures.astype(np.float32)
        return ("mean of the exposure maps over each cut-out's pixels: "
                + ", ".join(m.path.name for m in maps))
    if cat.exposure_s is not None:
        f["exposure_s"] = exposures.astype(np.float32)
        return f"catalogue column {columns.exposure} (s)"
    return "none: no exposure map (--exposure) or catalogue column (--exposure-column) given"


def _write_attrs(f: h5py.File, cfg: SimConfig, event_paths: list[Path],
                 exposure_paths: list[Path], catalog_path: Path, columns: CatalogColumns,
                 cuts: EventCuts, removed: dict[str, int], exposure_source: str,
                 notes: list[str], n_skipped: int) -> None:
    f.attrs["channel_edges_keV"] = np.asarray(cfg.spectrum.channel_edges_kev)
    f.attrs["pixel_arcsec"] = cfg.instrument.pixel_arcsec
    f.attrs["image_shape"] = np.asarray(f["images"].shape[1:])
    f.attrs["generator"] = GENERATOR
    f.attrs["input_events"] = json.dumps([str(p) for p in event_paths])
    f.attrs["input_exposure_maps"] = json.dumps([str(p) for p in exposure_paths])
    f.attrs["input_catalog"] = str(catalog_path)
    f.attrs["catalog_columns"] = json.dumps(columns.__dict__)
    f.attrs["catalog_notes"] = json.dumps(notes)
    f.attrs["cuts"] = json.dumps(cuts.describe())
    f.attrs["events_removed"] = json.dumps(removed)
    f.attrs["exposure_source"] = exposure_source
    f.attrs["n_skipped"] = n_skipped
    f.attrs["projection"] = "TAN centred on each catalogue position, north up, east left (ICRS)"


def _reasons(skipped: list[tuple[int, str]], cat: Catalog) -> str:
    counts: dict[str, list] = {}
    for i, reason in skipped:
        counts.setdefault(reason, []).append(cat.ids[i])
    return "; ".join(f"{len(v)} {k}" for k, v in counts.items())


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """(n, 3) unit vectors of positions in degrees (for neighbour searches)."""
    sph = UnitSphericalRepresentation(np.asarray(ra, np.float64) * u.deg,
                                      np.asarray(dec, np.float64) * u.deg)
    return sph.to_cartesian().xyz.value.T
