"""Every file and folder medclassify writes goes through here.

One rule for all of them: write under a hidden temporary name in the destination's own folder
(`.NAME.partial-PID`), fsync, then rename into place, and remove the temporary on any failure. A
reader never sees half a file, a full disk never leaves a stray `.tmp`, and a process killed mid-write
leaves only a `.partial-PID` whose PID is dead, which the next writer into that folder removes.

Nothing is ever written over, or deleted, that medclassify did not write: `check_output_file` and
`check_replaceable_dir` refuse, with one line naming the path and the fix, before any work starts.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import MedClassifyError, RunError

PARTIAL = ".partial-"
RUN_MARKER = "run.json"


class OutputError(MedClassifyError):
    """An output location cannot be written (read-only, full, wrong kind, or not ours to replace)."""


def partial_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL}{os.getpid()}")


def _pid_alive(pid: str) -> bool:
    if not pid.isdigit():
        return True  # not a name we made: leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(folder: Path, stem: str | None = None) -> int:
    """Remove `.STEM.partial-PID` (or `STEM.partial-PID`) entries of `folder` whose process is gone.
    Returns how many were removed. `stem=None` matches any name."""
    removed = 0
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if PARTIAL not in name:
            continue
        base, _, pid = name.rpartition(PARTIAL)
        if stem is not None and base.lstrip(".") != stem:
            continue
        if _pid_alive(pid):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        except OSError:
            pass
    return removed


def _describe_os_error(path: Path, e: OSError, what: str = "--out") -> OutputError:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return OutputError(f"No space left on the device while writing {path}.", f"free some disk space or choose another {what}.")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"Cannot write {path}: permission denied (or read-only file system).",
                           f"choose a writable {what}, or fix the folder's permissions.")
    if e.errno == errno.EISDIR:
        return OutputError(f"Cannot write {path}: it is a folder.", f"give a file name, not a folder, as {what}.")
    if e.errno == errno.ENOTDIR:
        return OutputError(f"Cannot write {path}: a part of the path is a file, not a folder.", f"choose another {what}.")
    return OutputError(f"Cannot write {path} ({e.strerror or e}).", f"choose another {what}.")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary_beside(path: Path) -> Path:
    """The folder exists, dead writers' leftovers for this name are gone, and a fresh temporary name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _describe_os_error(path.parent, e) from None
    remove_stale_partials(path.parent, path.name)
    tmp = partial_name(path)
    _remove(tmp)
    return tmp


@contextlib.contextmanager
def _removed_on_failure(tmp: Path, path: Path) -> Iterator[None]:
    """Any failure (or interrupt) removes the temporary; an OSError becomes one line naming `path`."""
    try:
        yield
    except OSError as e:
        _remove(tmp)
        raise _describe_os_error(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`, on any
    failure (or interrupt) it is removed. For writers that need a file name (safetensors, ONNX)."""
    path = Path(path)
    tmp = _temporary_beside(path)
    with _removed_on_failure(tmp, path):
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    # surrogateescape: a file name that is not valid UTF-8 is written back as its own bytes
    return write_bytes(path, text.encode("utf-8", "surrogateescape"))


def write_json(path: str | Path, obj: Any, stream: bool = False) -> Path:
    """Indented JSON; `stream=True`: compact, written piece by piece without the whole text in memory
    (an index of 100,000 paths would otherwise hold several copies of itself while being written)."""
    if not stream:
        return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")

    def dump(tmp: Path) -> None:
        with open(tmp, "w", encoding="ascii") as f:  # json escapes every other character
            json.dump(obj, f, default=str)
            f.write("\n")

    return write_with(path, dump)


def write_csv(path: str | Path, header: list[str], rows: Iterable[Iterable[Any]]) -> Path:
    """Valid CSV whatever the values hold (quotes, commas, newlines): the csv module quotes them."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return write_text(path, buf.getvalue())


def write_with(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` and move the result into place atomically (matplotlib's savefig,
    safetensors' save_file, torch.onnx.export, ...)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """Build a folder under a hidden temporary name and move it into place when the block ends
    without error. `replace=True` swaps out an existing folder (the caller has checked it is ours)."""
    path = Path(path)
    tmp = _temporary_beside(path)
    with _removed_on_failure(tmp, path):
        tmp.mkdir()
        yield tmp
        commit_dir(tmp, path, replace=replace)


def commit_dir(tmp: Path, path: Path, replace: bool = False) -> None:
    """Move a finished temporary folder onto `path`. An existing `path` is first renamed aside, so
    the old content is only deleted once the new one is in place."""
    if path.exists() or path.is_symlink():
        if not replace:
            raise OutputError(f"{path} appeared while it was being written.", "choose another --out.")
        old = path.with_name(f".{path.name}.old{PARTIAL}{os.getpid()}")
        _remove(old)
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def resolved(p: str | Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(p))))


def is_medclassify_dir(path: Path) -> bool:
    """A folder medclassify wrote: a run (run.json with a format_version), a cross-validation folder
    of runs, or another verb's output folder holding its marker file."""
    for marker in (RUN_MARKER, "cv_summary.json", ".medclassify"):
        f = path / marker
        if f.is_file():
            try:
                info = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(info, dict) and ("format_version" in info or info.get("schema", "").startswith("medclassify")
                                           or marker != RUN_MARKER):
                return True
    return False


def check_replaceable_dir(out: str | Path, overwrite: bool, protected: Iterable[str | Path] = (), what: str = "--out") -> None:
    """Refuse, before any work, an output folder that exists and is not ours to replace.

    Without `overwrite`, an existing non-empty folder is refused. With it, only an empty folder or a
    folder medclassify wrote may be replaced, and never one that is, holds, or lies inside one of
    the `protected` inputs (the dataset)."""
    out_r = resolved(out)
    for p in protected:
        p_r = resolved(p)
        if out_r == p_r or _inside(p_r, out_r):
            raise OutputError(f"{what} {out} is {'the dataset' if out_r == p_r else 'a folder that holds the dataset'} {p}.",
                              f"choose an {what} folder outside the dataset.")
        if _inside(out_r, p_r):
            raise OutputError(f"{what} {out} lies inside the dataset {p}.", f"choose an {what} folder outside the dataset.")
    path = Path(out)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OutputError(f"{what} {out} exists and is not a folder.", f"choose another {what}.")
    if not path.exists():
        return
    try:
        empty = not any(path.iterdir())
    except OSError as e:
        raise _describe_os_error(path, e) from None
    if empty:
        return
    if not overwrite:
        raise OutputError(f"Output folder {out} already exists and is not empty.", f"choose another {what} or pass --overwrite.")
    if not is_medclassify_dir(path):
        raise OutputError(f"{what} {out} holds files that medclassify did not write; --overwrite only replaces a medclassify run.",
                          f"choose another {what}, or move that folder's files away yourself.")


def _refuse_inside(path: Path, protected_dirs: Iterable[str | Path], what: str, noun: str) -> None:
    p_r = resolved(path)
    for d in protected_dirs:
        d_r = resolved(d)
        if p_r == d_r or _inside(p_r, d_r):
            raise OutputError(f"{what} {path} lies inside {d}, whose files medclassify must not change.",
                              f"choose an {what} {noun} outside {d}.")


def check_output_file(out: str | Path, inputs: Iterable[str | Path] = (), protected_dirs: Iterable[str | Path] = (),
                      overwrite_ok: bool = True, what: str = "--out") -> Path:
    """Check, before the work starts, that `out` can be written as a file: its folder exists or can
    be made and is writable, it is not a folder, not one of the `inputs`, and not inside one of the
    `protected_dirs` (a run's own folder, a dataset). Returns the path."""
    out = Path(out)
    out_r = resolved(out)
    for p in inputs:
        if resolved(p) == out_r:
            raise OutputError(f"{what} {out} is one of the inputs.", f"choose another {what} file name.")
    _refuse_inside(out, protected_dirs, what, "path")
    if out.is_dir():
        raise OutputError(f"{what} {out} is a folder.", f"give a file name, e.g. {out / 'predictions.csv'}.")
    if out.exists() and not overwrite_ok:
        raise OutputError(f"{what} {out} already exists.", f"choose another {what}, or remove it first.")
    check_writable_folder(out.parent if str(out.parent) else Path("."), what=what)
    return out


def check_output_folder(folder: str | Path, inputs: Iterable[str | Path] = (), protected_dirs: Iterable[str | Path] = (),
                        files: Iterable[str | Path] = (), what: str = "--out") -> Path:
    """Check, before the work starts, that `folder` can take output files: it is not a file, not (inside)
    one of the `protected_dirs`, can be created or written, and none of the `files` to be written in it
    is one of the `inputs` or an existing folder. Returns the folder."""
    folder = Path(folder)
    _refuse_inside(folder, protected_dirs, what, "folder")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder.", f"give a folder as {what}, or remove that file.")
    ins = {resolved(p) for p in inputs}
    for f in files:
        if resolved(f) in ins:
            raise OutputError(f"{what} {folder} would overwrite the input {f}.", f"choose another {what} folder.")
        if Path(f).is_dir():
            raise OutputError(f"Cannot write {f}: it is a folder.", f"choose another {what} folder.")
    return check_writable_folder(folder, what=what)


def check_writable_folder(folder: str | Path, what: str = "--out") -> Path:
    """The folder exists (or can be made) and a file can be created in it: checked by creating one."""
    folder = Path(folder)
    probe_from = folder
    while not probe_from.exists():
        if probe_from.parent == probe_from:
            break
        probe_from = probe_from.parent
    if probe_from.exists() and not probe_from.is_dir():
        raise OutputError(f"Cannot write under {folder}: {probe_from} is a file, not a folder.", f"choose another {what}.")
    try:
        with tempfile.NamedTemporaryFile(dir=probe_from, prefix=f".medclassify-probe{PARTIAL}{os.getpid()}-"):
            pass
    except OSError as e:
        raise _describe_os_error(folder, e, what) from None
    return folder


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (weights, exported models and guards are checked by it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json_object(path: Path, what: str, fix: str) -> dict:
    """A JSON file that must hold an object: any other content is a RunError naming the file and fix."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} is missing.", fix) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{path} is not a readable {what} ({type(e).__name__}: {str(e).splitlines()[0][:100]}).", fix) from None
    if not isinstance(info, dict):
        raise RunError(f"{path} is not a {what} (it holds a JSON {type(info).__name__}, not an object).", fix)
    return info
