"""`hpo cutouts` on bad survey input: one line naming the file and what is wrong, non-zero exit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from typer.testing import CliRunner

from hpo.cli import app
from hpo.data.survey.esass import cutout_wcs
from hpo.errors import HpoError
from tests.cli.test_end_to_end import hpo
from tests.conftest import write_esass_events
from tests.conftest import write_fits_table

RA0, DEC0 = 10.0, 60.0


def _field(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.5, 99.5, size=(2, n))  # a 0.44 deg square around (RA0, DEC0)
    ra, dec = cutout_wcs(RA0, DEC0, 100, 16.0).pixel_to_world_values(x, y)
    return np.asarray(ra), np.asarray(dec)


@pytest.fixture
def good(tmp_path: Path) -> dict[str, Path]:
    """A valid event file and catalogue: the cases below each break one thing."""
    return {
        "events": write_esass_events(tmp_path / "ev.fits", *_field()),
        "catalog": write_fits_table(tmp_path / "cat.fits", ID=[1, 2], RA=[RA0, RA0 + 0.01],
                                    DEC=[DEC0, DEC0], Z=[0.2, 0.4], M500=[3.0, 5.0]),
    }


def _run(events: Path, catalog: Path, tmp_path: Path, *extra: str):
    return CliRunner().invoke(
        app, ["cutouts", str(events), "--catalog", str(catalog), "-o", str(tmp_path / "o.h5"),
              *extra])


def _refused(result, *fragments: str) -> None:
    # What main() prints: the HpoError's message, one line, exit 1 (no traceback).
    assert result.exit_code != 0
    assert isinstance(result.exception, HpoError), result.output
    line = str(result.exception)
    assert "\n" not in line
    for fragment in fragments:
        assert fragment in line, line


def test_the_valid_input_is_cut(good, tmp_path):
    # Rule: the baseline the cases below break is accepted.
    result = _run(good["events"], good["catalog"], tmp_path)
    assert result.exit_code == 0, result.output
    assert "wrote 2 clusters" in result.output


def test_a_fits_file_without_events(good, tmp_path):
    # Rule: a FITS file without an EVENTS extension is refused, and an exposure map passed as
    # events says to pass it with --exposure.
    table = write_fits_table(tmp_path / "t.fits", A=[1, 2])
    _refused(_run(table, good["catalog"], tmp_path), "t.fits", "no EVENTS extension")
    image = fits.PrimaryHDU(np.ones((10, 10), np.float32), cutout_wcs(RA0, DEC0, 10, 60).to_header())
    image.writeto(tmp_path / "map.fits")
    _refused(_run(tmp_path / "map.fits", good["catalog"], tmp_path), "map.fits",
             "no EVENTS extension", "--exposure")
    (tmp_path / "notes.txt").write_text("not fits")
    _refused(_run(tmp_path / "notes.txt", good["catalog"], tmp_path), "not a readable FITS file")


def test_missing_event_columns_are_named(tmp_path, good):
    # Rule: an EVENTS table without the columns the cuts need names each missing one.
    ev = write_esass_events(tmp_path / "few.fits", *_field(), drop=("PAT_TYP", "FLAG"))
    _refused(_run(ev, good["catalog"], tmp_path), "few.fits", "PAT_TYP, FLAG")
    no_gti = write_esass_events(tmp_path / "nogti.fits", *_field(), gti=False)
    _refused(_run(no_gti, good["catalog"], tmp_path), "nogti.fits", "no GTI extension")


def test_a_catalogue_without_ra_dec(good, tmp_path):
    # Rule: a catalogue without the position columns lists its columns and the option to use.
    cat = write_fits_table(tmp_path / "gal.fits", ID=[1], GLON=[120.0], GLAT=[10.0], Z=[0.2])
    _refused(_run(good["events"], cat, tmp_path), "gal.fits", "no RA column 'RA'", "GLON",
             "--ra-column")


def test_positions_outside_every_tile(good, tmp_path):
    # Rule: a catalogue none of whose clusters lies in the given tiles is refused, saying where
    # the events are.
    cat = write_fits_table(tmp_path / "far.fits", ID=[1, 2], RA=[200.0, 201.0], DEC=[-30.0, -31.0],
                           Z=[0.2, 0.3])
    _refused(_run(good["events"], cat, tmp_path), "far.fits",
             "none of its 2 positions lies inside the given tiles", "RA 9.")


def test_energies_in_kev_are_detected(good, tmp_path):
    # Rule: PI in keV (declared, or undeclared but 0.2-10) is refused, saying eSASS PI is in eV.
    declared = write_esass_events(tmp_path / "kev.fits", *_field(), pi=1.2, pi_unit="keV")
    _refused(_run(declared, good["catalog"], tmp_path), "kev.fits", "in keV", "eV")
    values = write_esass_events(tmp_path / "vals.fits", *_field(),
                                pi=np.linspace(0.3, 9.0, 400), pi_unit=None)
    _refused(_run(values, good["catalog"], tmp_path), "vals.fits", "looks like keV")


def test_a_mass_column_needs_a_unit(good, tmp_path):
    # Rule: a catalogue mass without a declared unit is not guessed: --mass-unit is asked for,
    # and a unit that makes the masses implausible is refused.
    _refused(_run(good["events"], good["catalog"], tmp_path, "--mass-column", "M500"),
             "M500", "declares no unit", "--mass-unit")
    _refused(_run(good["events"], good["catalog"], tmp_path, "--mass-column", "M500",
                  "--mass-unit", "Msun"), "M500", "outside 11-16.5")
    ok = _run(good["events"], good["catalog"], tmp_path, "--mass-column", "M500",
              "--mass-unit", "1e14Msun")
    assert ok.exit_code == 0, ok.output


def test_bad_input_is_one_line_on_stderr(tmp_path):
    # Rule: through the installed command, bad survey input is one line on stderr and exit 1.
    write_esass_events(tmp_path / "kev.fits", *_field(), pi=1.2, pi_unit="keV")
    cat = write_fits_table(tmp_path / "cat.fits", ID=[1], RA=[RA0], DEC=[DEC0], Z=[0.2])
    proc = hpo(tmp_path, "cutouts", "kev.fits", "--catalog", "cat.fits", "-o", "o.h5", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("hpo: error: kev.fits: EVENTS column PI is in keV")
    assert not (tmp_path / "o.h5").exists() and cat.exists()


def test_simulate_events_writes_the_survey_files_and_the_same_data_file(tmp_path):
    # Rule: `hpo simulate --events DIR` writes event files, exposure maps and a catalogue that
    # hpo cutouts reads, and OUT.h5 is byte for byte the file written without --events;
    # a fixture larger than MAX_CLUSTERS is refused before anything is simulated.
    import hashlib

    from hpo.data.sim.simulator import write_mock

    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "a.h5"), "--n", "30", "--seed",
                                      "2", "--quiet", "--events", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    plain = write_mock(tmp_path / "b.h5", 30, 2)
    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "a.h5") == digest(plain)
    files = sorted(p.name for p in (tmp_path / "ev").iterdir())
    assert files == ["catalog.fits", "fixture.json", "tile000_EventList.fits",
                     "tile000_ExposureMap.fits", "tile001_EventList.fits",
                     "tile001_ExposureMap.fits"]
    big = CliRunner().invoke(app, ["simulate", str(tmp_path / "c.h5"), "--n", "5000",
                                   "--events", str(tmp_path / "ev2")])
    _refused(big, "at most 2000 clusters")
    assert not (tmp_path / "c.h5").exists()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cutouts_never_write_over_an_input(good, tmp_path):
    # Rule: -o naming the catalogue, an event file or an exposure map is refused in one line,
    # even with --overwrite, and that input is left byte for byte as it was.
    image = fits.PrimaryHDU(np.full((300, 300), 500.0, np.float32), cutout_wcs(RA0, DEC0, 300, 8).to_header())
    image.writeto(tmp_path / "exp.fits")
    for target in ("cat.fits", "ev.fits", "exp.fits"):
        before = (tmp_path / target).read_bytes()
        result = CliRunner().invoke(app, [
            "cutouts", str(good["events"]), "--catalog", str(good["catalog"]), "--exposure",
            str(tmp_path / "exp.fits"), "-o", str(tmp_path / target), "--overwrite"])
        _refused(result, target, "is an input of this command")
        assert (tmp_path / target).read_bytes() == before
    assert _names(tmp_path) == ["cat.fits", "ev.fits", "exp.fits"]


def test_an_existing_output_is_replaced_only_with_overwrite(good, tmp_path):
    # Rule: an -o that exists (or its OUT.skipped.csv) is refused in one line naming it and
    # --overwrite, untouched; with --overwrite both are replaced.
    (tmp_path / "o.h5").write_text("mine")
    _refused(_run(good["events"], good["catalog"], tmp_path), "o.h5 exists", "--overwrite")
    assert (tmp_path / "o.h5").read_text() == "mine"
    (tmp_path / "o.h5").unlink()
    (tmp_path / "o.skipped.csv").write_text("mine")
    _refused(_run(good["events"], good["catalog"], tmp_path), "o.skipped.csv exists")
    assert not (tmp_path / "o.h5").exists()
    result = _run(good["events"], good["catalog"], tmp_path, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o.skipped.csv").read_text().startswith("cluster_id,")
    assert _names(tmp_path) == ["cat.fits", "ev.fits", "o.h5", "o.skipped.csv"]


@pytest.mark.parametrize("case", ["a folder", "under a file", "in /proc"])
def test_an_output_where_no_file_can_be_is_one_line(good, tmp_path, case):
    # Rule: -o naming a folder, a path under a regular file, or a place no file can be made is
    # one line on stderr naming it, exit 1, no traceback, and no NAME.partial or temporary left.
    (tmp_path / "d").mkdir()
    out = {"a folder": "d", "under a file": "cat.fits/o.h5", "in /proc": "/proc/o.h5"}[case]
    proc = hpo(tmp_path, "cutouts", "ev.fits", "--catalog", "cat.fits", "-o", out, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and out in proc.stderr
    assert _names(tmp_path) == ["cat.fits", "d", "ev.fits"] and _names(tmp_path / "d") == []


def test_a_pixel_of_more_photons_than_an_image_holds_names_the_cluster(good, tmp_path):
    # Rule: a pixel over 65,535 photons in one channel is one line naming the cluster and the
    # output, which is not written: no OUT, no OUT.partial, no OUT.skipped.csv.
    ra, dec = _field()
    n = 70_000
    ev = write_esass_events(tmp_path / "hot.fits", np.r_[ra, np.full(n, RA0)], np.r_[dec, np.full(n, DEC0)],
                            time=np.r_[np.full(ra.size, 500.0), np.linspace(1.0, 999.0, n)])
    result = _run(ev, good["catalog"], tmp_path)
    _refused(result, "cluster 1 (catalogue row 0", "70,000 photons", "65,535", "o.h5 was not written")
    assert _names(tmp_path) == ["cat.fits", "ev.fits", "hot.fits"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_cutouts_that_fail_while_writing_leave_nothing(good, tmp_path, monkeypatch, failure):
    # Rule: Ctrl-C or a full disk after the images are written (here: half of OUT.skipped.csv)
    # leaves neither OUT nor OUT.skipped.csv nor a temporary.
    from hpo.data.survey import cutouts

    def half(path, *args):
        path.write_text("cluster_id,r")
        raise failure(28, "No space left on device", str(path)) if failure is OSError else failure()

    monkeypatch.setattr(cutouts, "write_skipped", half)
    result = _run(good["events"], good["catalog"], tmp_path)
    assert result.exit_code != 0
    if failure is OSError:
        _refused(result, "o.skipped.csv", "No space left on device")
    assert _names(tmp_path) == ["cat.fits", "ev.fits"]
