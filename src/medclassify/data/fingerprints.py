"""One pass over every image of a dataset, cached: what the audit and the EDA need of each file
(size, stored mode, grey content, exact and perceptual hashes, thumbnail, intensity statistics).
Cached under <cache>/audit/<key>, keyed like the image cache by the file list (paths, sizes, mtimes),
so a second audit of an unchanged dataset decodes nothing. The per-image thumbnails and coefficients
(4 KB an image) are memmaps in that entry, written and read with their pages released, so memory
does not grow with the dataset."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..io import write_json
from . import hashing
from .cache import RELEASE_BYTES, cache_entry, cache_root, files_key, map_files, release_pages, writable_cache_folder
from .images import UnreadableImage, decode, is_gray_content, stored_mode

FINGERPRINT_VERSION = 2  # 2: thumbnails and coefficients as memmapped .npy files
HIST_BINS = 16


@dataclass
class Fingerprints:
    paths: list[str]
    errors: dict[str, str]  # path -> reason, for unreadable files (their rows are zero)
    width: np.ndarray
    height: np.ndarray
    mode: list[str]
    gray: np.ndarray  # bool: single-channel content (even when stored as RGB)
    channels: np.ndarray  # channels of the decoded array: 1 or 3
    exact: list[str]  # SHA-1 of decoded pixels ("" when unreadable)
    thumbs: np.ndarray  # (n, THUMB, THUMB) uint8, memmap
    coefs: np.ndarray  # (n, len(ANGLES), 64) float32, memmap
    mean: np.ndarray  # grey mean intensity 0..255
    std: np.ndarray
    hist: np.ndarray  # (n, HIST_BINS) fraction of pixels per grey-level bin
    directory: Path | None = None
    hit: bool = False
    transient: bool = False  # a file failed for a reason that may pass: the next audit fingerprints again

    @property
    def readable(self) -> np.ndarray:
        return np.array([p not in self.errors for p in self.paths], bool)

    def rows(self, paths: Sequence[str]) -> np.ndarray:
        row = {p: i for i, p in enumerate(self.paths)}
        return np.fromiter((row[p] for p in paths), np.int64, len(paths))


def _one(path: str):
    try:
        arr = decode(path)
    except UnreadableImage as e:
        return path, None, e.reason, e.transient
    except OSError as e:
        return path, None, f"{type(e).__name__}: {e}", True
    except Exception as e:  # a worker must never die on one file
        return path, None, f"{type(e).__name__}: {e}", False
    g = hashing.grey(arr)
    thumb = hashing.thumbnail(g)
    hist = np.bincount(g.ravel() >> (8 - int(np.log2(HIST_BINS))), minlength=HIST_BINS) / g.size
    return path, {
        "width": arr.shape[1], "height": arr.shape[0], "mode": stored_mode(path), "gray": is_gray_content(arr),
        "channels": 1 if arr.ndim == 2 else arr.shape[2], "exact": hashing.exact_hash(arr), "thumb": thumb,
        "coefs": hashing.coefficients(thumb), "mean": float(g.mean()), "std": float(g.std()), "hist": hist,
    }, None, False


def compute_fingerprints(paths: Sequence[str], workers: int | None = None,
                         progress: Callable[[int, int], None] | None = None, root: Path | None = None) -> Fingerprints:
    paths = sorted(set(paths))
    key = files_key(paths, f"fingerprints-v{FINGERPRINT_VERSION}|{hashing.THUMB}|{hashing.ANGLES}")
    final = (root or cache_root()) / "audit" / key
    if (final / "meta.json").is_file():
        try:
            fp = _load(final)
            if not fp.transient:
                return fp
        except (OSError, ValueError, KeyError):
            pass
        shutil.rmtree(final, ignore_errors=True)
    writable_cache_folder(final.parent)  # before the pass over every image, not after it
    n = len(paths)
    row = {p: i for i, p in enumerate(paths)}
    small = {"width": np.zeros(n, np.int32), "height": np.zeros(n, np.int32), "gray": np.zeros(n, bool),
             "channels": np.zeros(n, np.int8), "mean": np.zeros(n, np.float32), "std": np.zeros(n, np.float32),
             "hist": np.zeros((n, HIST_BINS), np.float32)}
    mode, exact, errors = ["?"] * n, [""] * n, {}
    transient = False
    with cache_entry(final) as building:
        thumbs = np.lib.format.open_memmap(building / "thumbs.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, hashing.THUMB, hashing.THUMB))
        coefs = np.lib.format.open_memmap(building / "coefs.npy", mode="w+", dtype=np.float32,
                                          shape=(n, len(hashing.ANGLES), hashing.HASH_BITS))
        per_release = RELEASE_BYTES // (hashing.THUMB ** 2 + len(hashing.ANGLES) * hashing.HASH_BITS * 4)
        for done, (path, info, err, passing) in enumerate(map_files(_one, paths, workers), start=1):
            i = row[path]
            transient |= passing
            if err is not None:
                errors[path] = err
            else:
                mode[i], exact[i], thumbs[i], coefs[i] = info["mode"], info["exact"], info["thumb"], info["coefs"]
                for k, arr in small.items():
                    arr[i] = info[k]
            if done % per_release == 0:
                _release(thumbs, coefs)
            if progress:
                progress(done, n)
        _release(thumbs, coefs)
        del thumbs, coefs
        np.savez(building / "arrays.npz", **small)
        # A permission or I/O error may pass: the entry serves this audit, and the next one looks again.
        write_json(building / "meta.json", {"version": FINGERPRINT_VERSION, "paths": paths, "errors": errors,
                                           "mode": mode, "exact": exact, "transient": transient}, stream=True)
    fp = _load(final)
    fp.hit = False
    if transient:
        fp.directory = None  # not a cache entry: the next audit replaces it
    return fp


def _release(*arrays: np.ndarray) -> None:
    for arr in arrays:
        arr.flush()
        release_pages(arr)


_SMALL = ("width", "height", "gray", "channels", "mean", "std", "hist")


def _load(directory: Path) -> Fingerprints:
    meta = json.loads((directory / "meta.json").read_text())
    if meta.get("version") != FINGERPRINT_VERSION:
        raise ValueError("fingerprint cache of another version")
    with np.load(directory / "arrays.npz") as z:
        arrays = {k: z[k] for k in _SMALL}
    arrays.update({k: np.load(directory / f"{k}.npy", mmap_mode="r") for k in ("thumbs", "coefs")})
    if any(len(a) != len(meta["paths"]) for a in arrays.values()):
        raise ValueError("fingerprint cache index and arrays disagree")
    return Fingerprints(meta["paths"], meta["errors"], mode=meta["mode"], exact=meta["exact"], directory=directory,
                        hit=True, transient=bool(meta.get("transient")), **arrays)
