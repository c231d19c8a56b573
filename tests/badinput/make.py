"""Tiny bad (and oddly valid) inputs, generated on the fly: images, DICOM, .npz, CSVs, datasets, runs."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32  # seed_cnn's smallest input
_JUNK = np.random.default_rng(11)


def junk(n: int) -> bytes:
    """Random bytes, the same on every run (the corpus is built in one order at import)."""
    return _JUNK.bytes(n)


def grey(path: Path, value: int | None = None, size: int = SIZE, seed: int = 0) -> Path:
    """A distinct small grey PNG/JPEG/BMP/TIFF (by suffix); distinct pixels keep the duplicate audit quiet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(f"{path.name}/{seed}".encode()))
    arr = rng.integers(0, 255, (size, size), dtype=np.uint8) if value is None else np.full((size, size), value, np.uint8)
    Image.fromarray(arr).save(path)
    return path


def png_bytes(mode: str = "L", size: tuple[int, int] = (SIZE, SIZE)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 100).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with one tiny IDAT: the header lies about the pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b"")


def jpeg_with_header(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 frame header is patched to claim width x height."""
    buf = io.BytesIO()
    Image.new("L", (16, 16), 90).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def image_bytes(fmt: str, mode: str = "L", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (SIZE, SIZE), 120 if mode in ("L", "P", "1") else (120,) * len(mode)).save(buf, fmt, **save)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    img = Image.fromarray(np.tile(np.arange(48, dtype=np.uint8) * 5, (SIZE, 1)))  # 48 wide x 32 high
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def sixteen_bit_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 60)).save(buf, "PNG")
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def dicom(path: Path, rows: int = SIZE, cols: int = SIZE, frames: int | None = None, pixels: bool = True,
          raw: dict | None = None) -> Path:
    """A small 8-bit MONOCHROME2 DICOM. `raw` maps a keyword to a value written without validation
    (e.g. WindowCenter='abc'), the way a hand-edited or broken exporter's file looks."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    if pixels:
        n = min(rows * cols * (frames or 1), 4 * SIZE * SIZE)  # a huge header keeps its few real bytes
        ds.PixelData = (np.arange(n) % 251).astype(np.uint8).tobytes()
    patches = {}
    for keyword, value in (raw or {}).items():
        vr = dictionary_VR(tag_for_keyword(keyword))
        if vr in ("DS", "IS", "US"):  # pydicom refuses text here: write a number, patch the bytes below
            patches[keyword] = value
            value = 1 if vr == "US" else "1"
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    for keyword, value in patches.items():
        data = _patch_element(data, tag_for_keyword(keyword), value)
    path.write_bytes(data)
    return path


def _patch_element(data: bytes, tag: int, value: str) -> bytes:
    """Replace one explicit-VR little-endian element's value by `value` (as LO when it was binary US)."""
    group, elem = tag >> 16, tag & 0xFFFF
    for vr in (b"DS", b"IS", b"US"):
        i = data.find(struct.pack("<HH", group, elem) + vr)
        if i >= 0:
            break
    else:
        raise ValueError(f"tag {tag:08x} not in the file")
    n = struct.unpack("<H", data[i + 6:i + 8])[0]
    text = value.encode() + (b" " if len(value) % 2 else b"")
    new_vr = b"LO" if vr == b"US" else vr
    return data[:i + 4] + new_vr + struct.pack("<H", len(text)) + text + data[i + 8 + n:]


def npz(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def medmnist_arrays(n: int = 12) -> dict:
    rng = np.random.default_rng(0)
    return {"train_images": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8),
            "train_labels": (np.arange(n) % 2).reshape(-1, 1)}


class Payload:
    """Unpickling this writes a sentinel file: proof that a planted pickle ran."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (Path.write_text, (Path(self.sentinel), "pickle ran"))


def pickle_bytes(sentinel: Path) -> bytes:
    return pickle.dumps({"state_dict": Payload(sentinel)})


def two_class(root: Path, per_class: int = 6, classes=("normal", "lesion"), split: str | None = None) -> Path:
    for c in classes:
        for i in range(per_class):
            grey((root / split if split else root) / c / f"{c}_{i}.png", seed=zlib.crc32(str(root).encode()))
    return root


def labels_csv(root: Path, rows: list[str], header: str = "path,label,split", name: str = "labels.csv",
               encoding: str = "utf-8") -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((header + "\n" + "\n".join(rows) + "\n").encode(encoding))
    return path


def csv_dataset(root: Path, per_class: int = 5, test_label: dict | None = None) -> list[str]:
    """Images under root/img and their rows (train and test) for a labels CSV."""
    rows = []
    for c in ("NORMAL", "PNEUMONIA"):
        for i in range(per_class):
            for split in ("train", "test"):
                name = f"img/{split}_{c}_{i}.png"
                grey(root / name, seed=i)
                label = (test_label or {}).get(c, c) if split == "test" else c
                rows.append(f"{name},{label},{split}")
    return rows


def edit_json(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    obj = fn(obj)
    path.write_text(json.dumps(obj))
