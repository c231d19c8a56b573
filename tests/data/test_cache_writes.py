"""The caches' writes: a killed build leaves nothing for ever, and an unwritable cache location is
one line naming MEDCLASSIFY_CACHE and the fix (checked before any image is decoded)."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from medclassify import io
from medclassify.cli import main
from medclassify.data.cache import build_cache
from medclassify.io import PARTIAL, OutputError


def _images(folder, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i}.png"
        Image.fromarray(np.full((20, 20), i * 30, np.uint8)).save(p)
        paths.append(str(p))
    return paths


_SLOW_BUILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from medclassify.data import cache
    real = cache._decode_one
    def slow(args):
        time.sleep(120)
        return real(args)
    cache._decode_one = slow
    cache.build_cache(sys.argv[2:], 16, "pad", 1, workers=1, root=Path(sys.argv[1]))
""")


def test_sigkill_while_decoding_leaves_nothing_after_the_next_build(tmp_path):
    paths = _images(tmp_path / "img")
    root = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(root), *paths], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (root.is_dir() and [p for p in root.iterdir() if PARTIAL in p.name]):
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    left = [p.name for p in root.iterdir() if PARTIAL in p.name]
    assert left and all(name.endswith(f"{PARTIAL}{child.pid}") for name in left)
    other = _images(tmp_path / "other", 3)  # any later build clears every dead build's folder
    cache = build_cache(other, 16, "pad", 1, workers=1, root=root)
    assert not [p for p in root.iterdir() if PARTIAL in p.name]
    assert cache.images.shape == (3, 16, 16, 1)


def test_cache_location_that_is_a_file_is_one_line_naming_it(tmp_path, monkeypatch, small_dataset, capsys):
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="MEDCLASSIFY_CACHE") as e:
        build_cache(_images(tmp_path / "img"), 16, "pad", 1, workers=1, root=blocker / "sub")
    assert str(blocker / "sub") in str(e.value)
    monkeypatch.setenv("MEDCLASSIFY_CACHE", str(blocker))
    out = tmp_path / "audit"
    assert main(["audit", str(small_dataset), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(blocker) in err[0] and "MEDCLASSIFY_CACHE" in err[0]
    assert not out.exists() and blocker.read_text() == "not a folder"


def test_read_only_cache_still_serves_what_it_holds_and_refuses_to_build(tmp_path, monkeypatch):
    paths = _images(tmp_path / "img")
    root = tmp_path / "cache"
    built = build_cache(paths, 16, "pad", 1, workers=1, root=root)

    def read_only(*a, **k):  # as root, chmod does not stop writes: the probe is what fails
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io.tempfile, "NamedTemporaryFile", read_only)
    assert build_cache(paths, 16, "pad", 1, workers=1, root=root).directory == built.directory
    with pytest.raises(OutputError, match="MEDCLASSIFY_CACHE to a writable folder"):
        build_cache(paths[:3], 16, "pad", 1, workers=1, root=root)
    assert sorted(os.listdir(root)) == [built.directory.name]
