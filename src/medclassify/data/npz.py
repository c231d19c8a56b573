"""Reading one image of a MedMNIST .npz by its virtual path (medmnist.py scans the file)."""

from __future__ import annotations

import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from .formats import UnreadableImage
from .pixels import NPZ_SEPARATOR, to_uint8


def virtual_path(npz: Path | str, split: str, row: int) -> str:
    return f"{npz}{NPZ_SEPARATOR}{split}{NPZ_SEPARATOR}{row}"


@lru_cache(maxsize=4)
def _images(npz: str, split: str, mtime_ns: int) -> np.ndarray:
    with np.load(npz, allow_pickle=False) as f:
        return f[f"{split}_images"]


def read_npz_image(path: str) -> np.ndarray:
    try:
        npz, split, row = path.split(NPZ_SEPARATOR)
        images = _images(npz, split, Path(npz).stat().st_mtime_ns)
        arr = images[int(row)]
    except (ValueError, KeyError, IndexError, OSError, zipfile.BadZipFile) as e:
        raise UnreadableImage(path, f"cannot read this image of a MedMNIST .npz ({type(e).__name__}: {e})") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = to_uint8(arr)
    return np.ascontiguousarray(arr)
