"""DICOM pixel decoding: rescale, VOI window, MONOCHROME1 inversion, to 8-bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .images import UnreadableImage, _to_uint8


def _first(value) -> float:
    """Window centre/width may be multi-valued; the first is the default view."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def read_dicom(path: Path | str, data: bytes | None = None) -> np.ndarray:
    """DICOM file (or its bytes, named by `path`) -> uint8 pixels."""
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path if data is None else io.BytesIO(data), force=False)
    except InvalidDicomError:
        raise UnreadableImage(path, "not a valid DICOM file (no DICM preamble)") from None
    except Exception as e:
        raise UnreadableImage(path, f"cannot parse DICOM ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise UnreadableImage(path, "DICOM file has no pixel data (a report or structured document?)")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnreadableImage(path, f"multi-frame DICOM ({frames} frames); export single frames to classify them")
    try:
        arr = ds.pixel_array
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise UnreadableImage(
            path,
            f"cannot decode pixel data with transfer syntax {syntax} ({e}); "
            "install pylibjpeg or gdcm plugins for compressed DICOM",
        ) from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith(("RGB", "YBR")) and arr.ndim == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        return _to_uint8(arr)
    arr = arr.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    arr = arr * slope + intercept
    if "WindowCenter" in ds and "WindowWidth" in ds:
        centre, width = _first(ds.WindowCenter), max(_first(ds.WindowWidth), 1.0)
        lo, hi = centre - width / 2, centre + width / 2
        arr = np.clip((arr - lo) / (hi - lo), 0, 1) * 255.0
        out = (arr + 0.5).astype(np.uint8)
    else:
        out = _to_uint8(arr)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out
