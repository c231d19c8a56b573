"""Checking an uploaded file before anything decodes it: size cap, type by content (not by name),
pixel-count cap read from the header (decompression bombs). The bytes then go, in memory, through
the ordinary decoder (data/images.py), so uploads are preprocessed exactly like training images."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

# (magic bytes at offset, suffix, format name)
_SIGNATURES = [
    (0, b"\x89PNG\r\n\x1a\n", ".png", "PNG"),
    (0, b"\xff\xd8\xff", ".jpg", "JPEG"),
    (0, b"BM", ".bmp", "BMP"),
    (0, b"II*\x00", ".tif", "TIFF"),
    (0, b"MM\x00*", ".tif", "TIFF"),
    (128, b"DICM", ".dcm", "DICOM"),
]
SUPPORTED = "PNG, JPEG, BMP, TIFF or DICOM"


class UploadRejected(Exception):
    """A bad upload: HTTP status, a short machine-readable code and a sentence for people."""

    def __init__(self, status: int, code: str, message: str):
        self.status, self.code, self.message = status, code, message
        super().__init__(message)


@dataclass
class Upload:
    path: Path  # a name for messages and for the decoder's choice by suffix; nothing is written there
    data: bytes
    format: str
    width: int
    height: int

    @property
    def bytes(self) -> int:
        return len(self.data)


def sniff(head: bytes) -> tuple[str, str] | None:
    for offset, magic, suffix, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return suffix, name
    return None


def dimensions(data: bytes, fmt: str) -> tuple[int, int]:
    """Width and height from the header only."""
    if fmt == "DICOM":
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data), defer_size=1024)  # large values (the pixels) are not read here
        except Exception as e:
            raise UploadRejected(422, "unreadable_image", f"The DICOM file cannot be parsed ({type(e).__name__}).") from None
        if "PixelData" not in ds:
            raise UploadRejected(422, "no_pixel_data", "The DICOM file has no pixel data (a report or structured document?).")
        return int(getattr(ds, "Columns", 0) or 0), int(getattr(ds, "Rows", 0) or 0)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width, img.height
    except Image.DecompressionBombError:
        raise UploadRejected(413, "too_many_pixels", "The image has more pixels than this server decodes.") from None
    except Exception as e:
        raise UploadRejected(422, "unreadable_image", f"The {fmt} file cannot be read ({type(e).__name__}).") from None


def check_upload(data: bytes, filename: str | None, max_bytes: int, max_pixels: int) -> Upload:
    """Validate the bytes of one upload (raises UploadRejected)."""
    name = filename or "upload"
    if not data:
        raise UploadRejected(400, "empty_file", f"{name} is empty (0 bytes).")
    if len(data) > max_bytes:
        raise UploadRejected(413, "file_too_large", f"{name} is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB.")
    kind = sniff(data[:132])
    if kind is None:
        raise UploadRejected(415, "unsupported_type", f"{name} is not a {SUPPORTED} image.")
    suffix, fmt = kind
    w, h = dimensions(data, fmt)
    if w * h > max_pixels:
        raise UploadRejected(413, "too_many_pixels",
                             f"{name} is {w}x{h} = {w * h / 1e6:.0f} megapixels; the limit is {max_pixels / 1e6:.0f} megapixels.")
    if w * h == 0:
        raise UploadRejected(422, "unreadable_image", f"{name} has no pixels (0x0).")
    # The suffix follows the content, so a DICOM sent as "scan.png" is still read as DICOM.
    return Upload(Path(Path(name).name).with_suffix(suffix), data, fmt, w, h)
