"""Decoding one image file into a uint8 array, the same way for training, evaluation and prediction.

Every path that turns a file into pixels goes through `decode` and `resize`, so the cache, the
Predictor and the audit see identical arrays.
"""

from __future__ import annotations

import io

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from . import dicom  # called as dicom.read_dicom (tests replace it)
from .formats import EXTENSIONS as IMAGE_EXTENSIONS, MAX_PIXELS, TooManyPixels, UnreadableImage, check_pixels, is_candidate, os_error_reason, read_header
from .npz import read_npz_image
from .pixels import NPZ_SEPARATOR
from .pixels import to_uint8 as _to_uint8

# EXIF orientations that swap width and height (rotations by 90 or 270 degrees, transposes).
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)

RESIZE_MODES = ("pad", "squash")
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Images inside a MedMNIST .npz are addressed as "<file.npz>::<split>::<row>".
# Channels whose values differ by at most this are treated as one grey channel (JPEG chroma noise).
GRAY_TOLERANCE = 3


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str  # the file's own mode: L, RGB, I;16, P, DICOM, ...
    gray_content: bool  # single-channel content, even when stored as RGB


def is_image_file(path: Path) -> bool:
    return is_candidate(path)


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """Pillow image in any mode -> uint8 array, HxW (grey) or HxWx3 (colour)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _to_uint8(np.asarray(img))
    if img.mode == "L":
        return np.asarray(img)
    if img.mode in ("1", "LA"):
        return np.asarray(img.convert("L"))
    if img.mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
        img = img.convert("RGB")
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def is_gray_content(arr: np.ndarray) -> bool:
    if arr.ndim == 2:
        return True
    # Subsample: a few thousand pixels decide it.
    step = max(1, int(np.sqrt(arr.shape[0] * arr.shape[1] / 4096)))
    sub = arr[::step, ::step].astype(np.int16)
    return bool(
        np.abs(sub[..., 0] - sub[..., 1]).max() <= GRAY_TOLERANCE
        and np.abs(sub[..., 1] - sub[..., 2]).max() <= GRAY_TOLERANCE
    )


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a malformed EXIF block is no reason to refuse the pixels
        return 1


def _open_pil(path: Path, draft_size: int | None, data: bytes | None = None) -> Image.Image:
    img = Image.open(path if data is None else io.BytesIO(data))
    if img.width * img.height > MAX_PIXELS:
        raise TooManyPixels(path, f"{img.width}x{img.height} pixels is over the {MAX_PIXELS:,}-pixel limit")
    if draft_size and img.format == "JPEG":
        # JPEG DCT scaling: decode at >= 2x the target size, 2-4x faster for large X-rays.
        img.draft(img.mode, (draft_size * 2, draft_size * 2))
    img.load()
    if _orientation(img) != 1:  # cameras and phones store rotated pixels plus an EXIF note
        img = ImageOps.exif_transpose(img)
    return img


def storage_path(path: Path | str) -> str:
    """The file on disk holding an image: the path itself, or the .npz of a virtual MedMNIST path."""
    path = str(path)
    return path.split(NPZ_SEPARATOR, 1)[0] if NPZ_SEPARATOR in path else path


def decode(path: Path | str, draft_size: int | None = None, data: bytes | None = None) -> np.ndarray:
    """Decode a file to uint8, HxW or HxWx3. Raises UnreadableImage with the reason.
    With `data`, those bytes are decoded (an upload held in memory) and `path` only names them.
    The content decides the format (formats.read_header), and the pixel limit is checked on the
    header (rows x columns x frames) before anything is decoded."""
    if NPZ_SEPARATOR in str(path) and data is None:
        return read_npz_image(str(path))
    path = Path(path)
    header = read_header(path, data)
    check_pixels(header, path)
    if header.format == "DICOM":
        return dicom.read_dicom(path, data)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img = _open_pil(path, draft_size, data)
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage(path, f"not a {header.format} image Pillow can identify") from None
    except Image.DecompressionBombError as e:
        raise TooManyPixels(path, f"decompression bomb refused ({e})") from None
    except OSError as e:
        if e.errno is not None:  # the OS failed the read (permission, I/O); Pillow's own OSErrors carry no errno
            raise os_error_reason(path, e) from None
        raise UnreadableImage(path, f"corrupt or truncated image ({e})") from None
    except Exception as e:  # Pillow raises assorted errors on malformed files
        raise UnreadableImage(path, f"cannot decode ({type(e).__name__}: {e})") from None
    try:
        return _pil_to_array(img)
    except Exception as e:
        raise UnreadableImage(path, f"cannot convert mode {img.mode} ({e})") from None


def _looks_like_dicom(path: Path, data: bytes | None = None) -> bool:
    if data is not None:
        return data[128:132] == b"DICM"
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def stored_mode(path: Path | str) -> str:
    """The mode the file stores (L, RGB, I;16, P, ...; DICOM; NPZ), from its header only; '?' if unknown."""
    if NPZ_SEPARATOR in str(path):
        return "NPZ"
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom") or _looks_like_dicom(path):
        return "DICOM"
    try:
        with Image.open(path) as img:
            return img.mode
    except Exception:
        return "?"


def probe(path: Path | str, max_side: int = 256) -> ImageInfo:
    """Size, stored mode and whether the content is grey, from a cheap reduced decode."""
    mode = stored_mode(path)
    arr = decode(path, draft_size=None if mode in ("DICOM", "NPZ", "?") else max_side)
    if mode in ("DICOM", "NPZ", "?"):
        return ImageInfo(arr.shape[1], arr.shape[0], mode, is_gray_content(arr))
    with Image.open(path) as img:
        w, h = img.width, img.height
        if _orientation(img) in SWAPPING_ORIENTATIONS:
            w, h = h, w
    return ImageInfo(w, h, mode, is_gray_content(arr))


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """HxW or HxWx3 uint8 -> HxWxC with C = 1 or 3. Colour becomes grey by ITU-R 601 luma."""
    if channels == 1:
        if arr.ndim == 3:
            r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
            # Grey stored as RGB (most X-rays and MRIs here): the luma of equal channels is the channel
            # itself, bit for bit, at a fraction of the float arithmetic's cost.
            if np.array_equal(r, g) and np.array_equal(g, b):
                arr = r
            else:
                arr = (r * 0.299 + g * 0.587 + b * 0.114 + 0.5).astype(np.uint8)
        return arr[..., None]
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    return arr


def resize(arr: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """HxWxC uint8 -> size x size x C. `pad` keeps the aspect ratio and pads with black;
    `squash` stretches to the square."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    h, w, c = arr.shape
    img = Image.fromarray(arr[..., 0] if c == 1 else arr)
    if mode == "squash" or h == w:
        out = np.asarray(img.resize((size, size), Image.BILINEAR, reducing_gap=3.0))
    else:
        scale = size / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        small = np.asarray(img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0))
        out = np.zeros((size, size) + small.shape[2:], np.uint8)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[top : top + nh, left : left + nw] = small
    if out.ndim == 2:
        out = out[..., None]
    return out


def load_for_model(path: Path | str, size: int, resize_mode: str, channels: int, data: bytes | None = None) -> np.ndarray:
    """The single preprocessing entry: file (or its bytes) -> size x size x C uint8."""
    arr = decode(path, draft_size=size, data=data)
    return resize(to_channels(arr, channels), size, resize_mode)


def array_for_model(arr: np.ndarray, size: int, resize_mode: str, channels: int) -> np.ndarray:
    """Same as load_for_model for pixels already in memory (uploads, DICOM slices)."""
    return resize(to_channels(_to_uint8(arr) if arr.dtype != np.uint8 else arr, channels), size, resize_mode)
