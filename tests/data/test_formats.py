"""16-bit PNG and TIFF: scaled to 8 bits by their own range, identical pixels whatever the container."""

import numpy as np
import pytest
from PIL import Image

from medclassify.data.hashing import exact_hash
from medclassify.data.images import decode, stored_mode


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_images(tmp_path, ext):
    ramp = np.linspace(100, 3900, 32 * 32).reshape(32, 32).astype(np.uint16)  # 12-bit content
    path = tmp_path / f"scan.{ext}"
    Image.fromarray(ramp).save(path)
    assert stored_mode(path).startswith("I")
    arr = decode(path)
    assert arr.dtype == np.uint8 and arr.min() == 0 and arr.max() == 255
    assert (np.diff(arr.ravel().astype(int)) >= 0).all()  # order preserved


def test_same_pixels_in_png_tiff_and_bmp_hash_alike(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (20, 20), dtype=np.uint8)
    hashes = set()
    for ext in ("png", "tif", "bmp"):
        Image.fromarray(arr).save(tmp_path / f"a.{ext}")
        hashes.add(exact_hash(decode(tmp_path / f"a.{ext}")))
    assert len(hashes) == 1
