"""Which files are images, one rule for every path (training, prediction, the server).

A file is a candidate by its name (`EXTENSIONS`), and it is accepted by its content: the first
bytes must be one of the `SIGNATURES` below. The header then gives its size (and DICOM's frame
count) before anything is decoded, so the pixel limit holds for every format.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

SUPPORTED = "PNG, JPEG, BMP, TIFF or DICOM"
EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
# Largest image decoded anywhere (rows x columns x frames); beyond it Pillow's own bomb check would fire anyway.
MAX_PIXELS = 120_000_000

# (offset, magic bytes, canonical suffix, format name)
SIGNATURES = (
    (0, b"\x89PNG\r\n\x1a\n", ".png", "PNG"),
    (0, b"\xff\xd8\xff", ".jpg", "JPEG"),
    (0, b"BM", ".bmp", "BMP"),
    (0, b"II*\x00", ".tif", "TIFF"),
    (0, b"MM\x00*", ".tif", "TIFF"),
    (128, b"DICM", ".dcm", "DICOM"),
)
# Known formats we refuse, so the reason can name them.
REFUSED = ((0, b"GIF8", "GIF"), (8, b"WEBP", "WebP"), (0, b"PK\x03\x04", "ZIP"), (0, b"%PDF", "PDF"))
HEAD_BYTES = 132


class UnreadableImage(Exception):
    """A file that cannot be decoded; `reason` is a short human-readable cause. `transient` marks a
    cause that may pass without the file changing (permission, I/O error): never cache it."""

    def __init__(self, path: Path | str, reason: str, transient: bool = False):
        self.path = str(path)
        self.reason = reason
        self.transient = transient
        super().__init__(f"{path}: {reason}")


class TooManyPixels(UnreadableImage):
    """Over the pixel limit (header size, or Pillow's decompression-bomb check): a 413 for the server."""


def os_error_reason(path: Path | str, e: OSError) -> UnreadableImage:
    """The true reason an OS-level read failed (permission, missing, symbolic link, I/O)."""
    if isinstance(e, PermissionError):
        return UnreadableImage(path, "permission denied (cannot read the file)", transient=True)
    if isinstance(e, IsADirectoryError):
        real, parent = os.path.realpath(path), os.path.realpath(os.path.dirname(os.path.abspath(path)))
        if os.path.islink(path) and (parent + os.sep).startswith(real.rstrip(os.sep) + os.sep):
            return UnreadableImage(path, f"symbolic link loop (to the folder {real} above it)")
        return UnreadableImage(path, "is a folder, not a file")
    if e.errno == errno.ELOOP:
        return UnreadableImage(path, "symbolic link loop")
    if isinstance(e, FileNotFoundError):
        if os.path.islink(path):
            return UnreadableImage(path, f"dangling symbolic link (to {os.readlink(path)})")
        return UnreadableImage(path, "file does not exist")
    return UnreadableImage(path, f"cannot read the file ({e.strerror or e})", transient=True)


@dataclass(frozen=True)
class Header:
    format: str  # PNG, JPEG, BMP, TIFF, DICOM
    suffix: str
    width: int
    height: int
    frames: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height * max(1, self.frames)


def is_candidate(path: Path | str) -> bool:
    """By name only: an image extension, and not a hidden file."""
    path = Path(path)
    return path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def sniff(head: bytes) -> tuple[str, str] | None:
    """(suffix, format) of the bytes' format, or None when it is not one we read."""
    for offset, magic, suffix, name in SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return suffix, name
    return None


def refused_format(head: bytes) -> str | None:
    for offset, magic, name in REFUSED:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def unsupported_reason(head: bytes) -> str:
    other = refused_format(head)
    if other:
        return f"{other} is not a supported image format (use {SUPPORTED})"
    return f"not a {SUPPORTED} image"


def _dicom_int(ds, keyword: str, default: int) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        return default
    try:
        return int(float(str(value).split("\\")[0]))
    except (TypeError, ValueError):
        raise ValueError(f"DICOM tag {keyword} is not a number ({str(value)[:40]!r})") from None


def read_header(path: Path | str, data: bytes | None = None) -> Header:
    """Format, size and frames from the header only; raises UnreadableImage with the true reason
    (missing, permission denied, unsupported format, unparsable header)."""
    try:
        if data is None:
            with open(path, "rb") as f:
                head = f.read(HEAD_BYTES)
        else:
            head = data[:HEAD_BYTES]
    except OSError as e:
        raise os_error_reason(path, e) from None
    if not head:
        raise UnreadableImage(path, "empty file (0 bytes)")
    kind = sniff(head)
    if kind is None:
        raise UnreadableImage(path, unsupported_reason(head))
    suffix, fmt = kind
    source = path if data is None else io.BytesIO(data)
    if fmt == "DICOM":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on invalid values; the reason names them
            return _dicom_header(path, source, suffix)
    return _pillow_header(path, source, fmt, suffix)


def _dicom_header(path: Path | str, source, suffix: str) -> Header:
    import pydicom

    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
    except OSError as e:
        if e.errno is None:
            raise UnreadableImage(path, f"cannot parse DICOM header ({type(e).__name__})") from None
        raise os_error_reason(path, e) from None
    except Exception as e:
        raise UnreadableImage(path, f"cannot parse DICOM header ({type(e).__name__})") from None
    if "Rows" not in ds or "Columns" not in ds:
        raise UnreadableImage(path, "DICOM file has no pixel data (no Rows/Columns: a report or structured document?)")
    try:
        return Header("DICOM", suffix, _dicom_int(ds, "Columns", 0), _dicom_int(ds, "Rows", 0),
                      _dicom_int(ds, "NumberOfFrames", 1))
    except ValueError as e:
        raise UnreadableImage(path, str(e)) from None


def _pillow_header(path: Path | str, source, fmt: str, suffix: str) -> Header:
    from PIL import Image

    try:
        with Image.open(source) as img:
            return Header(fmt, suffix, img.width, img.height, getattr(img, "n_frames", 1) if fmt == "TIFF" else 1)
    except Image.DecompressionBombError:
        raise TooManyPixels(path, f"over the {MAX_PIXELS:,}-pixel limit") from None
    except OSError as e:
        if e.errno is not None:  # the OS failed the read; Pillow's own OSErrors carry no errno
            raise os_error_reason(path, e) from None
        raise UnreadableImage(path, f"corrupt {fmt} header ({type(e).__name__})") from None
    except Exception as e:
        raise UnreadableImage(path, f"corrupt {fmt} header ({type(e).__name__})") from None


def check_pixels(header: Header, path: Path | str, max_pixels: int = MAX_PIXELS) -> None:
    if header.width * header.height == 0:
        raise UnreadableImage(path, f"has no pixels ({header.width}x{header.height})")
    if header.pixels > max_pixels:
        frames = f" x {header.frames} frames" if header.frames > 1 else ""
        raise TooManyPixels(path, f"{header.width}x{header.height}{frames} = {header.pixels / 1e6:.0f} megapixels "
                                    f"is over the {max_pixels / 1e6:.0f}-megapixel limit")
