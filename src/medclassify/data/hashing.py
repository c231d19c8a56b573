"""Image fingerprints and duplicate search.

- Exact: SHA-1 of the decoded pixels (grey content stored as RGB hashes like the grey image), so a
  PNG re-saved as BMP, or one scan copied into two folders, matches.
- Perceptual: a 48x48 grey thumbnail (aspect ratio squashed, so resizing does not matter) is masked to
  its central disk (so the black corners a rotation adds do not matter), and the 64 lowest-frequency
  AC coefficients of its DCT are kept, scaled to unit length (brightness and contrast do not matter).
  The same is done for the thumbnail rotated by each of ANGLES, so a copy rotated by up to 10 degrees
  is within 2 degrees of one stored rotation. Hash bits are the signs of the coefficients minus the
  dataset's mean coefficients: medical images of one kind share most of their low frequencies (every
  chest X-ray looks alike at 48 px), and only the deviations tell two scans apart. The mean is made
  mirror-symmetric, so a horizontal flip negates exactly the coefficients of odd horizontal frequency
  and the mirror's hash is `hash ^ MIRROR_MASK`.
- Candidates from the hashes are screened by the cosine of their mean-free coefficients (cheap), then
  confirmed by the correlation of the thumbnails' disks, the best over the stored rotations and their
  mirrors.

`near_pairs` finds every pair within a Hamming distance by multi-index hashing (4 blocks of 16 bits:
two hashes within distance 4r+3 agree within r bits on at least one block), so 100,000 images never
compare all pairs.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from itertools import combinations, product

import numpy as np
from PIL import Image

THUMB = 48
DISK_RADIUS = 0.40  # fraction of the thumbnail side
ANGLES = (-12, -8, -4, 0, 4, 8, 12)  # rotations stored per image; copies rotated <= 10 deg are within 2 deg
CENTRE = ANGLES.index(0)
HASH_BITS = 64
BLOCKS = 4
BLOCK_BITS = HASH_BITS // BLOCKS
# Defaults measured with benchmarks/audit_planted.py on chest X-rays (the hardest case: all alike).
# Planted copies (all augmentations at once) measured: Hamming <= 4, cosine >= 0.98, correlation
# >= 0.96; distinct chest X-rays: correlation <= 0.94.
MAX_HAMMING = 7
MIN_COSINE = 0.95
MIN_CORRELATION = 0.955


@lru_cache(maxsize=1)
def _lowest_frequencies() -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the 64 lowest-frequency AC coefficients, by u + v then row."""
    cells = sorted(((r + c, r, c) for r in range(12) for c in range(12) if r + c > 0))[:HASH_BITS]
    return np.array([r for _, r, _ in cells]), np.array([c for _, _, c in cells])


@lru_cache(maxsize=1)
def _disk() -> np.ndarray:
    yy, xx = np.mgrid[0:THUMB, 0:THUMB]
    return np.hypot(yy - (THUMB - 1) / 2, xx - (THUMB - 1) / 2) / THUMB <= DISK_RADIUS


ODD_COLUMNS = _lowest_frequencies()[1] % 2 == 1
MIRROR_MASK = int(sum(1 << i for i, odd in enumerate(ODD_COLUMNS) if odd))


def grey(arr: np.ndarray) -> np.ndarray:
    """uint8 grey image (ITU-R 601 luma for colour, by Pillow: several times faster than numpy)."""
    if arr.ndim == 2:
        return arr
    return np.asarray(Image.fromarray(arr).convert("L"))


def exact_hash(arr: np.ndarray) -> str:
    if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
        arr = arr[..., 0]
    h = hashlib.sha1(f"{arr.shape}|{arr.dtype}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def thumbnail(arr: np.ndarray) -> np.ndarray:
    """THUMB x THUMB grey thumbnail (area average, aspect ratio squashed), uint8."""
    return np.asarray(Image.fromarray(grey(arr)).resize((THUMB, THUMB), Image.BOX))


def _rotated(thumb: np.ndarray, angle: float) -> np.ndarray:
    if angle == 0:
        return thumb.astype(np.float32)
    return np.asarray(Image.fromarray(thumb).rotate(angle, resample=Image.BILINEAR)).astype(np.float32)


@lru_cache(maxsize=1)
def _dct_basis() -> np.ndarray:
    """(THUMB*THUMB, 64): the orthonormal 2-D DCT-II basis images of the kept coefficients, so the
    64 coefficients of a thumbnail are one matrix product instead of a full DCT."""
    n = np.arange(THUMB)
    scale = np.where(np.arange(THUMB) == 0, np.sqrt(1 / THUMB), np.sqrt(2 / THUMB))
    basis_1d = scale[:, None] * np.cos(np.pi * (2 * n[None, :] + 1) * np.arange(THUMB)[:, None] / (2 * THUMB))
    rows, cols = _lowest_frequencies()
    return np.stack([np.outer(basis_1d[r], basis_1d[c]).ravel() for r, c in zip(rows, cols)], axis=1).astype(np.float32)


def coefficients(thumb: np.ndarray) -> np.ndarray:
    """(len(ANGLES), 64) float32: unit-length low-frequency DCT coefficients of each rotation's disk
    (outside the disk: the disk's mean, so rotation corners add nothing)."""
    disk = _disk()
    stack = np.stack([_rotated(thumb, angle) for angle in ANGLES])
    means = stack[:, disk].mean(axis=1)
    stack[:, ~disk] = means[:, None]
    # einsum, not @: a matrix this small is slower through a multi-threaded BLAS on a busy machine
    c = np.einsum("ap,pk->ak", stack.reshape(len(ANGLES), -1), _dct_basis())
    norm = np.linalg.norm(c, axis=1, keepdims=True)
    return np.where(norm > 1e-6, c / np.maximum(norm, 1e-6), 0.0).astype(np.float32)


def dataset_mean(coefs: np.ndarray) -> np.ndarray:
    """Mean unrotated coefficients, mirror-symmetric (odd horizontal frequencies zero)."""
    if len(coefs) == 0:
        return np.zeros(HASH_BITS, np.float32)
    mu = coefs[:, CENTRE].mean(axis=0)
    mu[ODD_COLUMNS] = 0.0
    return mu


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(..., 64) bool -> (...) uint64, bit i of the integer = bits[..., i]."""
    packed = np.packbits(bits, axis=-1, bitorder="little")  # byte k holds bits 8k..8k+7, LSB first
    return np.ascontiguousarray(packed).view("<u8")[..., 0].astype(np.uint64)


def perceptual_hashes(coefs: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """(n, len(ANGLES), 64) coefficients -> (n, len(ANGLES)) uint64 hashes."""
    return pack_bits(coefs - mu > 0)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b))


def _masks(bits: int, radius: int) -> np.ndarray:
    out = [0]
    for r in range(1, radius + 1):
        out += [sum(1 << i for i in combo) for combo in combinations(range(bits), r)]
    return np.array(out, dtype=np.uint64)


def near_pairs(queries: np.ndarray, index: np.ndarray | None = None, owner: np.ndarray | None = None,
               max_distance: int = MAX_HAMMING, mirror: bool = True, chunk: int = 500_000, query_chunk: int = 16384):
    """Pairs of images (i < j) whose hashes are within `max_distance` bits.

    `queries[i]` is image i's hash; `index` holds any number of hashes per image (rotations), image
    `owner[k]` for `index[k]` (default: the queries themselves). A query also matches as its mirror.
    Returns (i, j, distance) int64 arrays, each pair once with its smallest distance. Exact for any
    `max_distance`: every block is probed with all keys within radius max_distance // 4. Queries are
    probed `query_chunk` at a time, so the candidate arrays stay small however many images there are."""
    q_all = np.ascontiguousarray(queries, dtype=np.uint64)
    idx = q_all if index is None else np.ascontiguousarray(index, dtype=np.uint64).ravel()
    own = np.arange(len(q_all)) if owner is None else np.asarray(owner, dtype=np.int64).ravel()
    n = len(q_all)
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, empty
    masks = _masks(BLOCK_BITS, max_distance // BLOCKS)
    query_sets = [q_all, q_all ^ np.uint64(MIRROR_MASK)] if mirror else [q_all]
    block = np.uint64((1 << BLOCK_BITS) - 1)
    found_key, found_d = [], []
    for b in range(BLOCKS):
        shift = np.uint64(b * BLOCK_BITS)
        sub = (idx >> shift) & block
        order = np.argsort(sub, kind="stable")
        sorted_sub = sub[order]
        for q, q0 in product(query_sets, range(0, n, query_chunk)):
            qsub = (q[q0 : q0 + query_chunk] >> shift) & block
            for m in masks:
                keys = qsub ^ m
                lo = np.searchsorted(sorted_sub, keys, "left")
                counts = np.searchsorted(sorted_sub, keys, "right") - lo
                ends = np.cumsum(counts)
                start = 0
                while start < len(keys):  # runs of queries with at most `chunk` candidates (alike images crowd a bucket)
                    end = max(start + 1, int(np.searchsorted(ends, ends[start] - counts[start] + chunk, "right")))
                    c = counts[start:end]
                    total = int(c.sum())
                    if total:
                        qi = q0 + start + np.repeat(np.arange(end - start), c)
                        k = order[np.arange(total) + np.repeat(lo[start:end] - np.cumsum(c) + c, c)]
                        tj = own[k]
                        d = hamming(q[qi], idx[k])
                        ok = (d <= max_distance) & (qi != tj)
                        qi, tj, d = qi[ok], tj[ok], d[ok]
                        found_key.append(np.minimum(qi, tj).astype(np.int64) * n + np.maximum(qi, tj))
                        found_d.append(d.astype(np.int64))
                    start = end
            if len(found_key) > 1:  # a pair is found once per rotation, mirror and block: keep each once as we go
                keys, dists = _smallest_per_pair(np.concatenate(found_key), np.concatenate(found_d))
                found_key, found_d = [keys], [dists]
    if not found_key:
        return empty, empty, empty
    keys, dists = _smallest_per_pair(found_key[0], found_d[0])
    return keys // n, keys % n, dists


def _smallest_per_pair(keys: np.ndarray, dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((dists, keys))
    keys, dists = keys[order], dists[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first], dists[first]


def coefficient_cosines(coefs: np.ndarray, mu: np.ndarray, i: np.ndarray, j: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Cosine of image i's mean-free coefficients with image j's, the best over j's stored rotations
    and the mirror. `coefs` may be a memmap: only the rows of each batch of pairs are read."""
    sign = np.where(ODD_COLUMNS, -1.0, 1.0).astype(np.float32)
    out = np.zeros(len(i), np.float32)
    for s in range(0, len(i), batch):
        q, t = _mean_free(coefs[i[s : s + batch], CENTRE], mu), _mean_free(coefs[j[s : s + batch]], mu)
        out[s : s + batch] = np.maximum(np.einsum("bp,bkp->bk", q, t).max(1), np.einsum("bp,bkp->bk", q * sign, t).max(1))
    return out


def _mean_free(c: np.ndarray, mu: np.ndarray) -> np.ndarray:
    a = c - mu
    a /= np.linalg.norm(a, axis=-1, keepdims=True) + 1e-9
    return a


@lru_cache(maxsize=1)
def _rotation_taps() -> tuple[np.ndarray, np.ndarray]:
    """Bilinear sampling of the disk pixels of each stored rotation of a thumbnail and of its mirror:
    (index, weight) arrays of shape (2 * len(ANGLES), 4, P) into the flattened thumbnail (pixels that
    fall outside read 0, like a rotation's black corners)."""
    disk = _disk()
    yy, xx = np.nonzero(disk)
    c = (THUMB - 1) / 2
    idx, wts = [], []
    for mirror in (False, True):
        for angle in ANGLES:
            a = np.deg2rad(angle)  # output pixel (x, y) samples the source at the inverse rotation
            x0, y0 = xx - c, yy - c
            sx = np.cos(a) * x0 - np.sin(a) * y0 + c
            sy = np.sin(a) * x0 + np.cos(a) * y0 + c
            if mirror:
                sx = (THUMB - 1) - sx
            fx, fy = np.floor(sx).astype(int), np.floor(sy).astype(int)
            dx, dy = sx - fx, sy - fy
            taps_i, taps_w = [], []
            for ox, oy, w in ((0, 0, (1 - dx) * (1 - dy)), (1, 0, dx * (1 - dy)), (0, 1, (1 - dx) * dy), (1, 1, dx * dy)):
                px, py = fx + ox, fy + oy
                inside = (px >= 0) & (px < THUMB) & (py >= 0) & (py < THUMB)
                taps_i.append(np.where(inside, py * THUMB + px, 0))
                taps_w.append(np.where(inside, w, 0.0))
            idx.append(taps_i)
            wts.append(taps_w)
    return np.array(idx), np.array(wts, np.float32)


def _standardise(v: np.ndarray) -> np.ndarray:
    v = v - v.mean(axis=-1, keepdims=True)
    sd = np.sqrt((v * v).mean(axis=-1, keepdims=True))
    return np.where(sd > 1e-6, v / np.maximum(sd, 1e-6), 0.0)


def pair_correlations(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, batch: int = 2048) -> np.ndarray:
    """For each pair, the best correlation of thumbnail i's disk with thumbnail j's disk under the
    stored rotations and their mirrors (1.0 for identical content). `thumbs` may be a memmap: only
    the rows of each batch of pairs are read."""
    out = np.zeros(len(i), np.float32)
    if len(i) == 0:
        return out
    idx, wts = _rotation_taps()
    disk = _disk().ravel()
    for s in range(0, len(i), batch):
        a = _standardise(thumbs[i[s : s + batch]].reshape(-1, THUMB * THUMB)[:, disk].astype(np.float32))  # unrotated
        xj = thumbs[j[s : s + batch]].reshape(-1, THUMB * THUMB).astype(np.float32)
        best = np.full(len(a), -1.0, np.float32)
        for k in range(len(idx)):
            v = sum(xj[:, idx[k, t]] * wts[k, t] for t in range(4))
            best = np.maximum(best, (a * _standardise(v)).mean(axis=1))
        out[s : s + batch] = best
    return out
