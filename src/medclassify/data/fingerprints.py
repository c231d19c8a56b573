"""One pass over every image of a dataset, cached: what the audit and the EDA need of each file
(size, stored mode, grey content, exact and perceptual hashes, thumbnail, intensity statistics).
Cached under <cache>/audit/<key>, keyed like the image cache by the file list (paths, sizes, mtimes),
so a second audit of an unchanged dataset decodes nothing."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..io import OutputError, write_json
from . import hashing
from .cache import cache_entry, cache_root, files_key, map_files, writable_cache_folder
from .images import UnreadableImage, decode, is_gray_content, stored_mode

FINGERPRINT_VERSION = 1
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
    thumbs: np.ndarray  # (n, THUMB, THUMB) uint8
    coefs: np.ndarray  # (n, len(ANGLES), 64) float32
    mean: np.ndarray  # grey mean intensity 0..255
    std: np.ndarray
    hist: np.ndarray  # (n, HIST_BINS) fraction of pixels per grey-level bin
    directory: Path | None = None
    hit: bool = False

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
            return _load(final)
        except (OSError, ValueError, KeyError):
            shutil.rmtree(final, ignore_errors=True)
    writable_cache_folder(final.parent)  # before the pass over every image, not after it
    n = len(paths)
    row = {p: i for i, p in enumerate(paths)}
    fp = Fingerprints(paths, {}, np.zeros(n, np.int32), np.zeros(n, np.int32), ["?"] * n, np.zeros(n, bool),
                      np.zeros(n, np.int8), [""] * n, np.zeros((n, hashing.THUMB, hashing.THUMB), np.uint8),
                      np.zeros((n, len(hashing.ANGLES), hashing.HASH_BITS), np.float32), np.zeros(n, np.float32),
                      np.zeros(n, np.float32), np.zeros((n, HIST_BINS), np.float32))
    transient = False
    for done, (path, info, err, passing) in enumerate(map_files(_one, paths, workers), start=1):
        i = row[path]
        transient |= passing
        if err is not None:
            fp.errors[path] = err
        else:
            fp.width[i], fp.height[i], fp.mode[i], fp.gray[i] = info["width"], info["height"], info["mode"], info["gray"]
            fp.channels[i], fp.exact[i], fp.thumbs[i], fp.coefs[i] = info["channels"], info["exact"], info["thumb"], info["coefs"]
            fp.mean[i], fp.std[i], fp.hist[i] = info["mean"], info["std"], info["hist"]
        if progress:
            progress(done, n)
    if not transient:  # a permission or I/O error may pass: the next audit must look again
        _save(fp, final)
    return fp


_ARRAYS = ("width", "height", "gray", "channels", "thumbs", "coefs", "mean", "std", "hist")


def _save(fp: Fingerprints, final: Path) -> None:
    try:
        with cache_entry(final) as building:
            np.savez(building / "arrays.npz", **{k: getattr(fp, k) for k in _ARRAYS})
            write_json(building / "meta.json", {"version": FINGERPRINT_VERSION, "paths": fp.paths,
                                               "errors": fp.errors, "mode": fp.mode, "exact": fp.exact})
    except OutputError:  # the disk filled up: the fingerprints in memory still serve this audit
        return
    fp.directory = final


def _load(directory: Path) -> Fingerprints:
    meta = json.loads((directory / "meta.json").read_text())
    with np.load(directory / "arrays.npz") as z:
        arrays = {k: z[k] for k in _ARRAYS}
    if len(arrays["width"]) != len(meta["paths"]):
        raise ValueError("fingerprint cache index and arrays disagree")
    return Fingerprints(meta["paths"], meta["errors"], mode=meta["mode"], exact=meta["exact"], directory=directory,
                        hit=True, **arrays)
