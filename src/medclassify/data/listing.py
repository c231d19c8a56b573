"""Walking folders of images: every file found, and every entry that cannot be used (dangling
symbolic link, symbolic link loop, unreadable folder) listed with its reason instead of dropped.

Directory links are followed once; a link back to a folder above it is a loop, not an endless walk."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .formats import is_candidate

DANGLING = "dangling symbolic link"
LOOP = "symbolic link loop"


def entry_problem(path: Path | str, e: OSError) -> str:
    """The reason an entry of a folder cannot be followed, from the OSError of stat()."""
    if os.path.islink(path):
        if e.errno == errno.ELOOP:
            return LOOP
        if isinstance(e, FileNotFoundError):
            try:
                return f"{DANGLING} (to {os.readlink(path)})"
            except OSError:
                return DANGLING
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot read ({e.strerror or e})"


def folder_problem(folder: Path | str, e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "unreadable folder (permission denied)"
    return f"unreadable folder ({e.strerror or e})"


def list_entries(folder: Path | str) -> list[os.DirEntry]:
    """The folder's entries sorted by name; raises OSError when it cannot be listed."""
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def walk_files(folder: Path | str) -> tuple[list[Path], dict[str, str]]:
    """Every regular file below `folder` (hidden names left out), sorted; and {path: reason} for
    the entries that could not be followed. Raises OSError when `folder` itself cannot be listed."""
    files: list[Path] = []
    skipped: dict[str, str] = {}
    root = Path(folder)
    st = os.stat(root)
    _walk(root, list_entries(root), [(st.st_dev, st.st_ino)], files, skipped)
    return files, skipped


def _walk(folder: Path, entries: list[os.DirEntry], ancestors: list[tuple[int, int]],
          files: list[Path], skipped: dict[str, str]) -> None:
    for e in entries:
        if e.name.startswith("."):
            continue
        path = folder / e.name
        try:
            st = os.stat(path)
        except OSError as err:
            skipped[str(path)] = entry_problem(path, err)
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                skipped[str(path)] = f"{LOOP} (to the folder {os.path.realpath(path)} above it)"
                continue
            try:
                sub = list_entries(path)
            except OSError as err:
                skipped[str(path)] = folder_problem(path, err)
                continue
            _walk(path, sub, ancestors + [key], files, skipped)
        elif stat.S_ISREG(st.st_mode):
            files.append(path)
        else:
            skipped[str(path)] = "not a regular file (a device, socket or pipe)"


def sort_walk(files: list[Path], skipped: dict[str, str]) -> tuple[list[Path], list[Path], dict[str, str], list[str]]:
    """(image files, other files, {path: reason} of image-named entries and folders that could not
    be read, other-named entries that could not be read) by the one name rule, formats.is_candidate."""
    images = [f for f in files if is_candidate(f)]
    others = [f for f in files if not is_candidate(f)]
    bad = {p: r for p, r in skipped.items() if is_candidate(p) or not _is_file_reason(r)}
    return images, others, bad, [p for p in skipped if p not in bad]


def list_image_files(folder: Path | str) -> tuple[list[str], dict[str, str]]:
    """Image files below `folder` by name (formats.is_candidate), and {path: reason} for image-named
    entries and sub-folders that could not be read. Raises OSError when `folder` cannot be listed."""
    images, _, bad, _ = sort_walk(*walk_files(folder))
    return [str(f) for f in images], bad


def _is_file_reason(reason: str) -> bool:
    """Whether the entry was a file-level problem (so its name decides if it concerns an image)."""
    return not reason.startswith(("unreadable folder", f"{LOOP} (to the folder"))
