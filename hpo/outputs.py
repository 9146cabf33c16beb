"""Files a command writes: whole or not at all, never over a file unasked, never over an input.

    with atomic_outputs([out], inputs=[catalog], overwrite=overwrite) as (tmp,):
        write(tmp)            # renamed to `out` when the block ends without an error

Each output is written to a hidden temporary name in its own folder (same file system, so the
rename is atomic) and renamed when the block ends. On any error, KeyboardInterrupt included,
the temporaries and the folders the block created are removed and nothing new is left. The
outputs of one block are renamed together: if one rename fails, those already renamed are put
back as they were (a replaced file restored from a hard link, where the file system has them).

Refused with one line (OutputError) before anything is written: an output that exists, unless
`overwrite`; one that is one of the command's inputs (even with `overwrite`); one that is a
folder, or lies under a file, or in a folder that cannot be created or written to.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from collections.abc import Iterable
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hpo.errors import HpoError

TEMP_PREFIX = ".hpo-tmp-"  # then a random token, a dash and the output's name (keeps its suffix)
# What writing can fail with that is the output's place, not the command's input: one line each.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                errno.EIO, errno.EISDIR, errno.ENOTDIR, errno.ENOENT, errno.ENAMETOOLONG}


class OutputError(HpoError):
    """An output cannot be written where asked: it exists, it is an input, or its place cannot
    hold a file. The message is one line naming the path and the fix."""


def check_outputs(paths: Iterable[str | Path], *, inputs: Iterable[str | Path | None] = (),
                  overwrite: bool = False, option: str = "-o") -> list[Path]:
    """The outputs as Paths, or OutputError for the first that cannot be written; creates nothing.

    Args:
        paths: the files a command is about to write.
        inputs: the files it reads (None entries are skipped); an output that is one of them is
            refused even with `overwrite`.
        overwrite: replace outputs that exist (otherwise refused).
        option: how the command line names the output, for the message ("" for an argument).

    Raises:
        OutputError: an output exists (without `overwrite`), is an input, is a folder, lies
            under a file, or names no file.
    """
    given_paths = [os.fspath(p) for p in paths]
    outs = [Path(p) for p in given_paths]
    ins = [Path(p) for p in inputs if p is not None]
    seen: dict[str, Path] = {}
    for raw, out in zip(given_paths, outs, strict=True):
        first = seen.setdefault(os.path.realpath(out), out)
        if first is not out:
            raise OutputError(f"{_as(option)}{out}: this command would write it twice (also as {first}); "
                              "give another file name")
        if not out.name or out.name in (".", "..") or raw.endswith(("/", os.sep)):
            raise OutputError(f"{_as(option)}{raw}: names a folder, not a file; give a file name")
        for given in ins:
            if _same_file(out, given):
                also = "" if os.path.normpath(out) == os.path.normpath(given) else f" ({given})"
                raise OutputError(f"{_as(option)}{out} is an input of this command{also}; an input is "
                                  "never written over, give another file name")
        if out.is_dir():
            raise OutputError(f"{_as(option)}{out} is a folder; give a file name")
        blocker = _file_above(out)
        if blocker is not None:
            raise OutputError(f"{_as(option)}{out}: {blocker} is a file, not a folder; give another path")
        if os.path.lexists(out) and not overwrite:
            raise OutputError(f"{out} exists; give --overwrite to replace it, or another {option or 'name'}")
    for out in outs:
        for parent in Path(os.path.realpath(out)).parents:
            if str(parent) in seen:
                raise OutputError(f"{_as(option)}{seen[str(parent)]}: this command writes a file there and "
                                  f"also {out} inside it as a folder; give another file name")
    return outs


@contextmanager
def atomic_outputs(paths: Iterable[str | Path], *, inputs: Iterable[str | Path | None] = (),
                   overwrite: bool = False, option: str = "-o") -> Iterator[list[Path]]:
    """Temporary paths to write the outputs to; renamed onto `paths` together when the block ends.

    The temporaries exist (empty) when the block starts, so a place that cannot hold a file
    is refused before any work. Writers that choose a format by suffix (savefig) see the
    output's own suffix.

    Raises:
        OutputError: as check_outputs; a folder or temporary cannot be created; an OSError of
            writing (no space, read-only, permission) inside the block, named by its output;
            an output appeared meanwhile (without `overwrite`); a rename failed.
    """
    outs = check_outputs(paths, inputs=inputs, overwrite=overwrite, option=option)
    made: list[Path] = []  # folders this block created, outermost first
    temps: list[Path] = []
    try:
        for out in outs:
            made += make_folders(out.parent, option=option, out=out)
            temps.append(_create_temp(out, option))
        yield list(temps)
        _rename_all(temps, outs, overwrite, option)
    except BaseException as exc:
        for tmp in temps:
            _remove(tmp)
        remove_empty_folders(made)
        if isinstance(exc, OSError) and not isinstance(exc, HpoError):
            named = _output_of(exc, temps, outs)
            if named is not None:
                raise OutputError(f"{_as(option)}{named}: cannot write it ({_reason(exc)}); nothing "
                                  "was left behind") from None
        raise


def sqlite_file(url: str | None) -> str | None:
    """The file a sqlite:/// URL names (an input a command must not write over); None for others."""
    if not url or not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?")[0]
    return path if path and path != ":memory:" else None


@contextmanager
def one_sqlite_creator(url: str | None) -> Iterator[None]:
    """Inside, no other process opens a store on the SQLite file of `url` through this guard.

    Opening a store creates and migrates its tables (Optuna's and MLflow's alike), and processes
    that open one new file at once (two `hpo launch`es, workers starting together) collide:
    "table studies already exists", "index ... already exists". The lock is held on the file's
    folder, so it leaves no file behind; other URLs, and a folder that cannot be opened (the
    store then says why), are not locked.
    """
    path = sqlite_file(url)
    try:
        fd = None if path is None else os.open(Path(path).parent, os.O_RDONLY)
    except OSError:
        fd = None
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a file system without locks (some network mounts): as before, unguarded
        yield
    finally:
        os.close(fd)  # and the lock with it


def _same_file(out: Path, given: Path) -> bool:
    """Whether `out` names the file `given` names: the same resolved path, or the same inode."""
    try:
        if os.path.realpath(out) == os.path.realpath(given):
            return True
        return out.exists() and given.exists() and os.path.samefile(out, given)
    except OSError:
        return False


def _file_above(out: Path) -> Path | None:
    """The nearest existing ancestor of `out` if it is not a folder (then nothing fits under it)."""
    for parent in [*out.parents, *Path(os.path.abspath(out)).parents]:  # as given, then absolute
        if os.path.lexists(parent):
            return None if parent.is_dir() else parent
    return None


def make_folders(folder: str | Path, *, option: str = "-o", out: str | Path | None = None) -> list[Path]:
    """Creates `folder` and its missing parents; returns those created, outermost first (for
    remove_empty_folders to take back).

    Raises:
        OutputError: one line naming `out` (default `folder`): a file is in the way, or a folder
            cannot be created (permission, read-only, /proc).
    """
    named = folder if out is None else out
    missing = []
    f = Path(os.path.abspath(folder))
    while not f.is_dir():
        if os.path.lexists(f):
            shown = f if Path(folder).is_absolute() else os.path.relpath(f)
            raise OutputError(f"{_as(option)}{named}: {shown} is a file, not a folder; give another path")
        missing.append(f)
        f = f.parent
    created: list[Path] = []
    try:
        for f in reversed(missing):
            f.mkdir()
            created.append(f)
    except OSError as exc:
        remove_empty_folders(created)
        raise OutputError(f"{_as(option)}{named}: cannot create the folder {f} ({_reason(exc)})") from None
    return created


def check_writable_folder(folder: str | Path, *, option: str) -> None:
    """Refuses a folder this process cannot write files in: it creates the folder (and its
    missing parents), writes and removes a file there, then removes the folders it created.

    Raises:
        OutputError: one line naming `option` and `folder` and why.
    """
    try:
        created = make_folders(folder, option=option)
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte: no folder can be made
        why = _reason(exc) if isinstance(exc, OSError) else str(exc)
        raise OutputError(f"{_as(option)}{str(folder)[:200]!r}: not a usable folder ({why})") from None
    try:
        _remove(_create_temp(Path(folder) / "write-check", option))
    finally:
        remove_empty_folders(created)


def remove_empty_folders(folders: list[Path]) -> None:
    """Removes those of `folders` (outermost first, as make_folders returns them) that are
    empty, innermost first; a folder with anything in it stays."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass


def _create_temp(out: Path, option: str) -> Path:
    """An empty file beside `out` under a hidden name of its own (mode as umask allows)."""
    tmp = out.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{out.name}")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as exc:
        raise OutputError(f"{_as(option)}{out}: cannot create a file in {out.parent or '.'} "
                          f"({_reason(exc)})") from None
    return tmp


def _rename_all(temps: list[Path], outs: list[Path], overwrite: bool, option: str) -> None:
    """Each temporary onto its output; all of them or, after a failure, none (as they were)."""
    done: list[tuple[Path, Path | None]] = []  # (output, hard link to the file it replaced)
    try:
        for tmp, out in zip(temps, outs, strict=True):
            if os.path.lexists(out) and not overwrite:
                raise OutputError(f"{out} appeared while this command ran; nothing was written "
                                  f"(give --overwrite to replace it, or another {option or 'name'})")
            backup = _link_aside(out) if os.path.lexists(out) else None
            try:
                os.replace(tmp, out)
            except OSError as exc:
                if backup is not None:
                    _remove(backup)
                raise OutputError(f"{_as(option)}{out}: cannot write it ({_reason(exc)})") from None
            done.append((out, backup))
    except BaseException:
        for out, backup in reversed(done):
            if backup is None:
                _remove(out)
                continue
            try:
                os.replace(backup, out)
            except OSError:
                _remove(backup)
        raise
    for _, backup in done:
        if backup is not None:
            _remove(backup)


def _link_aside(out: Path) -> Path | None:
    """A hard link to the file `out` names, to restore it from; None where none can be made."""
    aside = out.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{out.name}.old")
    try:
        os.link(out, aside, follow_symlinks=False)
    except OSError:
        return None
    return aside


def _output_of(exc: OSError, temps: list[Path], outs: list[Path]) -> str | None:
    """The output an OSError of writing concerns: the one whose temporary it names, or (a writer
    that names no file, such as HDF5) the only output; None for an error about something else."""
    names = {os.path.abspath(t): o for t, o in zip(temps, outs, strict=False)}
    for name in (exc.filename, getattr(exc, "filename2", None)):
        if name is not None and os.path.abspath(os.fsdecode(name)) in names:
            return str(names[os.path.abspath(os.fsdecode(name))])
    if exc.filename is None and exc.errno in WRITE_ERRNOS and outs:
        return ", ".join(map(str, outs))
    return None


def _as(option: str) -> str:
    """How a message starts: the option that named the output ("-o "), or nothing."""
    return f"{option} " if option else ""


def _reason(exc: OSError) -> str:
    """What went wrong, in the system's words (one line, no path)."""
    if exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
