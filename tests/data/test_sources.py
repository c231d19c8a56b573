
import numpy as np
import pytest
from PIL import Image

from medclassify.data.sources import attach_patients, read_labels_csv, scan_folder
from medclassify.data.synthetic import generate_dataset
from medclassify.errors import DataError


def write(path, arr=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr if arr is not None else np.full((8, 8), 100, np.uint8)).save(path, format=fmt)
    return path


@pytest.mark.parametrize("names", [("train", "val", "test"), ("Training", "Testing"), ("TRAIN", "TEST")])
def test_split_folder_names_any_case(tmp_path, names):
    for s in names:
        for c in ("a", "b"):
            write(tmp_path / s / c / "x.png")
    index = scan_folder(tmp_path)
    assert index.layout == "split-folders"
    expected = {"train": "train", "val": "val", "test": "test", "training": "train", "testing": "test"}
    assert {r.split for r in index.records} == {expected[s.lower()] for s in names}


def test_class_names_with_spaces_and_parentheses_and_all_extensions(tmp_path):
    exts = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "JPG"]
    for i, ext in enumerate(exts):
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "JPG": "JPEG", "tif": "TIFF", "tiff": "TIFF"}.get(ext)
        write(tmp_path / "glioma tumor (grade 2)" / f"image({i}).{ext}", fmt=fmt)
        write(tmp_path / "no tumor" / f"image({i}).{ext}", fmt=fmt)
    index = scan_folder(tmp_path)
    assert index.classes == ["glioma tumor (grade 2)", "no tumor"]
    assert len(index.records) == 2 * len(exts)
    assert index.layout == "class-folders"


def test_non_image_files_are_counted_not_loaded(tmp_path):
    write(tmp_path / "a" / "1.png")
    write(tmp_path / "b" / "1.png")
    (tmp_path / "a" / "notes.txt").write_text("hello")
    index = scan_folder(tmp_path)
    assert len(index.records) == 2
    assert [p.endswith("notes.txt") for p in index.ignored_files] == [True]


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "nope")


def test_one_class_is_refused(tmp_path):
    write(tmp_path / "only" / "1.png")
    with pytest.raises(DataError, match="only one class"):
        scan_folder(tmp_path)


def test_empty_class_is_refused(tmp_path):
    write(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="hold no images"):
        scan_folder(tmp_path)


def test_split_with_unknown_class(tmp_path):
    write(tmp_path / "train" / "a" / "1.png")
    write(tmp_path / "train" / "b" / "1.png")
    write(tmp_path / "test" / "c" / "1.png")
    with pytest.raises(DataError, match=r"class folder 'c' in the test split of .* is not a train class \(train classes: a, b\)"):
        scan_folder(tmp_path)


def test_no_class_folders(tmp_path):
    write(tmp_path / "1.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_folder(tmp_path)


def test_labels_csv(tmp_path):
    write(tmp_path / "img" / "1.png")
    write(tmp_path / "img" / "2.png")
    write(tmp_path / "img" / "3.png")
    (tmp_path / "labels.csv").write_text("path,label,patient,split\nimg/1.png,a,p1,train\nimg/2.png,b,p2,train\n"
                                         f"{tmp_path / 'img' / '3.png'},a,p3,test\n")
    index = read_labels_csv(tmp_path / "labels.csv")
    assert [(r.label, r.patient, r.split) for r in index.records] == [("a", "p1", "train"), ("b", "p2", "train"), ("a", "p3", "test")]
    assert scan_folder(tmp_path / "labels.csv").classes == ["a", "b"]


def test_labels_csv_missing_file(tmp_path):
    write(tmp_path / "1.png")
    (tmp_path / "labels.csv").write_text("path,label\n1.png,a\n2.png,b\n")
    with pytest.raises(DataError, match="1 file\\(s\\) that do not exist \\(first: 2.png"):
        read_labels_csv(tmp_path / "labels.csv")


def test_labels_csv_duplicate_and_bad_columns(tmp_path):
    write(tmp_path / "1.png")
    write(tmp_path / "2.png")
    (tmp_path / "dup.csv").write_text("path,label\n1.png,a\n1.png,b\n2.png,b\n")
    with pytest.raises(DataError, match="more than once"):
        read_labels_csv(tmp_path / "dup.csv")
    (tmp_path / "cols.csv").write_text("file,class\n1.png,a\n")
    with pytest.raises(DataError, match="lacks column"):
        read_labels_csv(tmp_path / "cols.csv")


def test_patient_pattern_and_presets(tmp_path):
    data = generate_dataset(tmp_path, per_class=4, size=16, images_per_patient=2)
    index = attach_patients(scan_folder(data), r"person(?P<patient>\d+)_")
    assert all(r.patient for r in index.records)
    assert len({r.patient for r in index.records}) == 4
    with pytest.raises(DataError, match="no named group 'patient'"):
        attach_patients(scan_folder(data), r"person(\d+)_")
    with pytest.raises(DataError, match="not a valid regular expression"):
        attach_patients(scan_folder(data), r"person(")


def test_kermany_preset_reads_every_file_name_form():
    import re

    from medclassify.data.patients import PRESETS
    from medclassify.data.sources import patient_from_match

    rx = re.compile(PRESETS["kermany"])
    assert patient_from_match(rx.search("person1234_bacteria_5678.jpeg")) == "1234"
    assert patient_from_match(rx.search("IM-0115-0001.jpeg")) == "im:0115"
    assert patient_from_match(rx.search("NORMAL2-IM-0115-0001.jpeg")) == "normal2:0115"
