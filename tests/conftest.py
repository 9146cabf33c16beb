"""Shared fixtures: tiny contract files with a learnable signal, temporary stores, a PostgreSQL
database per module (tests/_postgres.py) and the registry study with its champion
(tests/_registry.py), for every folder of tests/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
# A worker run in a test process would turn JAX's persistent compilation cache on for every
# later test of it (written to the user's ~/.cache); its own test runs it in a process of its own.
os.environ.setdefault("HPO_JAX_CACHE", "off")

# The fuzz tests (marker fuzz): a few dozen examples each in `make test`, hundreds in `make
# test-e2e`, which sets HYPOTHESIS_PROFILE=e2e. No deadline: a loaded CI machine is slow at times,
# and what is checked is the outcome, not the speed. Derandomized: each run tries the same
# examples, so a run fails only on a change of the code, never by the draw (explore with
# HYPOTHESIS_PROFILE=explore; pin what it finds as an @example).
_FUZZ = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow],
             derandomize=True)
settings.register_profile("default", max_examples=40, **_FUZZ)
settings.register_profile("e2e", max_examples=500, **_FUZZ)
settings.register_profile("explore", max_examples=500, **{**_FUZZ, "derandomize": False})
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


class FakeClock:
    """time.monotonic and time.sleep of a test: sleeping (or setting `now`) moves the clock, nothing
    waits."""

    def __init__(self, now: float = 0.0) -> None:
        self.now, self.sleeps = now, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_signal_data(n: int, *, size: int = 16, channels: int = 2, seed: int = 0,
                     exposure: tuple[float, float] | None = None) -> dict:
    """Images whose total counts grow with mass: a signal a small CNN must learn.

    With `exposure` (low, high) s, each cluster gets an exposure drawn log-uniformly in it
    (key exposure_s) and counts in proportion to it (x t / 1000 s).
    """
    rng = np.random.default_rng(seed)
    log_mass = rng.uniform(13.0, 15.0, n).astype(np.float32)
    redshift = rng.uniform(0.05, 1.0, n).astype(np.float32)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    profile = np.exp(-(xx**2 + yy**2) / (2 * (size / 6) ** 2))
    profile /= profile.sum()
    total = 10 ** (1.2 * (log_mass - 13.0) + 1.0) / (1 + redshift) ** 2
    extra = {}
    if exposure is not None:
        t = np.exp(rng.uniform(np.log(exposure[0]), np.log(exposure[1]), n)).astype(np.float32)
        total = total * t / 1000.0
        extra["exposure_s"] = t
    lam = total[:, None, None, None] * profile[None, :, :, None] * np.ones(channels) / channels
    images = rng.poisson(lam).astype(np.int32)
    return {"images": images, "redshift": redshift, "log_mass": log_mass, **extra}


def write_h5(path: Path, arrays: dict) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


@pytest.fixture(scope="session")
def signal_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 clusters of 16 x 16 x 2 with counts ~ mass."""
    path = tmp_path_factory.mktemp("data") / "signal.h5"
    return write_h5(path, make_signal_data(300))


@pytest.fixture(scope="module")
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test module, dropped afterwards."""
    from tests._postgres import fresh_database

    module = request.module.__name__.removeprefix("tests.").replace(".", "_")  # store_test_retry
    with fresh_database(f"hpo_{module}_{os.getpid()}".lower()) as url:
        yield url


@pytest.fixture(scope="session")
def slurm() -> Iterator:
    """A private single-node Slurm cluster (deploy/slurm/cluster.sh), started once a session and
    stopped after: a tests._slurm.Slurm; skips with the reason where Slurm cannot start."""
    from tests._slurm import start_cluster

    yield from start_cluster()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """A study of 2 tiny trials whose best is the champion of tests._registry.MODEL (SQLite
    stores), run once a session in this process: a tests._registry.Registry."""
    from tests._registry import make_registry

    return make_registry(tmp_path_factory.mktemp("registry"))


def write_esass_events(path: Path, ra, dec, *, pi=None, tm=None, pat=None, flag=None, time=None,
                       drop: tuple[str, ...] = (), pi_unit: str | None = "eV",
                       gti: bool = True) -> Path:
    """A small eSASS-layout event file (EVENTS + GTI1..GTI7) of events at ra, dec (deg): by default
    1 keV, TM1, singles, FLAG 0, inside the GTI [0, 1000) s; `drop` leaves columns out."""
    from astropy.io import fits

    ra, dec = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
    n = ra.size
    full = lambda v, d: np.broadcast_to(np.asarray(d if v is None else v), (n,))  # noqa: E731
    cols = {
        "TIME": ("D", full(time, 500.0), "s"), "RA": ("D", ra, "deg"), "DEC": ("D", dec, "deg"),
        "PI": ("E", full(pi, 1000.0), pi_unit), "PAT_TYP": ("I", full(pat, 1), None),
        "FLAG": ("J", full(flag, 0).astype(np.uint32), None), "TM_NR": ("B", full(tm, 1), None),
    }
    columns = [fits.Column(k, f, unit=u, array=np.asarray(a), bzero=2**31 if k == "FLAG" else None)
               for k, (f, a, u) in cols.items() if k not in drop]
    hdus = [fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns, name="EVENTS")]
    if gti:
        for t in range(1, 8):
            hdus.append(fits.BinTableHDU.from_columns(
                [fits.Column("START", "D", array=[0.0]), fits.Column("STOP", "D", array=[1000.0])],
                name=f"GTI{t}"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def write_fits_table(path: Path, units: dict | None = None, **columns) -> Path:
    """A FITS binary table of the given columns (a catalogue), with optional units."""
    from astropy.table import Table

    table = Table({k: np.asarray(v) for k, v in columns.items()})
    for key, unit in (units or {}).items():
        table[key].unit = unit
    table.write(path, format="fits", overwrite=True)
    return path
