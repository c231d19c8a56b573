"""DICOM decoding on generated files: photometric interpretations, rescale, window, bit depths,
compressed transfer syntaxes pydicom decodes itself, and the files that must be refused."""

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

from medclassify.data.images import UnreadableImage, decode, probe  # noqa: E402
from medclassify.data.prepare import prepare  # noqa: E402


def write_dicom(path, pixels=None, photometric="MONOCHROME2", frames=1, **tags):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2], pixels.shape[-1]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        bits = pixels.dtype.itemsize * 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, tags.pop("BitsStored", bits), bits - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def ramp(dtype=np.uint16, hi=4095):
    return np.linspace(0, hi, 16 * 16).reshape(16, 16).astype(dtype)


def test_16bit_uses_the_stored_range_not_the_nominal_depth(tmp_path):
    arr = decode(write_dicom(tmp_path / "a.dcm", ramp(np.uint16, 4095), BitsStored=12))
    assert arr.dtype == np.uint8 and arr.shape == (16, 16)
    assert arr.min() == 0 and arr.max() == 255  # 12-bit data fills the 8-bit range


def test_monochrome1_is_inverted(tmp_path):
    pixels = ramp(np.uint16, 1000)
    m2 = decode(write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2"))
    m1 = decode(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1"))
    assert np.array_equal(m1.astype(int), 255 - m2.astype(int))


def test_rescale_then_window(tmp_path):
    # stored 0..2000 -> Hounsfield -1000..1000; a window 0 +- 100 HU shows only 900..1100 stored values
    pixels = ramp(np.uint16, 2000)
    arr = decode(write_dicom(tmp_path / "ct.dcm", pixels, RescaleSlope=1, RescaleIntercept=-1000,
                             WindowCenter=0, WindowWidth=200))
    hu = pixels.astype(float) - 1000
    assert (arr[hu <= -100] == 0).all() and (arr[hu >= 100] == 255).all()
    mid = (hu > -90) & (hu < 90)
    expected = ((hu[mid] - (0 - 0.5)) / (200 - 1) + 0.5) * 255  # DICOM PS3.3 C.11.2.1.2.1, LINEAR
    assert np.abs(arr[mid] - expected).max() <= 1.0


def test_multi_valued_window_takes_the_first(tmp_path):
    pixels = ramp(np.uint16, 1000)
    arr = decode(write_dicom(tmp_path / "w.dcm", pixels, WindowCenter=[500, 100], WindowWidth=[1000, 10]))
    first = decode(write_dicom(tmp_path / "w1.dcm", pixels, WindowCenter=500, WindowWidth=1000))
    second = decode(write_dicom(tmp_path / "w2.dcm", pixels, WindowCenter=100, WindowWidth=10))
    assert np.array_equal(arr, first) and not np.array_equal(arr, second)  # min/max/mean could not tell them apart


def test_rle_compressed_dicom_decodes_like_the_uncompressed(tmp_path):
    pixels = ramp(np.uint16, 3000)
    plain = write_dicom(tmp_path / "plain.dcm", pixels)
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    ds.save_as(str(tmp_path / "rle.dcm"))
    assert np.array_equal(decode(tmp_path / "rle.dcm"), decode(plain))


def test_dicom_without_extension_is_recognised(tmp_path):
    path = write_dicom(tmp_path / "scan.dcm", ramp())
    renamed = path.rename(tmp_path / "scan.png")
    assert probe(renamed).mode == "DICOM"


@pytest.mark.parametrize("kind, reason", [("no-pixels", "no pixel data"), ("multi-frame", "multi-frame")])
def test_refused_dicoms_say_why(tmp_path, kind, reason):
    if kind == "no-pixels":
        path = write_dicom(tmp_path / "report.dcm", None)
    else:
        path = write_dicom(tmp_path / "cine.dcm", np.zeros((3, 8, 8), np.uint16), frames=3)
    with pytest.raises(UnreadableImage, match=reason):
        decode(path)


def test_pixel_less_dicom_in_a_dataset_is_counted_not_fatal(tmp_path, quiet):
    from medclassify.data.synthetic import generate_dataset

    root = generate_dataset(tmp_path / "ds", per_class=12, size=32)
    write_dicom(root / "normal" / "report.dcm", None)
    data = prepare(str(root), image_size=32, resize="pad", channels=1, normalize="per-image", mean=(0.5,), std=(0.25,),
                   patient_pattern=None, val_fraction=0.2, test_fraction=0.2, seed=0, reporter=quiet, workers=1)
    assert list(data.skipped) == [str((root / "normal" / "report.dcm").resolve())]
    assert "no pixel data" in next(iter(data.skipped.values()))
    assert any("unreadable" in m for lvl, m in quiet.messages if lvl == "warning")
