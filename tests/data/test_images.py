import numpy as np
import pytest
from PIL import Image

from medclassify.data.images import UnreadableImage, decode, is_gray_content, load_for_model, probe, resize, to_channels


def test_grey_stored_as_rgb_is_detected(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8)
    Image.fromarray(np.repeat(grey[..., None], 3, 2)).save(tmp_path / "g.jpg", quality=90)
    Image.fromarray(np.stack([grey, grey // 2, 255 - grey], 2)).save(tmp_path / "c.png")
    info = probe(tmp_path / "g.jpg")
    assert info.mode == "RGB" and info.gray_content
    assert not probe(tmp_path / "c.png").gray_content
    assert is_gray_content(grey)


def test_sixteen_bit_png_uses_its_own_range(tmp_path):
    arr = np.linspace(1000, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)  # 12-bit data in 16-bit
    Image.fromarray(arr).save(tmp_path / "x16.png")
    out = decode(tmp_path / "x16.png")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_palette_and_rgba_become_rgb(tmp_path):
    Image.new("P", (10, 10), 3).save(tmp_path / "p.png")
    Image.new("RGBA", (10, 10), (10, 20, 30, 128)).save(tmp_path / "a.png")
    assert decode(tmp_path / "p.png").shape == (10, 10, 3)
    assert decode(tmp_path / "a.png").shape == (10, 10, 3)


@pytest.mark.parametrize("content,reason", [(b"", "empty file"), (b"not an image at all", "not a PNG, JPEG")])
def test_unreadable_files_have_reasons(tmp_path, content, reason):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(UnreadableImage, match=reason):
        decode(p)


def test_truncated_jpeg(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match="corrupt or truncated"):
        decode(tmp_path / "t.jpg")


def test_pad_keeps_aspect_ratio_and_squash_does_not():
    arr = np.full((50, 100, 1), 200, np.uint8)
    padded = resize(arr, 32, "pad")
    assert padded.shape == (32, 32, 1)
    assert padded[0, 16, 0] == 0 and padded[16, 16, 0] == 200  # black bands above and below
    assert (resize(arr, 32, "squash") == 200).all()


def test_channels_conversion():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 100
    assert to_channels(rgb, 1).shape == (4, 4, 1)
    assert to_channels(rgb, 1)[0, 0, 0] == round(100 * 0.587)
    assert to_channels(np.zeros((4, 4), np.uint8), 3).shape == (4, 4, 3)


def test_load_for_model_shape(tmp_path):
    Image.fromarray(np.zeros((300, 120), np.uint8)).save(tmp_path / "x.jpg")
    assert load_for_model(tmp_path / "x.jpg", 64, "pad", 3).shape == (64, 64, 3)


def test_grey_stored_as_rgb_gives_the_same_luma_as_the_formula():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    grey_rgb = np.repeat(levels[..., None], 3, axis=2)
    formula = (grey_rgb[..., 0] * 0.299 + grey_rgb[..., 1] * 0.587 + grey_rgb[..., 2] * 0.114 + 0.5).astype(np.uint8)
    assert np.array_equal(to_channels(grey_rgb, 1)[..., 0], formula)
    colour = grey_rgb.copy()
    colour[0, 0] = (200, 10, 30)  # one coloured pixel sends the whole image through the formula
    assert to_channels(colour, 1)[0, 0, 0] == int(200 * 0.299 + 10 * 0.587 + 30 * 0.114 + 0.5)
    assert np.array_equal(to_channels(colour, 1)[1:, :, 0], levels[1:])
