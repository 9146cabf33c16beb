"""`hpo cutouts`: eROSITA event files and a cluster catalogue to a file of the data contract.

    hpo cutouts tiles/*_EventList_c010.fits --catalog cat.fits \
        --exposure 'tiles/*_024_ExposureMap_c010.fits' -o clusters.h5

Each file's events pass the standard cuts (esass.py), photons repeated by overlapping tiles are
kept once, and every catalogue cluster gets an image in the contract's channels and pixel scale,
binned on a TAN projection centred on its position. A cluster outside every tile, too near a
tile's edge, without exposure or without a redshift is skipped and reported with its ID (on
stdout and in OUT.skipped.csv), never silently.

make_cutouts runs the steps in order: clean_events (read, cut, one copy of each photon),
locate_clusters (where each cut-out lies on the tiles, or why it is skipped), cut_out (each
cluster's events binned by bin_cutout), write_images and write_skipped.
"""

from __future__ import annotations

import collections
import csv
import glob
import json
from collections.abc import Iterable
from collections.abc import Iterator
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
from hpo.data.cosmology import Z_MAX
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
from hpo.outputs import atomic_outputs
from hpo.outputs import check_outputs

GENERATOR = f"hpo cutouts {__version__}"
OUTSIDE, EDGE, MAP_GAP, NO_EXPOSURE, NO_REDSHIFT = (
    "outside every given tile", "too near a tile edge", "a gap in the exposure maps", "no exposure",
    "no redshift")
_WRITE_ROWS = 256  # cut-outs buffered per HDF5 write


@dataclass
class CutoutReport:
    """What `make_cutouts` wrote and skipped.

    Attributes:
        path: the HDF5 file; skipped_csv: the list of skipped clusters (ID, RA, DEC, reason and
            what was found).
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
    overwrite: bool = False,
) -> CutoutReport:
    """Cuts every catalogue cluster out of the event files and writes the contract's HDF5.

    OUT and OUT.skipped.csv appear together when complete, or not at all (hpo.outputs).

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
        overwrite: replace OUT and OUT.skipped.csv if they exist (refused otherwise).

    Returns:
        A CutoutReport.

    Raises:
        DataContractError: bad survey input (see read_events, read_catalog, ExposureMap), or no
            catalogue position inside the given tiles, or every cluster skipped, or a pixel of
            more photons than an image holds (naming the cluster).
        OutputError: OUT or OUT.skipped.csv exists (without `overwrite`), is an input, or
            cannot be written; checked before any input is read.
    """
    columns, cuts, cfg = columns or CatalogColumns(), cuts or EventCuts(), cfg or SimConfig()
    exposure_paths = exposure_paths or []
    _check_inputs(event_paths, exposure_paths, columns)
    outputs = [out, skipped_path(out)]
    inputs = [*event_paths, catalog_path, *exposure_paths]
    check_outputs(outputs, inputs=inputs, overwrite=overwrite)
    grid = CutoutGrid.of(cfg)
    cuts = replace(cuts, pi_min_ev=grid.band_ev[0], pi_max_ev=grid.band_ev[1])
    cat = read_catalog(catalog_path, columns)
    clean = clean_events(event_paths, cuts)
    maps = [ExposureMap(p) for p in exposure_paths]
    sky = locate_clusters(cat, clean, maps, grid, catalog_path)

    with atomic_outputs(outputs, inputs=inputs, overwrite=overwrite) as (tmp, tmp_skipped):
        with h5py.File(tmp, "w") as f:
            try:
                rows, exposures, skipped = write_images(f, grid, cut_out(sky, clean.events, grid))
            except PixelOverflow as exc:
                raise PixelOverflow(f"{exc}; {out} was not written") from None
            exposure_source = _write_vectors(f, cat, np.asarray(rows, dtype=np.int64),
                                             np.asarray(exposures), maps, columns)
            _write_attrs(f, cfg, event_paths, exposure_paths, catalog_path, columns, cuts,
                         clean.removed, exposure_source, cat.notes, len(skipped))
        if not rows:
            raise DataContractError(
                f"{catalog_path}: every cluster was skipped ({_reasons(skipped)}); nothing to "
                f"write")
        write_skipped(tmp_skipped, cat, skipped)
    return CutoutReport(out, outputs[1], len(rows), [(cat.ids[s.row], s.reason) for s in skipped],
                        clean.removed, exposure_source, cat.notes)


def skipped_path(out: Path) -> Path:
    """OUT.skipped.csv: where make_cutouts lists the clusters it skipped (beside OUT, less its suffix)."""
    return out.with_name(out.stem + ".skipped.csv")


def _check_inputs(event_paths: list[Path], exposure_paths: list[Path],
                  columns: CatalogColumns) -> None:
    if exposure_paths and columns.exposure:
        raise DataContractError("give exposure maps (--exposure) or a catalogue exposure column "
                                "(--exposure-column), not both")
    if not event_paths:
        raise DataContractError("hpo cutouts needs at least one event file")


@dataclass(frozen=True)
class CutoutGrid:
    """The images' grid: size x size pixels of pixel_arcsec, channels between edges_ev (eV)."""

    size: int
    pixel_arcsec: float
    edges_ev: np.ndarray

    @classmethod
    def of(cls, cfg: SimConfig) -> CutoutGrid:
        """The simulator's grid, which the models expect."""
        return cls(cfg.instrument.image_size, cfg.instrument.pixel_arcsec,
                   1000.0 * np.asarray(cfg.spectrum.channel_edges_kev))

    @property
    def channels(self) -> int:
        return self.edges_ev.size - 1

    @property
    def band_ev(self) -> tuple[float, float]:
        """The channels' energy band: the cuts keep the events inside it."""
        return float(self.edges_ev[0]), float(self.edges_ev[-1])

    @property
    def half_diagonal_deg(self) -> float:
        return self.size * self.pixel_arcsec / np.sqrt(2.0) / 3600.0


# ---- step 1: the events that count, each photon once


@dataclass
class CleanEvents:
    """The events of every file that pass the cuts, each photon once, and the sky each file
    covers.

    Attributes:
        events: the merged events.
        footprints: the sky of each file, from all its events (cut or not).
        removed: events removed per cut, plus 'repeated' (photons in two overlapping tiles).
        files: the events of each file as read (their span names the sky in an error).
    """

    events: EventList
    footprints: list[Footprint]
    removed: dict[str, int]
    files: list[EventList]


def clean_events(event_paths: list[Path], cuts: EventCuts) -> CleanEvents:
    """Reads the event files, the sky each covers, applies the cuts to each and keeps one copy
    of each photon that overlapping tiles repeat.

    Raises:
        DataContractError: an unreadable event file, or one whose events cover no area.
    """
    files = [read_events(p) for p in event_paths]
    footprints = [Footprint(e) for e in files]
    removed: dict[str, int] = {}
    kept = []
    for events in files:
        passed, counts = apply_cuts(events, cuts)
        kept.append(passed)
        for k, v in counts.items():
            removed[k] = removed.get(k, 0) + v
    events, removed["repeated"] = merge_events(kept)
    return CleanEvents(events, footprints, removed, files)


# ---- step 2: where each cluster's cut-out lies, or why it is skipped


@dataclass(frozen=True)
class Placement:
    """Where a cluster's cut-out lies: its catalogue row, its pixel grid on the sky, its exposure
    (s; NaN when none is known) and the events near it."""

    row: int
    wcs: WCS
    exposure: float
    nearby: np.ndarray  # indices into the clean events: those within the cut-out's diagonal


@dataclass(frozen=True)
class Cutout:
    """A cluster cut out: where its cut-out lies, and its (size, size, C) uint16 counts."""

    where: Placement
    image: np.ndarray


@dataclass(frozen=True)
class Skip:
    """A cluster not cut out: its catalogue row, the reason (OUTSIDE, EDGE, MAP_GAP, NO_EXPOSURE,
    NO_REDSHIFT) and what was found there."""

    row: int
    reason: str
    found: str = ""


class ClusterSky:
    """The catalogue on the sky the event files cover: where each cut-out lies, or why it is
    skipped (see locate_clusters)."""

    def __init__(self, cat: Catalog, clean: CleanEvents, maps: list[ExposureMap],
                 grid: CutoutGrid, centre_in: np.ndarray):
        self.cat, self.maps, self.grid, self.centre_in = cat, maps, grid, centre_in
        self.footprints = clean.footprints
        half_diag = grid.half_diagonal_deg
        self.tree = cKDTree(_unit(clean.events.ra, clean.events.dec))
        self.chord = 2.0 * np.sin(np.radians(1.01 * half_diag) / 2.0)
        self.cat_vec = _unit(cat.ra, cat.dec)
        # the tiles each cut-out may touch: centre within a tile's radius plus the cut-out's
        self.near_tile = self.cat_vec @ np.array([fp.centre for fp in self.footprints]).T > np.cos(
            np.radians(np.array([fp.radius_deg for fp in self.footprints]) + half_diag))
        gx, gy = np.meshgrid(np.arange(grid.size, dtype=float), np.arange(grid.size, dtype=float))
        self.pixels = gx.ravel(), gy.ravel()

    def place(self, i: int) -> Placement | Skip:
        """Cluster i's cut-out, or why it is skipped: its centre outside every tile, pixels off
        the tiles (EDGE), pixels where the exposure maps hold none (MAP_GAP: a hole, or off the
        maps), no exposure, no redshift; in that order."""
        if not self.centre_in[i]:
            return Skip(i, OUTSIDE)
        cat = self.cat
        w = cutout_wcs(cat.ra[i], cat.dec[i], self.grid.size, self.grid.pixel_arcsec)
        pra, pdec = w.pixel_to_world_values(*self.pixels)
        covered = np.zeros(pra.size, dtype=bool)
        for fp, near in zip(self.footprints, self.near_tile[i]):
            if near:
                covered |= fp.contains(pra, pdec)
        if not covered.all():
            return Skip(i, EDGE, f"{np.count_nonzero(~covered)} of {covered.size} pixels off the "
                        "event files' tiles")
        exposure = np.nan
        if self.maps:
            values = np.fmax.reduce([m.sample(pra, pdec) for m in self.maps])
            has = np.isfinite(values) & (values > 0)
            if not has.any():
                return Skip(i, NO_EXPOSURE, "the exposure maps hold no exposure at any pixel")
            if not has.all():
                return Skip(i, MAP_GAP, f"the exposure maps hold none at {np.count_nonzero(~has)} of "
                            f"{has.size} pixels (zero, NaN or off the maps)")
            exposure = float(values.mean())
        elif cat.exposure_s is not None:
            exposure = float(cat.exposure_s[i])
            if not exposure > 0:
                return Skip(i, NO_EXPOSURE, f"catalogue exposure {exposure:g} s")
        if not 0 < cat.redshift[i] <= Z_MAX:  # the data contract's range (hpo.data.cosmology)
            return Skip(i, NO_REDSHIFT, f"catalogue redshift {cat.redshift[i]:g}")
        nearby = self.tree.query_ball_point(self.cat_vec[i], self.chord)
        return Placement(i, w, exposure, np.asarray(nearby, dtype=np.int64))


def locate_clusters(cat: Catalog, clean: CleanEvents, maps: list[ExposureMap], grid: CutoutGrid,
                    catalog_path: Path) -> ClusterSky:
    """The catalogue on the sky of the event files (ClusterSky.place says where each cut-out
    lies, or why it is skipped).

    Raises:
        DataContractError: no catalogue position lies inside the tiles (the events' span named).
    """
    centre_in = np.zeros(len(cat), dtype=bool)
    for fp in clean.footprints:
        centre_in |= fp.contains(cat.ra, cat.dec)
    if not centre_in.any():
        ra_lo, ra_hi = np.percentile(np.concatenate([e.ra for e in clean.files]), [0, 100])
        de_lo, de_hi = np.percentile(np.concatenate([e.dec for e in clean.files]), [0, 100])
        raise DataContractError(
            f"{catalog_path}: none of its {len(cat)} positions lies inside the given tiles "
            f"(their events span RA {ra_lo:.2f}..{ra_hi:.2f}, DEC {de_lo:.2f}..{de_hi:.2f} deg)")
    return ClusterSky(cat, clean, maps, grid, centre_in)


# ---- step 3: the images


def cut_out(sky: ClusterSky, events: EventList, grid: CutoutGrid) -> Iterator[Cutout | Skip]:
    """Each catalogue cluster in order: cut out (its events binned), or why it is skipped.

    Raises:
        PixelOverflow: naming the cluster (ID, catalogue row, position) and the photons.
    """
    for i in range(len(sky.cat)):
        where = sky.place(i)
        if isinstance(where, Skip):
            yield where
            continue
        try:
            yield Cutout(where, bin_cutout(where, events, grid))
        except PixelOverflow as exc:
            cat = sky.cat
            raise PixelOverflow(f"cluster {cat.ids[i]} (catalogue row {i}, RA {cat.ra[i]:.5f}, DEC "
                                f"{cat.dec[i]:.5f}): {exc}") from None


class PixelOverflow(DataContractError):
    """A cut-out pixel holds more photons in one channel than its uint16 image can (65,535)."""


def bin_cutout(where: Placement, events: EventList, grid: CutoutGrid) -> np.ndarray:
    """(size, size, C) uint16 counts of the events near a cut-out on its pixel grid and channels.

    Raises:
        PixelOverflow: a pixel holds more than 65,535 photons in one channel.
    """
    idx, size, edges_ev = where.nearby, grid.size, grid.edges_ev
    x, y = where.wcs.world_to_pixel_values(events.ra[idx], events.dec[idx])
    ix, iy = np.floor(np.asarray(x) + 0.5), np.floor(np.asarray(y) + 0.5)
    nchan = grid.channels
    ch = np.searchsorted(edges_ev, events.pi[idx], side="right") - 1
    ok = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size) & (ch >= 0) & (ch < nchan)
    flat = (iy[ok].astype(np.int64) * size + ix[ok].astype(np.int64)) * nchan + ch[ok]
    counts = np.bincount(flat, minlength=size * size * nchan)
    if counts.max(initial=0) > np.iinfo(np.uint16).max:
        raise PixelOverflow(f"a cut-out pixel holds {int(counts.max()):,} photons in one channel, more "
                            f"than the {np.iinfo(np.uint16).max:,} an image pixel can; the event "
                            "files hold that many events at one place (repeated events?)")
    return counts.astype(np.uint16).reshape(size, size, nchan)


# ---- step 4: the files


def write_images(
    f: h5py.File, grid: CutoutGrid, cutouts: Iterable[Cutout | Skip]
) -> tuple[list[int], list[float], list[Skip]]:
    """Writes the images of `cutouts` to f["images"] as they come (_WRITE_ROWS at a time).

    Returns:
        The catalogue rows written and their exposures, and each skipped cluster.
    """
    size, nchan = grid.size, grid.channels
    images = f.create_dataset("images", shape=(0, size, size, nchan), dtype=np.uint16,
                              maxshape=(None, size, size, nchan),
                              chunks=(64, size, size, nchan), compression="gzip",
                              compression_opts=4, shuffle=True)
    rows: list[int] = []
    exposures: list[float] = []
    skipped: list[Skip] = []
    buffer: list[np.ndarray] = []
    for cutout in cutouts:
        if isinstance(cutout, Skip):
            skipped.append(cutout)
            continue
        buffer.append(cutout.image)
        rows.append(cutout.where.row)
        exposures.append(cutout.where.exposure)
        if len(buffer) == _WRITE_ROWS:
            _append(images, buffer)
    _append(images, buffer)
    return rows, exposures, skipped


def write_skipped(skipped_csv: Path, cat: Catalog, skipped: list[Skip]) -> Path:
    """`skipped_csv` (OUT.skipped.csv, see skipped_path): ID, RA, DEC, reason and what was found
    of each skipped cluster; returns its path."""
    with skipped_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["cluster_id", "ra", "dec", "reason", "found"])
        for s in skipped:
            writer.writerow([cat.ids[s.row], f"{cat.ra[s.row]:.6f}", f"{cat.dec[s.row]:.6f}", s.reason, s.found])
    return skipped_csv


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


def _reasons(skipped: list[Skip]) -> str:
    counts = collections.Counter(s.reason for s in skipped)
    return "; ".join(f"{n} {reason}" for reason, n in counts.items())


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """(n, 3) unit vectors of positions in degrees (for neighbour searches)."""
    sph = UnitSphericalRepresentation(np.asarray(ra, np.float64) * u.deg,
                                      np.asarray(dec, np.float64) * u.deg)
    return sph.to_cartesian().xyz.value.T
