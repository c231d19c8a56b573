"""Every per-file failure is a counted, listed skip with its true reason: EXIF orientation, content
that is not what the name says, permission and I/O errors (never cached), dangling links, link loops
and unreadable folders, in datasets and in predict folders.

The tests run as root, where chmod 000 does not stop a read: permission errors are simulated by
patching the file-opening and folder-listing functions for one path."""

import builtins
import errno
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from medclassify.data import formats, listing
from medclassify.data.cache import build_cache
from medclassify.data.images import UnreadableImage, decode, load_for_model, probe
from medclassify.data.prepare import prepare
from medclassify.data.sources import scan_folder
from medclassify.errors import DataError


def img(path, value=100, size=16, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).convert(mode).save(path)
    return path


def dataset(root, per_class=4):
    for c in ("a", "b"):
        for i in range(per_class):
            img(root / c / f"{i}.png", value=i + (10 if c == "b" else 0))
    return root


def run_prepare(root, quiet, channels=1):
    return prepare(str(root), image_size=16, resize="pad", channels=channels, normalize="fixed", mean=(0.5,),
                   std=(0.25,), patient_pattern=None, val_fraction=0.25, test_fraction=0.25, seed=0,
                   reporter=quiet, workers=1)


# --- EXIF orientation ------------------------------------------------------------------------------

def exif_jpeg(path, orientation=6):
    arr = np.zeros((16, 32), np.uint8)
    arr[:, :16] = 255  # stored: white left half, landscape
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, quality=95, exif=exif.tobytes())
    return path


def test_exif_orientation_is_applied_on_every_decode_path(tmp_path):
    path = exif_jpeg(tmp_path / "phone.jpg")
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert expected.shape == (32, 16)
    arr = decode(path)
    assert arr.shape == (32, 16)  # portrait, as displayed
    assert np.abs(arr.astype(int) - expected.astype(int)).max() <= 1
    assert arr[:16].mean() > 200 and arr[16:].mean() < 50  # orientation 6: the white left half is now on top
    assert np.array_equal(decode(path, data=path.read_bytes()), arr)  # the server decodes bytes the same way
    model_in = load_for_model(path, 16, "pad", 1)  # training and predict
    assert model_in[:8, 4:12].mean() > 200 and model_in[8:, 4:12].mean() < 50
    info = probe(path)
    assert (info.width, info.height) == (16, 32)


def test_orientation_1_is_left_as_stored(tmp_path):
    arr = decode(exif_jpeg(tmp_path / "plain.jpg", orientation=1))
    assert arr.shape == (16, 32) and arr[:, :16].mean() > 200


# --- content decides ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, name", [("GIF", "GIF"), ("WEBP", "WebP")])
def test_png_name_with_gif_or_webp_content_is_refused_naming_the_format(tmp_path, quiet, fmt, name):
    root = dataset(tmp_path / "ds")
    fake = root / "a" / "fake.png"
    Image.new("L", (16, 16), 90).save(fake, format=fmt)
    with pytest.raises(UnreadableImage, match=f"{name} is not a supported image format"):
        decode(fake)
    with pytest.raises(UnreadableImage, match=f"{name} is not a supported image format"):
        decode("upload.png", data=fake.read_bytes())
    data = run_prepare(root, quiet)
    assert data.skipped == {str(fake.resolve()): f"{name} is not a supported image format (use PNG, JPEG, BMP, TIFF or DICOM)"}


def test_jpeg_named_png_is_read_by_its_content(tmp_path):
    path = tmp_path / "x.png"
    Image.new("L", (16, 16), 200).save(path, format="JPEG")
    assert abs(int(decode(path).mean()) - 200) <= 2


# --- permission and I/O errors: true reason, never cached ----------------------------------------

def deny(monkeypatch, target, exc=PermissionError(errno.EACCES, "Permission denied")):
    """Reads of `target` fail with `exc` (as chmod 000 would for a non-root user)."""
    real_open = builtins.open

    def fake_open(file, *a, **k):
        if str(file) == str(target):
            raise type(exc)(exc.errno, exc.strerror, str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(formats, "open", fake_open, raising=False)
    monkeypatch.setattr(Image, "open", _guarded(Image.open, target, exc))


def _guarded(fn, target, exc):
    def wrapper(fp, *a, **k):
        if str(fp) == str(target):
            raise type(exc)(exc.errno, exc.strerror, str(fp))
        return fn(fp, *a, **k)
    return wrapper


def test_permission_denied_is_reported_as_such(tmp_path, monkeypatch):
    path = img(tmp_path / "locked.png")
    deny(monkeypatch, path)
    with pytest.raises(UnreadableImage) as e:
        decode(path)
    assert e.value.reason == "permission denied (cannot read the file)" and e.value.transient


def test_io_error_is_reported_as_such_and_transient(tmp_path, monkeypatch):
    path = img(tmp_path / "nfs.png")
    deny(monkeypatch, path, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(UnreadableImage) as e:
        decode(path)
    assert e.value.reason == "cannot read the file (Input/output error)" and e.value.transient


def test_truncated_image_is_corrupt_not_transient(tmp_path):
    path = img(tmp_path / "t.png", size=64)
    path.write_bytes(path.read_bytes()[:80])
    with pytest.raises(UnreadableImage) as e:
        decode(path)
    assert not e.value.transient and "permission" not in e.value.reason


def test_a_file_made_readable_again_is_decoded_on_the_next_build(tmp_path, monkeypatch):
    paths = [str(img(tmp_path / f"{i}.png", value=i)) for i in range(4)]
    cache_dir = tmp_path / "cache"
    with monkeypatch.context() as m:
        deny(m, paths[2])
        first = build_cache(paths, 16, "pad", 1, workers=1, root=cache_dir)
    assert first.errors == {paths[2]: "permission denied (cannot read the file)"}
    assert first.transient == [paths[2]]
    second = build_cache(paths, 16, "pad", 1, workers=1, root=cache_dir)  # "chmod 644": readable again
    assert second.hit and second.directory == first.directory  # the same entry, not a rebuild
    assert second.errors == {} and second.transient == []
    assert np.array_equal(second.images[second.row_of[paths[2]]], load_for_model(paths[2], 16, "pad", 1))
    third = build_cache(paths, 16, "pad", 1, workers=1, root=cache_dir)
    assert third.errors == {} and third.transient == []


def test_a_corrupt_file_stays_cached_as_an_error(tmp_path):
    good = str(img(tmp_path / "g.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    first = build_cache([good, str(bad)], 16, "pad", 1, workers=1, root=tmp_path / "c")
    assert list(first.errors) == [str(bad)] and first.transient == []


def test_audit_fingerprints_are_not_cached_while_a_file_is_locked(tmp_path, monkeypatch):
    from medclassify.data.fingerprints import compute_fingerprints

    paths = [str(img(tmp_path / f"{i}.png", value=i)) for i in range(3)]
    with monkeypatch.context() as m:
        deny(m, paths[0])
        fp = compute_fingerprints(paths, workers=1, root=tmp_path / "c")
    assert fp.errors == {paths[0]: "permission denied (cannot read the file)"} and fp.directory is None
    again = compute_fingerprints(paths, workers=1, root=tmp_path / "c")
    assert again.errors == {} and not again.hit


# --- links and folders ----------------------------------------------------------------------------

def test_dangling_links_and_loops_in_a_dataset_are_counted_skips(tmp_path, quiet):
    root = dataset(tmp_path / "ds")
    os.symlink(tmp_path / "gone.png", root / "a" / "dangling.png")
    os.symlink(root / "a" / "loop2.png", root / "a" / "loop1.png")
    os.symlink(root / "a" / "loop1.png", root / "a" / "loop2.png")
    (root / "b" / "sub").mkdir()
    os.symlink(root / "b", root / "b" / "sub" / "up")  # a folder link back to its own ancestor
    img(root / "b" / "sub" / "deep.png", value=77)
    index = scan_folder(root)
    assert index.skipped == {
        str(root / "a" / "dangling.png"): f"dangling symbolic link (to {tmp_path / 'gone.png'})",
        str(root / "a" / "loop1.png"): "symbolic link loop",
        str(root / "a" / "loop2.png"): "symbolic link loop",
        str(root / "b" / "sub" / "up"): f"symbolic link loop (to the folder {root / 'b'} above it)",
    }
    assert len([r for r in index.records if r.label == "b"]) == 5  # deep.png counted once, not once per loop
    data = run_prepare(root, quiet)
    assert set(index.skipped) <= set(data.skipped) and data.summary()["skipped_unreadable"] == 4
    assert any("4 unreadable file(s) skipped" in m for lvl, m in quiet.messages if lvl == "warning")


def test_a_linked_class_folder_is_followed(tmp_path):
    real = dataset(tmp_path / "elsewhere")
    root = tmp_path / "ds"
    root.mkdir()
    for c in ("a", "b"):
        os.symlink(real / c, root / c)
    assert len(scan_folder(root).records) == 8


def test_a_dangling_class_folder_link_is_listed(tmp_path):
    root = dataset(tmp_path / "ds")
    os.symlink(tmp_path / "moved", root / "c")
    index = scan_folder(root)
    assert index.classes == ["a", "b"] and index.skipped == {str(root / "c"): f"dangling symbolic link (to {tmp_path / 'moved'})"}


def lock_folder(monkeypatch, target):
    real = listing.list_entries

    def fake(folder):
        if str(folder) == str(target):
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        return real(folder)

    monkeypatch.setattr(listing, "list_entries", fake)


def test_a_locked_class_folder_is_an_unreadable_folder_not_an_empty_one(tmp_path, monkeypatch):
    root = dataset(tmp_path / "ds")
    lock_folder(monkeypatch, root / "b")
    with pytest.raises(DataError) as e:
        scan_folder(root)
    assert "cannot be read: unreadable folder (permission denied)" in str(e.value) and "hold no images" not in str(e.value)


def test_a_locked_sub_folder_is_a_listed_skip(tmp_path, monkeypatch, quiet):
    root = dataset(tmp_path / "ds")
    img(root / "a" / "more" / "x.png")
    lock_folder(monkeypatch, root / "a" / "more")
    index = scan_folder(root)
    assert index.skipped == {str(root / "a" / "more"): "unreadable folder (permission denied)"}
    assert str(root / "a" / "more") in run_prepare(root, quiet).skipped


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads through chmod 000")
def test_real_chmod_000(tmp_path, quiet):  # pragma: no cover - runs for non-root users
    root = dataset(tmp_path / "ds")
    (root / "a" / "0.png").chmod(0)
    try:
        assert run_prepare(root, quiet).skipped == {str((root / "a" / "0.png").resolve()): "permission denied (cannot read the file)"}
    finally:
        (root / "a" / "0.png").chmod(0o644)


def test_predict_folder_lists_links_and_loops_with_their_reasons(tmp_path):
    from medclassify.inference.predictor import collect_inputs

    folder = tmp_path / "in"
    img(folder / "ok.png")
    os.symlink(tmp_path / "gone.png", folder / "dangling.png")
    os.symlink(folder / "l2.png", folder / "l1.png")
    os.symlink(folder / "l1.png", folder / "l2.png")
    (folder / "sub").mkdir()
    os.symlink(folder, folder / "sub" / "up")
    paths = collect_inputs([folder])
    assert sorted(paths) == sorted(str(folder / n) for n in ("ok.png", "dangling.png", "l1.png", "l2.png", "sub/up"))
    reasons = {}
    for p in paths:
        try:
            decode(p)
        except UnreadableImage as e:
            reasons[os.path.relpath(p, folder)] = e.reason
    assert reasons == {"dangling.png": f"dangling symbolic link (to {tmp_path / 'gone.png'})",
                       "l1.png": "symbolic link loop", "l2.png": "symbolic link loop",
                       "sub/up": f"symbolic link loop (to the folder {folder} above it)"}


def test_predict_run_counts_a_dangling_link_as_a_failed_row(tiny_run, tmp_path):
    from medclassify.inference.predictor import predict_files

    folder = tmp_path / "in"
    img(folder / "ok.png", size=32)
    os.symlink(tmp_path / "gone.png", folder / "dangling.png")
    preds = predict_files(tiny_run, folder)
    by_name = {os.path.basename(p.path): p for p in preds}
    assert by_name["ok.png"].error is None
    assert by_name["dangling.png"].error.startswith("dangling symbolic link")


def test_list_image_files_signature(tmp_path):
    img(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    os.symlink(tmp_path / "nothing.txt", tmp_path / "gone.txt")  # not an image name: not an image skip
    files, skipped = listing.list_image_files(tmp_path)
    assert files == [str(tmp_path / "a.png")] and skipped == {}


def test_header_of_bytes_and_of_path_agree(tmp_path):
    path = img(tmp_path / "a.png", size=20)
    assert formats.read_header(path) == formats.read_header("x", data=path.read_bytes())
    assert formats.read_header(path).width == 20


def test_cnmc_dangling_link_is_a_listed_skip(tmp_path):
    root = tmp_path / "C-NMC_Leukemia"
    for c, uid in (("all", "UID_1_1_1_all"), ("hem", "UID_H2_1_1_hem")):
        for i in range(2):
            img(root / "training_data" / "fold_0" / c / f"{uid}{i}.bmp", value=i + (5 if c == "hem" else 0))
    link = root / "training_data" / "fold_0" / "all" / "UID_3_1_1_all.bmp"
    os.symlink(tmp_path / "gone.bmp", link)
    index = scan_folder(tmp_path)
    assert index.layout == "cnmc" and len(index.records) == 4
    assert index.skipped == {str(link): f"dangling symbolic link (to {tmp_path / 'gone.bmp'})"}


def test_channel_detection_survives_any_per_file_exception(tmp_path, monkeypatch):
    from medclassify.data import preprocessing

    paths = [str(img(tmp_path / f"{i}.png", value=i)) for i in range(5)]
    real = preprocessing.probe

    def flaky(p, **k):
        if p == paths[1]:
            raise RuntimeError("a decoder bug, not UnreadableImage")
        return real(p, **k)

    monkeypatch.setattr(preprocessing, "probe", flaky)
    assert preprocessing.detect_channels(paths) == (1, 4, 0)
