"""Pixel-level helpers shared by the decoders (images, dicom, npz): a base module of the data layer."""

from __future__ import annotations

import numpy as np

# "<file.npz>::<split>::<row>": the virtual path of one image inside a MedMNIST .npz
NPZ_SEPARATOR = "::"


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit or float pixel data to 0..255 by its own range (not by the nominal bit depth,
    which would leave 12-bit scans nearly black)."""
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float32)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((arr - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
