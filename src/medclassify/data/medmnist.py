"""MedMNIST .npz files as published (train_images, train_labels, val_*, test_*; any image size).

Every image gets a virtual path "<file.npz>::<split>::<row>" that `images.decode` understands, so the
cache, the audit, splits and run files work on .npz datasets as on folders, without unpacking."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .npz import read_npz_image, virtual_path  # noqa: F401  (read_npz_image: for older callers)
from .sources import SPLITS, DatasetIndex, Record, check_usable, register_file_reader


def _not_medmnist(path: Path, why: str) -> DataError:
    return DataError(f"{path} is not a MedMNIST .npz ({why}).", "pass a MedMNIST .npz as downloaded (train_images, train_labels, ...).")


def _read_arrays(path: Path) -> tuple[set, dict, dict]:
    """Array names, labels and image shapes; a one-line DataError for anything else (pickles are never loaded)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise DataError(f"Cannot read {path} ({e.strerror or e}).", "check the file's permissions.") from None
    if head[:2] != b"PK":
        raise _not_medmnist(path, "not a zip archive of arrays")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            labels = {s: f[f"{s}_labels"] for s in SPLITS if f"{s}_labels" in keys}
            shapes = {s: f[f"{s}_images"].shape for s in SPLITS if f"{s}_images" in keys}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise _not_medmnist(path, "it holds Python objects, which are never loaded") from None
        raise _not_medmnist(path, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise _not_medmnist(path, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'damaged archive'}") from None
    return keys, labels, shapes


def scan_npz(path: Path | str) -> DatasetIndex:
    path = Path(path).resolve()
    keys, labels, shapes = _read_arrays(path)
    if "train" not in shapes or set(shapes) != set(labels):
        raise DataError(f"{path} is not a MedMNIST .npz (arrays: {', '.join(sorted(keys)) or 'none'}).",
                        "it needs train_images and train_labels (and optionally val_*/test_*).")
    records: list[Record] = []
    for split, shape in shapes.items():
        y = np.asarray(labels[split])
        if y.ndim == 2 and y.shape[1] > 1:
            raise DataError(f"{path} has multi-label targets ({y.shape[1]} labels per image, e.g. ChestMNIST).",
                            "medclassify trains single-label classifiers; pick a multi-class MedMNIST dataset.")
        y = y.reshape(-1)
        if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise DataError(f"{path}: {split}_labels holds {y.dtype} values ({', '.join(map(str, y[:3]))}...), not class numbers.",
                            "MedMNIST labels are integers 0..K-1; convert them, or use a folder or labels CSV dataset.")
        if len(shape) < 3:
            raise DataError(f"{path}: {split}_images has shape {shape}, not a stack of 2D images.", "use a MedMNIST .npz as downloaded.")
        if len(y) != shape[0]:
            raise DataError(f"{path}: {split}_images holds {shape[0]} images but {split}_labels {len(y)} labels.",
                            "re-download the file.")
        if len(shape) == 4 and shape[-1] not in (1, 3) or len(shape) > 4:
            raise DataError(f"{path} holds 3D volumes ({split}_images shape {shape}).", "use the 2D MedMNIST datasets.")
        records += [Record(virtual_path(path, split, i), str(int(v)), split) for i, v in enumerate(y)]
    width = len(str(max(int(r.label) for r in records))) if records else 1
    records = [Record(r.path, r.label.zfill(width), r.split) for r in records]  # "02" sorts before "10"
    index = DatasetIndex(str(path), records, sorted({r.label for r in records}), "npz")
    check_usable(index)
    return index


register_file_reader((".npz",), scan_npz)
