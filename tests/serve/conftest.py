"""Uploads for the server tests: good images in every accepted format and every kind of bad input."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image


def _png(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, **kw).save(buf, format="PNG")
    return buf.getvalue()


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def dicom_bytes(arr: np.ndarray | None) -> bytes:
    """A secondary-capture DICOM file, 12-bit MONOCHROME2; without PixelData when arr is None."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "OT", "TEST"
    ds.Rows, ds.Columns = (64, 64) if arr is None else arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if arr is not None:
        ds.PixelData = arr.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def bomb_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid, highly compressed grey PNG of width x height pixels (100 megapixels by default)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    body = b"".join(comp.compress(row * 500) for _ in range(height // 500)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def uploads():
    from medclassify.data.synthetic import synthetic_image

    rng = np.random.default_rng(0)
    grey = synthetic_image(rng, 64, 1)
    img = Image.fromarray(grey)
    good_png = _png(grey)
    return {
        "png": good_png,
        "jpeg": encode(img, "JPEG"),
        "bmp": encode(img, "BMP"),
        "tiff": encode(img, "TIFF"),
        "rgb_jpeg": encode(img.convert("RGB"), "JPEG"),
        "png16": _png((grey.astype(np.uint16) * 200 + 500).astype(np.uint16)),
        "palette": encode(img.convert("P", palette=Image.ADAPTIVE, colors=16), "PNG"),
        "dicom": dicom_bytes((grey.astype(np.uint16) * 16)),
        "dicom_no_pixels": dicom_bytes(None),
        "text": b"patient notes, not an image\n" * 3,
        "zero": b"",
        "truncated": good_png[: len(good_png) // 2],
        "bomb": bomb_png(),
        "fake_png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,
    }
