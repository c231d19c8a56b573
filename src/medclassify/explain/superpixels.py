"""Superpixels for LIME: a compact SLIC-style k-means on (intensity, y, x), written with numpy so no
image-processing dependency is needed. Each pixel is compared only with the centres of the grid
cells around it (the SLIC 2S x 2S window), so a pass costs O(pixels x 9)."""

from __future__ import annotations

import numpy as np


def slic(image: np.ndarray, n_segments: int = 50, compactness: float = 10.0, iterations: int = 5) -> np.ndarray:
    """(H, W, C) uint8 -> (H, W) int labels 0..n-1."""
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    h, w, c = img.shape
    step = max(2, int(np.sqrt(h * w / n_segments)))
    gy, gx = np.meshgrid(np.arange(step // 2, h, step), np.arange(step // 2, w, step), indexing="ij")
    ny, nx = gy.shape
    centres = np.concatenate([img[gy, gx].reshape(-1, c), gy.reshape(-1, 1), gx.reshape(-1, 1)], 1).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    cell = (np.minimum(yy // step, ny - 1) * nx + np.minimum(xx // step, nx - 1)).ravel()
    offsets = [dy * nx + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    cy, cx = np.divmod(cell, nx)
    feats = np.concatenate([img.reshape(-1, c), yy.reshape(-1, 1), xx.reshape(-1, 1)], 1).astype(np.float32)
    scale = np.array([1.0] * c + [compactness / step] * 2, np.float32)
    labels = cell
    for _ in range(iterations):
        best = np.full(h * w, np.inf, np.float32)
        for off, (dy, dx) in zip(offsets, [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]):
            valid = (cy + dy >= 0) & (cy + dy < ny) & (cx + dx >= 0) & (cx + dx < nx)
            cand = np.where(valid, cell + off, cell)
            d = (((feats - centres[cand]) * scale) ** 2).sum(1)
            d[~valid] = np.inf
            better = d < best
            best[better] = d[better]
            labels = np.where(better, cand, labels)
        counts = np.bincount(labels, minlength=len(centres)).astype(np.float32)
        sums = np.stack([np.bincount(labels, feats[:, j], len(centres)) for j in range(feats.shape[1])], 1)
        keep = counts > 0
        centres[keep] = sums[keep] / counts[keep, None]
    _, dense = np.unique(labels, return_inverse=True)
    return dense.reshape(h, w)
