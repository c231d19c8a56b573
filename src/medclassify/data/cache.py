"""Decode-once image cache: every image of a dataset decoded, converted and resized once into a
uint8 memmap (N, H, W, C) on disk, keyed by the file list (paths, sizes, mtimes), the image size,
the resize mode and the channel count. Later epochs and later runs read the memmap."""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import signal
import shutil
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..io import OutputError, atomic_dir, check_writable_folder, remove_stale_partials, write_json
from .images import UnreadableImage, load_for_model
from .images import storage_path

CACHE_VERSION = 1
RELEASE_BYTES = 32 << 20  # memmap pages read or written between two releases (see release_pages)


CACHE_FIX = "set MEDCLASSIFY_CACHE to a writable folder with free space (e.g. export MEDCLASSIFY_CACHE=/tmp/medclassify-cache)."


def cache_root() -> Path:
    return Path(os.environ.get("MEDCLASSIFY_CACHE", Path.home() / ".cache" / "medclassify"))


def files_key(paths: Sequence[str], salt: str) -> str:
    """Key of a file list: every path with its size and mtime, so any changed file changes the key."""
    h = hashlib.sha1(salt.encode())
    for p in paths:
        try:
            st = os.stat(storage_path(p))
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{p}|missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:20]


def writable_cache_folder(folder: Path) -> Path:
    """The cache folder exists (or is created) and can be written, else one line naming it and the fix.
    Checked only when an entry must be built: a read-only cache that already holds it still serves."""
    try:
        check_writable_folder(folder, what="cache")
        folder.mkdir(parents=True, exist_ok=True)
    except (OutputError, OSError) as e:
        reason = e.message if isinstance(e, OutputError) else (e.strerror or str(e))
        raise OutputError(f"The image cache {folder} cannot be written ({reason.rstrip('.')}).", CACHE_FIX) from None
    return folder


@contextlib.contextmanager
def cache_entry(final: Path) -> Iterator[Path]:
    """Build a cache entry in a temporary folder beside `final` and move it into place. Temporary
    folders of killed builds (dead PIDs) are removed first, so a SIGKILL leaves nothing for ever.
    When another process finished the same entry first, its entry is kept and ours dropped."""
    writable_cache_folder(final.parent)
    remove_stale_partials(final.parent)
    try:
        with atomic_dir(final) as building:
            yield building
    except OutputError as e:
        if final.is_dir():
            return
        raise OutputError(e.message, CACHE_FIX) from None


def cache_key(paths: Sequence[str], size: int, resize_mode: str, channels: int) -> str:
    return files_key(paths, f"v{CACHE_VERSION}|{size}|{resize_mode}|{channels}")


def _default_signals() -> None:
    # Workers must die on the pool's SIGTERM; a handler inherited from the parent (training turns
    # SIGTERM into an exception there) left a worker blocked on the task queue and the pool hung.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def map_files(fn: Callable, jobs: Sequence, workers: int | None = None) -> Iterator:
    """fn(job) for every job, in forked worker processes when there are enough jobs; any order."""
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers > 1 and len(jobs) > 64:
        with get_context("fork").Pool(workers, initializer=_default_signals) as pool:
            yield from pool.imap_unordered(fn, jobs, chunksize=16)
    else:
        yield from map(fn, jobs)


def release_pages(arr: np.ndarray) -> None:
    """Unmap the pages of a memmap that this process has touched. Pages of a mapped file count in the
    process's RSS until the kernel wants them back, so a pass over a 100,000-image cache would show
    the whole cache as resident; released, they stay in the page cache and the next read maps them
    again. Written (dirty) pages of the shared mapping are kept by the page cache and written back."""
    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


class PagedRows:
    """Row reads (`rows[indices]`, `rows[indices, ...]`) from a memmapped .npy that leave nothing
    mapped: integer rows are read with pread into a fresh array, so the resident set is the batch,
    not the file (a mapped read of one random row maps the 64 KB around it, and those pages stay
    counted in RSS). Other indexes read the memmap and release its pages every RELEASE_BYTES.
    Safe across threads."""

    def __init__(self, images: np.ndarray):
        self.images = images
        self.shape, self.dtype = images.shape, images.dtype
        self._row_bytes = int(np.prod(images.shape[1:], dtype=np.int64)) * images.dtype.itemsize
        self._fd = None
        if isinstance(getattr(images, "base", None), mmap.mmap) and images.flags.c_contiguous and getattr(images, "filename", None):
            with contextlib.suppress(OSError):  # the file is gone (the entry was replaced): read the mapping
                self._fd = os.open(images.filename, os.O_RDONLY)
        self._read = 0
        self._lock = threading.Lock()

    def __del__(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> np.ndarray:
        rows, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        rows = np.asarray(rows)
        if self._fd is not None and rows.ndim == 1 and rows.dtype.kind in "iu":
            out = self._pread(rows)
            return out[(slice(None),) + rest] if rest else out
        out = np.asarray(self.images[index])
        with self._lock:
            self._read += max(out.nbytes, np.size(rows) * 16 * mmap.PAGESIZE)  # a fault maps up to 16 pages
            if self._read >= RELEASE_BYTES:
                self._read = 0
                release_pages(self.images)
        return out

    def _pread(self, rows: np.ndarray) -> np.ndarray:
        n = len(self.images)
        rows = np.where(rows < 0, rows + n, rows).astype(np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        if not len(rows):
            return out
        flat = out.reshape(len(rows), -1).view(np.uint8)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # runs of consecutive rows: one read each
        for a, b in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(rows)].tolist()):
            want = (b - a) * self._row_bytes
            got = os.preadv(self._fd, [memoryview(flat[a:b]).cast("B")], self.images.offset + int(rows[a]) * self._row_bytes)
            if got != want:
                raise OSError(f"short read from {self.images.filename} ({got} of {want} bytes)")
        return out


@dataclass
class ImageCache:
    directory: Path
    paths: list[str]
    images: np.ndarray  # memmap (N, H, W, C) uint8; rows of unreadable files are zero
    errors: dict[str, str]  # path -> reason, for files that could not be decoded
    build_seconds: float  # 0 when loaded from disk
    row_of: dict[str, int]
    # Errors that may pass without the file changing (permission denied, I/O): retried on every load.
    transient: list[str] = field(default_factory=list)

    def rows(self, paths: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.row_of[p] for p in paths), dtype=np.int64, count=len(paths))

    def reader(self) -> PagedRows:
        """`images` for reading rows in batches with a bounded resident set (see PagedRows)."""
        return PagedRows(self.images)

    @property
    def hit(self) -> bool:
        return self.build_seconds == 0.0


def _decode_one(args):
    path, size, resize_mode, channels = args
    try:
        return path, load_for_model(path, size, resize_mode, channels), None, False
    except UnreadableImage as e:
        return path, None, e.reason, e.transient
    except OSError as e:  # the OS failed a read: not the file's content, so not for keeps
        return path, None, f"{type(e).__name__}: {e}", True
    except Exception as e:  # a worker must never die on one file
        return path, None, f"{type(e).__name__}: {e}", False


def build_cache(
    paths: Sequence[str],
    size: int,
    resize_mode: str,
    channels: int,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    root: Path | None = None,
) -> ImageCache:
    paths = list(paths)
    key = cache_key(paths, size, resize_mode, channels)
    root = root or cache_root()
    final = root / key
    if (final / "index.json").is_file():
        try:
            return retry_transient(_open(final), size, resize_mode, channels)
        except (OSError, ValueError, KeyError):
            shutil.rmtree(final, ignore_errors=True)  # a damaged entry is rebuilt
    t0 = time.perf_counter()
    with cache_entry(final) as building:
        arr = np.lib.format.open_memmap(building / "images.npy", mode="w+", dtype=np.uint8, shape=(len(paths), size, size, channels))
        errors: dict[str, str] = {}
        transient: list[str] = []
        row_of = {p: i for i, p in enumerate(paths)}
        jobs = [(p, size, resize_mode, channels) for p in paths]
        done = 0
        per_release = max(1, RELEASE_BYTES // (size * size * channels))
        for path, img, err, passing in map_files(_decode_one, jobs, workers):
            done = _store(arr, row_of, errors, path, img, err, done, len(paths), progress)
            if passing:
                transient.append(path)
            if done % per_release == 0:
                arr.flush()
                release_pages(arr)
        arr.flush()
        del arr
        write_json(building / "index.json", {"version": CACHE_VERSION, "paths": paths, "errors": errors,
                                            "transient": sorted(transient),
                                            "size": size, "resize": resize_mode, "channels": channels}, stream=True)
    cache = _open(final)
    cache.build_seconds = time.perf_counter() - t0
    return cache


def _store(arr, row_of, errors, path, img, err, done, total, progress):
    if err is None:
        arr[row_of[path]] = img
    else:
        errors[path] = err
    done += 1
    if progress:
        progress(done, total)
    return done


def _open(directory: Path) -> ImageCache:
    meta = json.loads((directory / "index.json").read_text())
    images = np.load(directory / "images.npy", mmap_mode="r")
    paths = meta["paths"]
    if images.shape[0] != len(paths):
        raise ValueError("cache index and array disagree")
    return ImageCache(directory, paths, images, meta["errors"], 0.0, {p: i for i, p in enumerate(paths)},
                      list(meta.get("transient", [])))


def retry_transient(cache: ImageCache, size: int, resize_mode: str, channels: int) -> ImageCache:
    """Decode again the files whose error may have passed (permission denied, I/O error): a file made
    readable again is decoded into its row, and the index no longer lists it."""
    if not cache.transient:
        return cache
    results = [_decode_one((p, size, resize_mode, channels)) for p in cache.transient]
    if all(err is not None and passing and cache.errors.get(p) == err for p, _, err, passing in results):
        return cache  # nothing changed: leave the entry alone
    images = np.load(cache.directory / "images.npy", mmap_mode="r+")
    errors, transient = dict(cache.errors), []
    for path, img, err, passing in results:
        errors.pop(path, None)
        if err is None:
            images[cache.row_of[path]] = img
        else:
            errors[path] = err
            if passing:
                transient.append(path)
    images.flush()
    del images
    meta = json.loads((cache.directory / "index.json").read_text())
    meta.update(errors=errors, transient=transient)
    write_json(cache.directory / "index.json", meta, stream=True)
    return _open(cache.directory)
