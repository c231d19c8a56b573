import numpy as np
from PIL import Image

from medclassify.data.cache import build_cache
from medclassify.data.images import load_for_model


def test_cache_decodes_once_and_reuses(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 30), i * 40, np.uint8)).save(p)
        paths.append(str(p))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    paths.append(str(bad))
    first = build_cache(paths, 16, "pad", 1, workers=1, root=tmp_path / "c")
    assert not first.hit
    assert first.errors == {str(bad): first.errors[str(bad)]} and "not a PNG, JPEG" in first.errors[str(bad)]
    assert first.images.shape == (6, 16, 16, 1)
    assert np.array_equal(first.images[first.row_of[paths[2]]], load_for_model(paths[2], 16, "pad", 1))
    second = build_cache(paths, 16, "pad", 1, workers=1, root=tmp_path / "c")
    assert second.hit and second.directory == first.directory
    other_size = build_cache(paths, 24, "pad", 1, workers=1, root=tmp_path / "c")
    assert other_size.directory != first.directory
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(paths[0])  # a changed file invalidates the entry
    import os

    os.utime(paths[0], ns=(1, 1))
    assert build_cache(paths, 16, "pad", 1, workers=1, root=tmp_path / "c").directory != first.directory


def test_parallel_build_matches_serial(tmp_path):
    paths = []
    rng = np.random.default_rng(0)
    for i in range(80):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(p)
        paths.append(str(p))
    a = build_cache(paths, 16, "pad", 1, workers=2, root=tmp_path / "a")
    b = build_cache(paths, 16, "pad", 1, workers=1, root=tmp_path / "b")
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
