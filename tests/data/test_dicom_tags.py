"""DICOM read right: pydicom's Modality LUT / VOI LUT / VOILUTFunction pipeline, malformed tags as
skips with the tag named, and the pixel limit from the header before any pixel is decoded."""

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import RLELossless  # noqa: E402

from medclassify.data import dicom as dicom_module  # noqa: E402
from medclassify.data.formats import read_header  # noqa: E402
from medclassify.data.images import UnreadableImage, decode  # noqa: E402
from medclassify.data.prepare import prepare  # noqa: E402

from .test_dicom import ramp, write_dicom  # noqa: E402


def corrupt_tag(path, good: bytes, bad: bytes):
    """Replace a tag's written value bytes (same length) so the file holds what no writer would."""
    raw = path.read_bytes()
    assert raw.count(good) == 1 and len(good) == len(bad)
    path.write_bytes(raw.replace(good, bad))
    return path


@pytest.mark.parametrize("tag, good, bad", [
    ("WindowCenter", b"500.0 ", b"abc.0 "),
    ("WindowWidth", b"1234.0", b"wide!!"),
    ("RescaleSlope", b"3.0 ", b"x.y "),
])
def test_non_numeric_display_tag_is_a_skip_naming_the_tag(tmp_path, tag, good, bad):
    tags = {"WindowCenter": 500, "WindowWidth": 1234, "RescaleSlope": 3, "RescaleIntercept": 0}
    path = corrupt_tag(write_dicom(tmp_path / "a.dcm", ramp(), **tags), good, bad)
    with pytest.raises(UnreadableImage, match=f"DICOM tag {tag} is not a number"):
        decode(path)


@pytest.mark.parametrize("tag, good, bad", [("NumberOfFrames", b"1 ", b"x "), ("Rows", None, None)])
def test_non_numeric_geometry_tag_is_a_skip(tmp_path, tag, good, bad):
    path = write_dicom(tmp_path / "a.dcm", ramp(), **({"NumberOfFrames": 1} if tag == "NumberOfFrames" else {}))
    if tag == "Rows":  # Rows is US (binary): replace it by a text element of the same tag
        ds = pydicom.dcmread(path)
        del ds["Rows"]
        ds.add_new(0x00280010, "IS", "16")
        ds.save_as(path)
        corrupt_tag(path, b"IS\x02\x0016", b"IS\x02\x00xx")
    else:
        corrupt_tag(path, good, bad)
    with pytest.raises(UnreadableImage, match=f"{tag} is not a number"):
        decode(path)


def test_bad_dicom_in_a_dataset_never_aborts_channel_detection(tmp_path, quiet):
    from medclassify.data.synthetic import generate_dataset

    root = generate_dataset(tmp_path / "ds", per_class=6, size=24)
    bad = corrupt_tag(write_dicom(root / "normal" / "w.dcm", ramp(), WindowCenter=500, WindowWidth=900),
                      b"500.0 ", b"abc.0 ")
    frames = corrupt_tag(write_dicom(root / "normal" / "f.dcm", ramp(), NumberOfFrames=1), b"1 ", b"x ")
    data = prepare(str(root), image_size=24, resize="pad", channels="auto", normalize="fixed", mean=(0.5,), std=(0.25,),
                   patient_pattern=None, val_fraction=0.2, test_fraction=0.2, seed=0, reporter=quiet, workers=1)
    assert data.skipped == {str(bad.resolve()): "DICOM tag WindowCenter is not a number ('abc.0')",
                            str(frames.resolve()): "DICOM tag NumberOfFrames is not a number ('x')"}
    assert str(bad.resolve()) not in {r.path for r in data.records}


def lut_item(descriptor, data):
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)
    item.add_new(0x00283006, "US", data)
    return item


def test_modality_lut_sequence_is_applied(tmp_path):
    pixels = np.arange(256, dtype=np.uint16).reshape(16, 16) % 4  # stored values 0..3
    item = lut_item([4, 0, 16], [0, 3000, 1000, 2000])  # stored 1 is the brightest after the LUT
    item.ModalityLUTType = "OD"
    path = write_dicom(tmp_path / "m.dcm", pixels, ModalityLUTSequence=[item])
    arr = decode(path)
    assert arr[pixels == 1].min() == 255 and arr[pixels == 0].max() == 0
    assert arr[pixels == 3].mean() > arr[pixels == 2].mean()  # 2000 > 1000: the LUT's order, not the stored order


def test_voi_lut_sequence_is_preferred_to_the_window(tmp_path):
    pixels = np.arange(256, dtype=np.uint16).reshape(16, 16) % 4
    item = lut_item([4, 0, 8], [255, 0, 0, 0])  # only stored 0 shows bright
    path = write_dicom(tmp_path / "v.dcm", pixels, VOILUTSequence=[item], WindowCenter=2, WindowWidth=4)
    arr = decode(path)
    assert (arr[pixels == 0] == 255).all() and (arr[pixels != 0] == 0).all()


def test_voi_lut_function_sigmoid_differs_from_linear(tmp_path):
    pixels = ramp(np.uint16, 1000)
    linear = decode(write_dicom(tmp_path / "l.dcm", pixels, WindowCenter=500, WindowWidth=400))
    sigmoid = decode(write_dicom(tmp_path / "s.dcm", pixels, WindowCenter=500, WindowWidth=400, VOILUTFunction="SIGMOID"))
    assert (linear[pixels < 300] == 0).all()  # LINEAR clips below the window
    assert sigmoid[pixels < 300].min() >= 0 and 0 < sigmoid[pixels == pixels[pixels < 300].max()][0] < 255
    assert not np.array_equal(linear, sigmoid)


def test_monochrome1_window_is_inverted(tmp_path):
    pixels = ramp(np.uint16, 1000)
    m2 = decode(write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", WindowCenter=500, WindowWidth=400))
    m1 = decode(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1", WindowCenter=500, WindowWidth=400))
    assert np.array_equal(m1.astype(int), 255 - m2.astype(int))


def test_unknown_voi_function_is_a_skip(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", ramp(), WindowCenter=500, WindowWidth=400, VOILUTFunction="CUBIC")
    with pytest.raises(UnreadableImage, match="VOI LUT"):
        decode(path)


def test_huge_rle_dicom_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    """A 12000x12000 RLE file of a few kB: the header alone refuses it (nothing is decoded)."""
    path = write_dicom(tmp_path / "bomb.dcm", ramp(np.uint8, 255))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 12000
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    assert path.stat().st_size < 10_000
    header = read_header(path)
    assert (header.format, header.width, header.height) == ("DICOM", 12000, 12000)

    def must_not_decode(*a, **k):
        raise AssertionError("the pixel data was decoded")

    monkeypatch.setattr(dicom_module, "read_dicom", must_not_decode)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(must_not_decode))
    with pytest.raises(UnreadableImage, match="12000x12000 = 144 megapixels is over the 120-megapixel limit"):
        decode(path)
    with pytest.raises(UnreadableImage, match="megapixel limit"):
        decode(path, data=path.read_bytes())  # the server's path: bytes in memory
