"""Fuzzing the eSASS reader: event files as tests/conftest.py's write_esass_events writes them,
mutated (an empty or missing EVENTS table, columns dropped or of another type, NaN, infinite or
huge values, GTIs missing or empty, header keywords given bad values, the file cut short or
overwritten), are read or refused with one DataContractError line naming the file, by
read_events and the cuts, and by `hpo cutouts`.

    HYPOTHESIS_PROFILE=e2e python -m pytest tests/data/survey/test_esass_fuzz.py   # 500 each
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy import log as astropy_log
from astropy.io import fits
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hpo.cli import app
from hpo.data.survey.esass import apply_cuts
from hpo.data.survey.esass import cutout_wcs
from hpo.data.survey.esass import EVENT_COLUMNS
from hpo.data.survey.esass import EventCuts
from hpo.data.survey.esass import read_events
from tests._fuzz import accepted_or_one_line
from tests._fuzz import cli_accepted_or_one_line
from tests._fuzz import EDGE_FLOATS
from tests.conftest import write_esass_events
from tests.conftest import write_fits_table

pytestmark = pytest.mark.fuzz

RA0, DEC0 = 10.0, 60.0
VALUES = [*EDGE_FLOATS, -1.0, 0.0, 1e30, 360.5, 91.0, 2**40]
FORMATS = ["10A", "L", "2D", "J", "E", "B", "X", "PJ()", "0D"]
# Cards of a binary table's header, and values they must not take (each keeps its 80 columns).
CARDS = ["NAXIS1", "NAXIS2", "TFIELDS", "PCOUNT", "GCOUNT", "BITPIX", "EXTNAME", "TTYPE1",
         "TTYPE2", "TFORM1", "TFORM2", "TFORM4", "TUNIT4", "TZERO6", "TSCAL2", "THEAP"]
BAD_VALUES = ["'XYZ'", "-1", "99999999", "1.5", "T", "'", "0", "'5Q'", "'1000000000D'", "NAN",
              "'EVENTS'", "'GTI1'", ""]


def _field(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.5, 99.5, size=(2, n))
    ra, dec = cutout_wcs(RA0, DEC0, 100, 16.0).pixel_to_world_values(x, y)
    return np.asarray(ra), np.asarray(dec)


@st.composite
def event_case(draw: st.DrawFn) -> dict:
    """How to write one file: write_esass_events' own options, then table, header and byte
    mutations."""
    n = draw(st.sampled_from([60, 7, 1, 0]))
    columns = {}
    for name in draw(st.lists(st.sampled_from(["ra", "dec", "pi", "time", "tm", "pat", "flag"]),
                              max_size=2, unique=True)):
        columns[name] = draw(st.sampled_from(VALUES))
    return {
        "n": n,
        "values": columns,
        "at": draw(st.integers(0, max(n - 1, 0))),
        # Each kind of damage is rarer than none, so that many files get as far as the cuts.
        "drop": draw(st.sampled_from([[], [], [], [draw(st.sampled_from(EVENT_COLUMNS))]])),
        "pi_unit": draw(st.sampled_from(["eV", "eV", "eV", "eV", "keV", None, "adu", ""])),
        "gti": draw(st.sampled_from([True, True, True, False])),
        "table": draw(st.sampled_from(
            [None, None, None, None, "retype", "retype", "empty_gti", "gti_no_start",
             "events_as_image", "rename", "no_events"])),
        "retype": (draw(st.sampled_from(EVENT_COLUMNS)), draw(st.sampled_from(FORMATS))),
        "card": draw(st.sampled_from([None, None, (draw(st.sampled_from(CARDS)),
                                                     draw(st.sampled_from(BAD_VALUES)))])),
        "damage": draw(st.sampled_from(["none", "none", "none", "truncate", "overwrite"])),
        "offset": draw(st.integers(0, 2**31)),
    }


def _retyped(table: fits.BinTableHDU, name: str, form: str) -> fits.BinTableHDU:
    cols = []
    for col in table.columns:
        if col.name != name:
            cols.append(fits.Column(col.name, col.format, unit=col.unit,
                                    array=table.data[col.name]))
            continue
        rows = len(table.data)
        if form == "10A":
            array = np.array([str(v) for v in table.data[name]], dtype="S10")
        elif form == "L":
            array = np.ones(rows, bool)
        elif form == "2D":
            array = np.ones((rows, 2))
        elif form == "X":
            array = np.zeros((rows, 1), np.uint8)
        elif form == "PJ()":
            array = np.array([np.arange(2)] * rows, dtype=object)
        elif form == "0D":
            array = None
        else:
            array = np.asarray(table.data[name]).astype(fits.column._convert_fits2record(form))
        cols.append(fits.Column(name, form, array=array))
    return fits.BinTableHDU.from_columns(cols, name="EVENTS")


def _table_mutation(path: Path, kind: str | None, retype: tuple[str, str]) -> None:
    if kind is None:
        return
    with fits.open(path) as hdul:
        hdus = [h.copy() for h in hdul]
    names = [h.name for h in hdus]
    i = names.index("EVENTS") if "EVENTS" in names else None
    if kind == "retype" and i is not None and retype[0] in hdus[i].columns.names:
        hdus[i] = _retyped(hdus[i], *retype)
    elif kind == "empty_gti":
        empty = [fits.Column(c, "D", array=np.zeros(0)) for c in ("START", "STOP")]
        hdus = [fits.BinTableHDU.from_columns(empty, name=h.name) if h.name.startswith("GTI")
                else h for h in hdus]
    elif kind == "gti_no_start":
        hdus = [fits.BinTableHDU.from_columns([fits.Column("STOP", "D", array=[1.0])], name=h.name)
                if h.name.startswith("GTI") else h for h in hdus]
    elif kind == "events_as_image" and i is not None:
        hdus[i] = fits.ImageHDU(np.zeros((3, 3)), name="EVENTS")
    elif kind == "rename" and i is not None:
        hdus[i].name = "EVENTZ"
    elif kind == "no_events" and i is not None:
        del hdus[i]
    hdus[0] = fits.PrimaryHDU(header=hdus[0].header)
    fits.HDUList(hdus).writeto(path, overwrite=True)


def _set_card(data: bytes, card: tuple[str, str] | None) -> bytes:
    """The first card `KEY` after the primary header, its value replaced (80 columns kept)."""
    if card is None:
        return data
    key, value = card
    match = re.compile(rb"%-8s= " % key.encode()).search(data, 2880)
    if match is None:
        return data
    start = match.start()
    image = f"{key:<8}= {value:>20}".ljust(80)[:80].encode()
    return data[:start] + image + data[start + 80:]


def materialise(folder: Path, case: dict) -> Path:
    path = folder / "events.fits"
    ra, dec = _field(case["n"])
    values = {}
    for name, value in case["values"].items():
        if case["n"]:
            array = np.full(case["n"], 1.0) if name not in ("ra", "dec") else (
                ra if name == "ra" else dec).copy()
            if name not in ("ra", "dec"):
                array = array * {"pi": 1000.0, "time": 500.0, "tm": 1, "pat": 1, "flag": 0}[name]
            array[case["at"]] = value
            values[name] = array
    ra, dec = values.pop("ra", ra), values.pop("dec", dec)
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # a lossy value is the point
        warnings.simplefilter("ignore")
        try:
            write_esass_events(path, ra, dec, drop=tuple(case["drop"]), pi_unit=case["pi_unit"],
                               gti=case["gti"], **values)
        except (ValueError, TypeError, OverflowError):  # astropy will not write it: no case
            write_esass_events(path, *_field(case["n"]))
        _table_mutation(path, case["table"], case["retype"])
    data = _set_card(path.read_bytes(), case["card"])
    at = case["offset"] % max(len(data), 1)
    if case["damage"] == "truncate":
        data = data[:at]
    elif case["damage"] == "overwrite":
        data = data[:at] + bytes(64) + data[at + 64:]
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("esass_fuzz")
    write_fits_table(folder / "cat.fits", ID=[1, 2], RA=[RA0, RA0 + 0.01], DEC=[DEC0, DEC0],
                     Z=[0.2, 0.4], M500=[3.0, 5.0])
    return folder


def _case(**changes) -> dict:
    return {"n": 60, "values": {}, "at": 0, "drop": [], "pi_unit": "eV", "gti": True,
            "table": None, "retype": ("RA", "D"), "card": None, "damage": "none", "offset": 0,
            **changes}


def _read_and_cut(path: Path) -> None:
    events = read_events(path)
    apply_cuts(events, EventCuts())


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def quietly(call):
    """Runs `call` and returns what it printed beside its result or error: astropy's log lines
    and any warning (each would be a line of its own on the terminal)."""
    lines = _Lines()
    astropy_log.addHandler(lines)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
    finally:
        astropy_log.removeHandler(lines)
    return lines.lines + [str(w.message) for w in caught]


# The tracebacks of issue 26 and those the fuzzer found, kept as examples that always run.
FOUND = [
    _case(n=0),  # an empty EVENTS table
    _case(damage="truncate", offset=2880 * 2 + 1000),  # cut short in the middle of EVENTS
    _case(table="retype", retype=("RA", "10A")),  # strings where numbers belong
    _case(table="retype", retype=("FLAG", "2D")),  # two numbers a row
    _case(card=("NAXIS2", "99999999")),  # a header promising more rows than there are
    _case(card=("TFORM1", "'5Q'")),  # a header keyword astropy cannot parse
    _case(table="empty_gti"),  # GTI tables without rows
]


def examples(test):
    for case in [_case(), *FOUND]:
        test = example(case)(test)
    return test


@examples
@given(event_case())
def test_a_mutated_event_file_is_read_or_refused_in_one_line(folder, case):
    # Rule: read_events (and the standard cuts on what it reads) of any mutation of a valid eSASS
    # event file either succeeds or raises one DataContractError line naming the file, and
    # prints nothing else (no astropy warning or log line: what astropy says is in the error).
    path = materialise(folder, case)
    printed = quietly(lambda: accepted_or_one_line(lambda: _read_and_cut(path), str(path)))
    assert not printed, printed


@examples
@given(event_case())
@settings(max_examples=settings().max_examples // 2)  # each cuts out clusters: half the profile's
def test_hpo_cutouts_of_a_mutated_event_file_exits_0_or_one_line(folder, case):
    # Rule: `hpo cutouts EVENTS --catalog CAT -o OUT` with a mutated event file writes its
    # cut-outs or stops with one HpoError line (exit 1 through main), never a traceback, and
    # prints no warning or log line of astropy's or numpy's beside it.
    results: list = []
    path = materialise(folder, case)
    args = ["cutouts", str(path), "--catalog", str(folder / "cat.fits"), "-o",
            str(folder / "out.h5"), "--overwrite"]
    printed = quietly(lambda: results.append(CliRunner().invoke(app, args)))
    result = results.pop()
    assert not printed, printed
    cli_accepted_or_one_line(result, str(path), "cat.fits", "out.h5")
