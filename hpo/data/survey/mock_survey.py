"""The simulator's photons as eROSITA survey files (eSASS event lists, exposure maps, a catalogue).

A test fixture: `hpo cutouts` is tested on the kinds of files the real survey ships.

    hpo simulate data/mock.h5 --n 30 --seed 0 --events data/mock-events

Every count of every simulated image becomes one event: placed uniformly within its pixel on the
cluster's TAN cut-out grid (esass.cutout_wcs) and converted to RA/DEC by astropy, with an energy
drawn uniformly within its channel, a module, pattern, flag and time that pass the standard cuts.
Photons reach the modules as the sky sends them, evenly: a mock simulated with the light-leak cut
(instrument.light_leak_cut, the default) holds the counts of TM1-4 and TM6 only below 0.8 keV, so
its soft counts go to those modules, and TM5 and TM7 get the photons the cut took, Poisson(2/5)
more per soft count in the same pixel and below 0.8 keV; `hpo cutouts` drops them by default and
keeps them with --keep-light-leak. A mock simulated without the cut spreads its soft counts over
all seven modules. Clusters sit 0.2 deg apart on a grid of 1 x 1 deg tiles around RA 0, Dec -45 (RA
0 runs through the field); each tile file also holds the events up to 0.02 deg beyond its unique
area, as DR1 tiles overlap, so a photon near a tile boundary is in both files. Clusters on the
grid's outer columns stick out of the survey (hpo cutouts must skip them), those on inner tile
boundaries have events in two files. Added to each cut-out, events the cuts must remove (a bad FLAG
bit, an invalid pattern, an energy outside 0.2-8 keV, a time outside the GTIs); around the
cut-outs, background events fill each tile. The exposure maps hold, at each pixel, the exposure of
the nearest cluster, and 0 beyond the survey.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from hpo import __version__
from hpo.data.sim.config import MODULES
from hpo.data.sim.config import SimConfig
from hpo.data.sim.response import background_spectrum
from hpo.data.survey.esass import cutout_wcs
from hpo.data.survey.esass import FLAG_BITS
from hpo.errors import ConfigError
from hpo.outputs import atomic_outputs

MAX_CLUSTERS = 2000  # a fixture: 80 tiles at most keeps the field within ~10 deg
FIELD_CENTRE = (0.0, -45.0)  # deg; RA 0 crosses the field, which the cut-outs must handle
TILE_DEG, OVERLAP_DEG, SLOT_DEG = 1.0, 0.02, 0.2
MAP_PIXEL_ARCSEC = 20.0
T0, PASS_S, SCAN_S = 6.5e8, 1000.0, 200.0  # GTIs: 5 scans of 200 s, one every 1000 s
FODDER_SHARE = 0.02  # events the cuts must remove, per kind, as a share of a cut-out's photons
_GOOD_FLAGS = np.array([0x1, 0x1, 0x1, 0x0, 0x1000001], dtype=np.uint32)  # owner, PHA quality
_PATTERN_P = np.array([0.6, 0.25, 0.1, 0.05])  # PAT_TYP 1-4
_FODDER = ("flag", "pattern", "energy", "gti")  # light-leak events are the sky's own (_photons)


@dataclass
class EventFixture:
    """What `write_event_fixture` wrote.

    Attributes:
        event_files, exposure_maps: one per tile; catalog: the cluster catalogue (FITS).
        edge_ids: clusters whose cut-out sticks out of the survey (hpo cutouts skips them).
        spanning_ids: clusters whose events are in two or more files.
        n_photons: events from the images; n_fodder: events the default cuts must remove
            (n_light_leak of them the light-leak modules' photons below 0.8 keV).
    """

    directory: Path
    event_files: list[Path]
    exposure_maps: list[Path]
    catalog: Path
    edge_ids: list[int]
    spanning_ids: list[int]
    n_photons: int
    n_fodder: int
    n_light_leak: int


def fixture_files(out_dir: str | Path, n: int) -> list[Path]:
    """What write_event_fixture writes for `n` clusters: per tile an event list and an exposure
    map, then catalog.fits and fixture.json."""
    out_dir = Path(out_dir)
    tiles = range(-(-n // 25))
    return ([out_dir / f"tile{k:03d}_EventList.fits" for k in tiles]
            + [out_dir / f"tile{k:03d}_ExposureMap.fits" for k in tiles]
            + [out_dir / "catalog.fits", out_dir / "fixture.json"])


def write_event_fixture(data_path: str | Path, out_dir: str | Path, seed: int,
                        cfg: SimConfig | None = None, *, overwrite: bool = True,
                        data_name: str | Path | None = None) -> EventFixture:
    """Writes a simulated data file's clusters as event files, exposure maps and a catalogue.

    The files (fixture_files) appear together when complete, or none of them (hpo.outputs).

    Args:
        data_path: a file written by `write_mock` with this `cfg` (images, redshift, log_mass,
            truth/exposure_s).
        out_dir: folder for tileNNN_EventList.fits, tileNNN_ExposureMap.fits, catalog.fits and
            fixture.json.
        seed: seeds the events' positions, energies and times (a stream apart from the images').
        cfg: the simulator config the file was written with.
        overwrite: replace files of an earlier fixture (`hpo simulate --events` passes its
            --overwrite, False by default).
        data_name: the data file's name to record in fixture.json (default `data_path`).

    Raises:
        ConfigError: more than MAX_CLUSTERS clusters.
        OutputError: a file exists (without `overwrite`), or cannot be written.
    """
    cfg = cfg or SimConfig()
    with h5py.File(data_path, "r") as f:
        images = f["images"][()]
        redshift, log_mass = f["redshift"][()], f["log_mass"][()]
        exposure = f["truth/exposure_s"][()]
    n = images.shape[0]
    if n > MAX_CLUSTERS:
        raise ConfigError(f"--events writes a test fixture of at most {MAX_CLUSTERS} clusters, "
                          f"got --n {n}")
    rng = np.random.default_rng([seed, 0x657674])
    out_dir = Path(out_dir)
    files = fixture_files(out_dir, n)
    with atomic_outputs(files, inputs=[data_path], overwrite=overwrite, option="--events") as temps:
        return _write_fixture(dict(zip(files, temps, strict=True)), out_dir, images, redshift, log_mass,
                              exposure, rng, cfg, {"data": str(data_name or data_path), "seed": seed})


def _write_fixture(temp: dict[Path, Path], out_dir: Path, images: np.ndarray, redshift: np.ndarray,
                   log_mass: np.ndarray, exposure: np.ndarray, rng: np.random.Generator,
                   cfg: SimConfig, about: dict) -> EventFixture:
    """The fixture's files, each written to its temporary `temp[path]`."""
    n, size = images.shape[0], images.shape[1]
    pix = cfg.instrument.pixel_arcsec
    edges_ev = 1000.0 * np.asarray(cfg.spectrum.channel_edges_kev)

    # ---- the layout: tiles, slots, cluster positions
    n_tiles = -(-n // 25)
    nx = int(np.ceil(np.sqrt(n_tiles)))
    ny = -(-n_tiles // nx)
    plane = _plane(*FIELD_CENTRE)
    cols = np.arange(5 * nx + 1) * SLOT_DEG - nx * TILE_DEG / 2
    rows = (np.arange(5 * ny) + 0.5) * SLOT_DEG - ny * TILE_DEG / 2
    slots = np.array([(x, y) for x in cols for y in rows])
    pick = np.round(np.linspace(0, len(slots) - 1, n)).astype(int)
    xi, eta = slots[pick, 0], slots[pick, 1]
    ra, dec = plane.pixel_to_world_values(xi, eta)
    ra = np.asarray(ra) % 360.0
    tiles = [(-nx / 2 + a, -ny / 2 + b) for b in range(ny) for a in range(nx)]  # lower-left
    half = size * pix / 2.0 / 3600.0
    edge = ((np.abs(xi) + half > nx / 2 + OVERLAP_DEG)
            | (np.abs(eta) + half > ny / 2 + OVERLAP_DEG))  # sticks out of the survey

    # ---- events: photons of the images, fodder the cuts must remove, background between
    photons, leaked = _photons(rng, images, ra, dec, pix, edges_ev, cfg)
    parts = [photons, leaked, _fodder(rng, images, ra, dec, pix)]
    owner = np.concatenate([p["owner"] for p in parts])
    parts.append(_background(rng, cfg, plane, tiles, xi, eta, half, edges_ev))
    events = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "owner"}
    owner = np.concatenate([owner, np.full(parts[-1]["ra"].size, -1)])
    ex, ey = plane.world_to_pixel_values(events["ra"], events["dec"])

    event_files, maps, spanning = [], [], np.zeros(n, dtype=int)
    nearest = cKDTree(np.column_stack([xi, eta]))
    for k, (x0, y0) in enumerate(tiles):
        inside = ((ex >= x0 - OVERLAP_DEG) & (ex < x0 + TILE_DEG + OVERLAP_DEG)
                  & (ey >= y0 - OVERLAP_DEG) & (ey < y0 + TILE_DEG + OVERLAP_DEG))
        spanning[np.unique(owner[inside & (owner >= 0)])] += 1
        path = out_dir / f"tile{k:03d}_EventList.fits"
        _write_events(temp[path], {key: v[inside] for key, v in events.items()})
        event_files.append(path)
        path = out_dir / f"tile{k:03d}_ExposureMap.fits"
        _write_map(temp[path], plane, x0, y0, nearest, exposure)
        maps.append(path)
    catalog = out_dir / "catalog.fits"
    _write_catalog(temp[catalog], ra, dec, redshift, log_mass, exposure)
    fixture = EventFixture(out_dir, event_files, maps, catalog,
                           [int(i) for i in np.flatnonzero(edge)],
                           [int(i) for i in np.flatnonzero(spanning >= 2)],
                           int(photons["ra"].size), int(leaked["ra"].size + parts[2]["ra"].size),
                           int(leaked["ra"].size))
    temp[out_dir / "fixture.json"].write_text(json.dumps({
        **about, "field_centre_deg": FIELD_CENTRE,
        "tiles": len(tiles), "tile_deg": TILE_DEG, "overlap_deg": OVERLAP_DEG,
        "edge_ids": fixture.edge_ids, "spanning_ids": fixture.spanning_ids,
        "n_photons": fixture.n_photons, "n_fodder": fixture.n_fodder,
        "n_light_leak": fixture.n_light_leak, "light_leak_cut": cfg.instrument.light_leak_cut},
        indent=1))
    return fixture


def _plane(ra0: float, dec0: float) -> WCS:
    """The field's tangent plane: pixel (x, y) = offset in degrees from the centre (x: west)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [1.0, 1.0]
    w.wcs.cdelt = [-1.0, 1.0]
    w.wcs.set()
    return w


def _energies(rng: np.random.Generator, chan: np.ndarray, edges_ev: np.ndarray) -> np.ndarray:
    """float32 eV uniform within each photon's channel, never rounded onto the upper edge."""
    lo, hi = edges_ev[chan], edges_ev[chan + 1]
    e = (lo + rng.uniform(size=chan.size) * (hi - lo)).astype(np.float32)
    return np.minimum(e, np.nextafter(hi.astype(np.float32), np.float32(0)))


def _good(rng: np.random.Generator, pi: np.ndarray, modules: np.ndarray | None = None,
          cfg: SimConfig | None = None) -> dict[str, np.ndarray]:
    """Module, pattern, flag and time of events that pass every standard cut: the module uniform
    over `modules` (default all seven), or, given a `cfg` with the light-leak cut, over the modules
    that cut keeps below its energy."""
    m = pi.size
    tm = rng.choice(np.arange(1, MODULES + 1) if modules is None else modules, size=m)
    if cfg is not None and cfg.instrument.light_leak_cut:
        soft = pi < 1000.0 * cfg.instrument.light_leak_kev
        tm[soft] = rng.choice(_kept_modules(cfg), size=int(soft.sum()))
    scan = rng.integers(0, 5, size=m)
    return {
        "tm_nr": tm,
        "pat_typ": rng.choice(np.arange(1, 5), size=m, p=_PATTERN_P),
        "flag": rng.choice(_GOOD_FLAGS, size=m),
        "time": T0 + scan * PASS_S + 10.0 * tm + rng.uniform(0, SCAN_S, size=m),
    }


def _kept_modules(cfg: SimConfig) -> np.ndarray:
    return np.array([t for t in range(1, MODULES + 1)
                     if t not in cfg.instrument.light_leak_modules])


def _photons(rng: np.random.Generator, images: np.ndarray, ra: np.ndarray, dec: np.ndarray,
             pix: float, edges_ev: np.ndarray, cfg: SimConfig
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One event per count of every image, at a uniform spot within its pixel; and, for a mock
    with the light-leak cut, the light-leak modules' photons below its energy that the images
    lack: Poisson(leak / kept modules) per soft count, in its pixel, below the cut energy."""
    size = images.shape[1]
    i, r, c, ch = np.nonzero(images)
    reps = images[i, r, c, ch].astype(np.int64)
    i, r, c, ch = (np.repeat(a, reps) for a in (i, r, c, ch))
    pi = _energies(rng, ch, edges_ev)
    ins = cfg.instrument
    cut_ev = 1000.0 * ins.light_leak_kev
    soft = np.flatnonzero(pi < cut_ev) if ins.light_leak_cut else np.zeros(0, dtype=np.int64)
    twins = np.repeat(soft, rng.poisson(len(ins.light_leak_modules) / _kept_modules(cfg).size,
                                        size=soft.size))
    out = []
    for sel, events_pi, modules in ((slice(None), pi, None), (twins, None, ins.light_leak_modules)):
        x = c[sel] - 0.5 + rng.uniform(size=c[sel].size)
        y = r[sel] - 0.5 + rng.uniform(size=r[sel].size)
        out_ra, out_dec = _to_sky(i[sel], x, y, ra, dec, size, pix)
        if events_pi is None:  # below the cut within the photon's channel
            events_pi = _energies(rng, ch[sel], np.minimum(edges_ev, cut_ev))
        good = (_good(rng, events_pi, cfg=cfg) if modules is None
                else _good(rng, events_pi, np.asarray(modules)))
        out.append({"ra": out_ra, "dec": out_dec, "pi": events_pi, **good, "owner": i[sel]})
    return out[0], out[1]


def _fodder(rng: np.random.Generator, images: np.ndarray, ra: np.ndarray, dec: np.ndarray,
            pix: float) -> dict[str, np.ndarray]:
    """Events inside each cut-out with exactly one defect that a standard cut removes."""
    size = images.shape[1]
    per = np.maximum(2, np.round(FODDER_SHARE * images.sum(axis=(1, 2, 3)))).astype(np.int64)
    i = np.repeat(np.repeat(np.arange(images.shape[0]), per), len(_FODDER))
    kind = np.tile(np.arange(len(_FODDER)), int(per.sum()))
    m = i.size
    x, y = rng.uniform(-0.5, size - 0.5, size=(2, m))
    out_ra, out_dec = _to_sky(i, x, y, ra, dec, size, pix)
    pi = rng.uniform(800.0, 8000.0, size=m).astype(np.float32)
    ev = {"ra": out_ra, "dec": out_dec, "pi": pi, **_good(rng, pi), "owner": i}
    bits = np.array(sorted(FLAG_BITS), dtype=np.uint32)
    sel = kind == _FODDER.index("flag")
    ev["flag"][sel] |= rng.choice(bits, size=int(sel.sum()))
    sel = kind == _FODDER.index("pattern")
    ev["pat_typ"][sel] = rng.choice([0, 5, 6, 7, 8], size=int(sel.sum()))
    sel = kind == _FODDER.index("energy")
    low = rng.uniform(size=int(sel.sum())) < 0.5
    ev["pi"][sel] = np.where(low, rng.uniform(30.0, 199.0, low.size),
                             rng.uniform(8000.0, 12000.0, low.size)).astype(np.float32)
    sel = kind == _FODDER.index("gti")
    ev["time"][sel] += SCAN_S + 100.0  # into the gap after its scan
    return ev


def _background(rng: np.random.Generator, cfg: SimConfig, plane: WCS, tiles: list,
                xi: np.ndarray, eta: np.ndarray, half: float,
                edges_ev: np.ndarray) -> dict[str, np.ndarray]:
    """Background events over every tile, none within reach of a cut-out."""
    lo, hi = cfg.survey.exposure_range()
    side = TILE_DEG + 2 * OVERLAP_DEG
    rate = cfg.background.rate_per_arcmin2 * 0.5 * (lo + hi) * (side * 60.0) ** 2
    xs, ys = [], []
    for x0, y0 in tiles:
        m = rng.poisson(rate)
        xs.append(x0 - OVERLAP_DEG + side * rng.uniform(size=m))
        ys.append(y0 - OVERLAP_DEG + side * rng.uniform(size=m))
    x, y = np.concatenate(xs), np.concatenate(ys)
    reach = 1.6 * half  # beyond the cut-out's half-diagonal (1.41 half)
    far = cKDTree(np.column_stack([xi, eta])).query(np.column_stack([x, y]))[0] > reach
    x, y = x[far], y[far]
    out_ra, out_dec = plane.pixel_to_world_values(x, y)
    sky = cfg.model_copy(update={"instrument": cfg.instrument.model_copy(update={"light_leak_cut": False})})
    share = background_spectrum(sky)  # every module's events: the cuts drop the light leak's
    pi = _energies(rng, rng.choice(share.size, size=x.size, p=share / share.sum()), edges_ev)
    return {"ra": np.asarray(out_ra) % 360.0, "dec": np.asarray(out_dec), "pi": pi,
            **_good(rng, pi)}


def _to_sky(i: np.ndarray, x: np.ndarray, y: np.ndarray, ra: np.ndarray, dec: np.ndarray,
            size: int, pix: float) -> tuple[np.ndarray, np.ndarray]:
    """RA, DEC (deg) of cut-out pixel positions (x, y) of clusters i, by each cluster's WCS."""
    out_ra, out_dec = np.empty(i.size), np.empty(i.size)
    order = np.argsort(i, kind="stable")
    bounds = np.searchsorted(i[order], np.arange(ra.size + 1))
    for k in range(ra.size):
        sel = order[bounds[k]:bounds[k + 1]]
        if sel.size:
            wr, wd = cutout_wcs(ra[k], dec[k], size, pix).pixel_to_world_values(x[sel], y[sel])
            out_ra[sel], out_dec[sel] = np.asarray(wr) % 360.0, wd
    return out_ra, out_dec


def _write_events(path: Path, ev: dict[str, np.ndarray]) -> None:
    order = np.argsort(ev["time"], kind="stable")
    columns = [
        fits.Column("TIME", "D", unit="s", array=ev["time"][order]),
        fits.Column("RA", "D", unit="deg", array=ev["ra"][order]),
        fits.Column("DEC", "D", unit="deg", array=ev["dec"][order]),
        fits.Column("PI", "E", unit="eV", array=ev["pi"][order].astype(np.float32)),
        fits.Column("PAT_TYP", "I", array=ev["pat_typ"][order].astype(np.int16)),
        fits.Column("FLAG", "J", bzero=2**31, array=ev["flag"][order].astype(np.uint32)),
        fits.Column("TM_NR", "B", array=ev["tm_nr"][order].astype(np.uint8)),
    ]
    events = fits.BinTableHDU.from_columns(columns, name="EVENTS")
    for key, value in (("TELESCOP", "eROSITA"), ("MISSION", "SRG"), ("OBS_MODE", "SURVEY"),
                       ("MJDREF", 51543.875), ("TIMESYS", "TT"), ("RADECSYS", "FK5"),
                       ("CREATOR", f"hpo simulate --events {__version__}")):
        events.header[key] = value
    hdus = [fits.PrimaryHDU(), events]
    for tm in range(1, 8):
        start = T0 + np.arange(5) * PASS_S + 10.0 * tm
        hdus.append(fits.BinTableHDU.from_columns(
            [fits.Column("START", "D", unit="s", array=start),
             fits.Column("STOP", "D", unit="s", array=start + SCAN_S)], name=f"GTI{tm}"))
    hdus[0].header["COMMENT"] = "Simulated by hpo (a test fixture), eSASS event-file layout"
    fits.HDUList(hdus).writeto(path, overwrite=True)


def _write_map(path: Path, plane: WCS, x0: float, y0: float, nearest: cKDTree,
               exposure: np.ndarray) -> Path:
    """A TAN exposure map centred on the tile: the nearest cluster's exposure, 0 off the survey."""
    side = TILE_DEG + 2 * OVERLAP_DEG
    npix = int(np.ceil(side * 3600.0 / MAP_PIXEL_ARCSEC)) + 4
    cra, cdec = plane.pixel_to_world_values(x0 + TILE_DEG / 2, y0 + TILE_DEG / 2)
    w = cutout_wcs(float(cra) % 360.0, float(cdec), npix, MAP_PIXEL_ARCSEC)
    gx, gy = np.meshgrid(np.arange(npix, dtype=float), np.arange(npix, dtype=float))
    px, py = plane.world_to_pixel_values(*w.pixel_to_world_values(gx, gy))
    inside = ((px >= x0 - OVERLAP_DEG) & (px < x0 + TILE_DEG + OVERLAP_DEG)
              & (py >= y0 - OVERLAP_DEG) & (py < y0 + TILE_DEG + OVERLAP_DEG))
    near = nearest.query(np.column_stack([px.ravel(), py.ravel()]))[1].reshape(px.shape)
    data = np.where(inside, exposure[near], 0.0).astype(np.float32)
    hdu = fits.PrimaryHDU(data, header=w.to_header())
    hdu.header["BUNIT"] = "s"
    hdu.writeto(path, overwrite=True)
    return path


def _write_catalog(path: Path, ra: np.ndarray, dec: np.ndarray, redshift: np.ndarray,
                   log_mass: np.ndarray, exposure: np.ndarray) -> Path:
    """ID, RA, DEC, Z, M500 (10^14 Msun, declared) and EXP (s), as a survey catalogue has them."""
    table = Table({
        "ID": np.arange(ra.size, dtype=np.int64),
        "RA": ra, "DEC": dec,
        "Z": redshift.astype(np.float64),
        "M500": 10.0 ** (log_mass.astype(np.float64) - 14.0),
        "EXP": exposure.astype(np.float64),
    })
    table["RA"].unit = table["DEC"].unit = u.deg
    table["M500"].unit = u.Unit("1e14 solMass")
    table["EXP"].unit = u.s
    table.write(path, format="fits", overwrite=True)
    return path
