"""DICOM pixel decoding with pydicom's own display pipeline: Modality LUT (or rescale), VOI LUT (or
window, with its VOILUTFunction), MONOCHROME1 inversion, then 8 bits by the VOI output range.

Every malformed tag becomes an UnreadableImage naming the tag, never an exception of its own."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np

from .formats import UnreadableImage, os_error_reason
from .pixels import to_uint8 as _to_uint8

# Tags the pixel pipeline does arithmetic with: a value that is not a number is the file's fault.
NUMERIC_TAGS = ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
                "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")
# Display tags whose empty value means "absent" (pydicom would try arithmetic on the empty string).
OPTIONAL_TAGS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction")


def _values(value) -> list:
    if value is None or isinstance(value, (str, bytes, int, float)):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def check_tags(ds, path: Path | str) -> None:
    """Drop empty display tags; refuse a numeric tag that does not hold a finite number."""
    for kw in OPTIONAL_TAGS:
        try:
            if kw in ds and (ds[kw].VM == 0 or ds[kw].value in (None, "", b"")):
                del ds[kw]
        except Exception:
            raise UnreadableImage(path, f"DICOM tag {kw} cannot be read") from None
    for kw in NUMERIC_TAGS:
        try:
            if kw not in ds:
                continue
            value = ds[kw].value
        except Exception:
            raise UnreadableImage(path, f"DICOM tag {kw} cannot be read") from None
        for v in _values(value):
            if v is None or v == "":
                continue
            try:
                ok = math.isfinite(float(v))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise UnreadableImage(path, f"DICOM tag {kw} is not a number ({str(value)[:40]!r})")


def _read(path: Path, data: bytes | None):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid values: check_tags names them
            return pydicom.dcmread(path if data is None else io.BytesIO(data), force=False)
    except InvalidDicomError:
        raise UnreadableImage(path, "not a valid DICOM file (no DICM preamble)") from None
    except OSError as e:
        if e.errno is not None:
            raise os_error_reason(path, e) from None
        raise UnreadableImage(path, f"cannot parse DICOM ({type(e).__name__}: {e})") from None
    except Exception as e:
        raise UnreadableImage(path, f"cannot parse DICOM ({type(e).__name__}: {e})") from None


def _voi_kind(ds) -> str | None:
    """What apply_voi_lut will apply: 'lut' (VOI LUT Sequence, preferred), 'window', or None."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _voi_range(ds, kind: str) -> tuple[float, float]:
    """The output range of the VOI step (not of this image): the LUT's over all its inputs, or the
    window's y_min..y_max (pydicom derives them from the bit depth and rescale)."""
    from pydicom.pixels import apply_voi, apply_windowing

    if kind == "lut":
        n, first = ds.VOILUTSequence[0].LUTDescriptor[:2]
        out = apply_voi(np.arange(first, first + (n or 2**16), dtype=np.int64), ds)
    else:
        with np.errstate(over="ignore"):
            out = apply_windowing(np.array([-1e300, 1e300]), ds)
    return float(out.min()), float(out.max())


def _display(arr: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = apply_modality_lut(arr, ds)
    kind = _voi_kind(ds)
    if kind is None:
        return _to_uint8(arr)
    lo, hi = _voi_range(ds, kind)
    arr = apply_voi_lut(arr, ds).astype(np.float64)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((arr - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def read_dicom(path: Path | str, data: bytes | None = None) -> np.ndarray:
    """DICOM file (or its bytes, named by `path`) -> uint8 pixels."""
    path = Path(path)
    ds = _read(path, data)
    if "PixelData" not in ds:
        raise UnreadableImage(path, "DICOM file has no pixel data (a report or structured document?)")
    check_tags(ds, path)
    frames = int(float(str(ds.get("NumberOfFrames", 1) or 1).split("\\")[0]))
    if frames > 1:
        raise UnreadableImage(path, f"multi-frame DICOM ({frames} frames); export single frames to classify them")
    try:
        arr = ds.pixel_array
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise UnreadableImage(
            path,
            f"cannot decode pixel data with transfer syntax {syntax} ({type(e).__name__}: {e}); "
            "install pylibjpeg or gdcm plugins for compressed DICOM",
        ) from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith(("RGB", "YBR")) and arr.ndim == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        return _to_uint8(arr)
    if arr.ndim != 2:
        raise UnreadableImage(path, f"DICOM pixel array of shape {arr.shape} is not a single grey image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = _display(arr, ds)
    except UnreadableImage:
        raise
    except Exception as e:  # a malformed LUT or window (width < 1, unknown VOILUTFunction, ...)
        raise UnreadableImage(path, f"cannot apply the DICOM modality/VOI LUT ({type(e).__name__}: {e})") from None
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out
