"""Outputs are whole or absent: written under a temporary name, renamed when complete, never over
a file unasked nor over an input, and every refusal is one line naming the path."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hpo.outputs import atomic_outputs
from hpo.outputs import check_outputs
from hpo.outputs import check_writable_folder
from hpo.outputs import OutputError
from hpo.outputs import TEMP_PREFIX


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _one_line(info: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_an_output_is_renamed_into_place_only_when_complete(tmp_path):
    # Rule: while the block runs, only a hidden temporary exists; at its end, only the output.
    out = tmp_path / "sub" / "out.h5"
    with atomic_outputs([out]) as (tmp,):
        assert tmp.parent == out.parent and tmp.name.startswith(TEMP_PREFIX) and tmp.suffix == ".h5"
        tmp.write_bytes(b"data")
        assert not out.exists()
    assert out.read_bytes() == b"data" and _names(out.parent) == ["out.h5"]


def test_an_existing_output_is_refused_and_replaced_only_with_overwrite(tmp_path):
    # Rule: an output that exists is refused with one line naming it and --overwrite, and is left
    # as it was; with overwrite it is replaced.
    out = tmp_path / "out.csv"
    out.write_text("mine\n")
    with pytest.raises(OutputError) as info:
        with atomic_outputs([out]) as (tmp,):
            tmp.write_text("new\n")
    _one_line(info, str(out), "exists", "--overwrite")
    assert out.read_text() == "mine\n" and _names(tmp_path) == ["out.csv"]
    with atomic_outputs([out], overwrite=True) as (tmp,):
        tmp.write_text("new\n")
    assert out.read_text() == "new\n" and _names(tmp_path) == ["out.csv"]


def test_an_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path):
    # Rule: an output naming one of the command's inputs (the same path, another spelling of it,
    # a symbolic or a hard link to it) is always refused, and the input is untouched.
    catalog = tmp_path / "survey" / "catalog.fits"
    catalog.parent.mkdir()
    catalog.write_bytes(b"FITS")
    (tmp_path / "link.fits").symlink_to(catalog)
    os.link(catalog, tmp_path / "hard.fits")
    for spelling in [catalog, tmp_path / "survey" / ".." / "survey" / "catalog.fits",
                     tmp_path / "link.fits", tmp_path / "hard.fits"]:
        with pytest.raises(OutputError) as info:
            check_outputs([spelling], inputs=[catalog], overwrite=True)
        _one_line(info, str(spelling), "input")
    assert catalog.read_bytes() == b"FITS"


@pytest.mark.parametrize("case", ["a folder", "under a file", "trailing slash", "in /proc"])
def test_an_output_where_no_file_can_be_is_one_line_and_leaves_nothing(tmp_path, case):
    # Rule: an output that is a folder, lies under a regular file, names a folder, or sits where
    # no file can be created is refused before anything is written, in one line naming the path.
    (tmp_path / "dir").mkdir()
    (tmp_path / "afile").write_text("keep\n")
    out = {"a folder": tmp_path / "dir", "under a file": tmp_path / "afile" / "x" / "out.h5",
           "trailing slash": f"{tmp_path}/new/", "in /proc": "/proc/hpo-test/out.h5"}[case]
    with pytest.raises(OutputError) as info:
        with atomic_outputs([out], overwrite=True):
            raise AssertionError("the block must not run")
    _one_line(info, str(out).rstrip("/"))
    assert _names(tmp_path) == ["afile", "dir"] and _names(tmp_path / "dir") == []
    assert (tmp_path / "afile").read_text() == "keep\n"


def test_a_file_in_proc_itself_is_one_line():
    # Rule: a folder that exists but takes no new file (/proc) is one line naming the output.
    with pytest.raises(OutputError) as info:
        with atomic_outputs(["/proc/out.h5"]):
            raise AssertionError("the block must not run")
    _one_line(info, "/proc/out.h5", "cannot create a file in /proc")


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_nothing_new(tmp_path, failure):
    # Rule: an error or Ctrl-C after some bytes are written leaves neither the output, nor a
    # temporary, nor the folders created for it; an older file of that name stays as it was.
    out = tmp_path / "a" / "b" / "out.h5"
    with pytest.raises(type(failure)):
        with atomic_outputs([out]) as (tmp,):
            tmp.write_bytes(b"half")
            raise failure
    assert _names(tmp_path) == []
    old = tmp_path / "old.h5"
    old.write_bytes(b"old")
    with pytest.raises(type(failure)):
        with atomic_outputs([old], overwrite=True) as (tmp,):
            tmp.write_bytes(b"half")
            raise failure
    assert old.read_bytes() == b"old" and _names(tmp_path) == ["old.h5"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_write_error_is_one_line_naming_the_output(tmp_path, code):
    # Rule: the disk filling up (or turning read-only, or refusing) while an output is written is
    # one line naming the output and the reason; no temporary is left.
    out = tmp_path / "out.h5"
    with pytest.raises(OutputError) as info:
        with atomic_outputs([out]) as (tmp,):
            tmp.write_bytes(b"half")
            raise OSError(code, os.strerror(code), str(tmp))
    _one_line(info, str(out), os.strerror(code))
    assert _names(tmp_path) == []


def test_an_error_about_an_input_is_not_taken_for_the_output(tmp_path):
    # Rule: an OSError naming another file (an input read inside the block) passes unchanged.
    with pytest.raises(FileNotFoundError):
        with atomic_outputs([tmp_path / "out.h5"]):
            open(tmp_path / "missing.fits")  # noqa: SIM115
    assert _names(tmp_path) == []


def test_several_outputs_appear_together_or_not_at_all(tmp_path, monkeypatch):
    # Rule: a multi-file output (a FITS and a CSV) is renamed together: if the second rename
    # fails, the first is undone, and a file it had replaced is restored.
    fits, csv = tmp_path / "z.fits", tmp_path / "z.csv"
    fits.write_text("old fits\n")
    real_replace = os.replace

    def failing(src, dst):
        if str(dst).endswith(".csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OutputError) as info:
        with atomic_outputs([fits, csv], overwrite=True) as (tf, tc):
            tf.write_text("new fits\n")
            tc.write_text("new csv\n")
    _one_line(info, str(csv))
    assert fits.read_text() == "old fits\n" and _names(tmp_path) == ["z.fits"]
    monkeypatch.setattr(os, "replace", real_replace)
    with atomic_outputs([fits, csv], overwrite=True) as (tf, tc):
        tf.write_text("new fits\n")
        tc.write_text("new csv\n")
    assert fits.read_text() == "new fits\n" and _names(tmp_path) == ["z.csv", "z.fits"]


def test_one_refused_output_of_several_writes_none(tmp_path):
    # Rule: a pair one of whose members is refused (a folder named z.fits) leaves the other absent.
    (tmp_path / "z.fits").mkdir()
    with pytest.raises(OutputError) as info:
        with atomic_outputs([tmp_path / "z.fits", tmp_path / "z.csv"]):
            raise AssertionError("the block must not run")
    _one_line(info, "z.fits", "is a folder")
    assert _names(tmp_path) == ["z.fits"]


def test_an_output_that_appears_meanwhile_is_not_overwritten(tmp_path):
    # Rule: a file created at the output's path while the command ran is kept, and the new
    # output is dropped, unless overwrite was given.
    out = tmp_path / "out.h5"
    with pytest.raises(OutputError) as info:
        with atomic_outputs([out]) as (tmp,):
            tmp.write_bytes(b"new")
            out.write_bytes(b"theirs")
    _one_line(info, str(out), "--overwrite")
    assert out.read_bytes() == b"theirs" and _names(tmp_path) == ["out.h5"]


def test_outputs_get_the_usual_permissions(tmp_path):
    # Rule: an output's mode is what the umask gives a new file, not a temporary file's 0600.
    out = tmp_path / "out.txt"
    old = os.umask(0o022)
    try:
        with atomic_outputs([out]) as (tmp,):
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("name", ["blocker/checkpoints", "a\x00b", "x" * 5000])
def test_a_folder_that_cannot_hold_files_is_refused_in_one_line(tmp_path, monkeypatch, name):
    # Bad input: study.checkpoint_dir under a file, with a NUL byte, or a name too long for the
    # file system: one OutputError line naming the option, never a traceback.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(OutputError) as info:
        check_writable_folder(name, option="study.checkpoint_dir")
    assert str(info.value).startswith("study.checkpoint_dir ") and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_a_writable_folder_passes_and_is_left_as_found(tmp_path):
    check_writable_folder(tmp_path / "new" / "deeper", option="study.checkpoint_dir")
    assert list(tmp_path.iterdir()) == []  # the folders it made for the check are gone
    (tmp_path / "kept").mkdir()
    check_writable_folder(tmp_path / "kept", option="study.checkpoint_dir")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not list((tmp_path / "kept").iterdir())


OPEN_AT = """
import sys, time
from pathlib import Path
ready = Path(sys.argv[3])
(ready / sys.argv[4]).touch()
while len(list(ready.iterdir())) < int(sys.argv[5]):  # every process imported: go together
    time.sleep(0.01)
if sys.argv[1] == "optuna":
    import optuna
    from hpo.store.storage import make_storage
    optuna.create_study(study_name="s", storage=make_storage(sys.argv[2]), load_if_exists=True)
else:
    from hpo.tracking import Tracker
    Tracker(sys.argv[2]).check()
"""


@pytest.mark.parametrize("store", ["optuna", "mlflow"])
def test_processes_opening_one_new_sqlite_store_at_once_all_succeed(tmp_path, store):
    # Rule: two `hpo launch`es, or workers starting together, on one new SQLite study storage or
    # MLflow store all get a working store: its tables are created by one of them, not raced by
    # several ("table studies already exists", "index ... already exists"); and no lock file is
    # left beside the store.
    import subprocess
    import sys

    folder, ready = tmp_path / "store", tmp_path / "ready"
    folder.mkdir()
    ready.mkdir()
    url = f"sqlite:///{folder / 'store.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, store, url, str(ready), str(i), "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-1500:] for _, err in outs]
    assert [f.name for f in folder.iterdir()] == ["store.db"]
