"""Bad inputs of the data layer not covered by test_sources.py: each ends in a one-line error naming the
problem and the fix (or in a counted warning), never a traceback and never a silently wrong split."""

import numpy as np
import pytest
from PIL import Image

from medclassify.cli import main
from medclassify.data.sources import attach_patients, read_labels_csv, scan_folder
from medclassify.errors import DataError


def img(path, value=100, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def test_empty_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_folder(tmp_path)


def test_split_folder_missing_a_class_is_reported_not_fatal(tmp_path):
    from medclassify.data.sources import missing_classes

    for c in "ab":
        img(tmp_path / "train" / c / "1.png")
    img(tmp_path / "test" / "a" / "2.png")
    index = scan_folder(tmp_path)
    assert missing_classes(index) == {"test": ["b"]}


def write_csv(path, rows, header="path,label,split"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_csv_same_file_spelled_two_ways(tmp_path):
    img(tmp_path / "x.png")
    csv = write_csv(tmp_path / "labels.csv", ["x.png,a,train", f"{tmp_path / 'x.png'},b,train"])
    with pytest.raises(DataError, match=r"more than once"):
        read_labels_csv(csv)


def test_csv_unknown_label_in_test(tmp_path):
    for n in "123":
        img(tmp_path / f"{n}.png")
    csv = write_csv(tmp_path / "labels.csv", ["1.png,a,train", "2.png,b,train", "3.png,tumour,test"])
    with pytest.raises(DataError, match="label .tumour. in the test rows of labels.csv is not a train class"):
        read_labels_csv(csv)


def test_csv_unknown_split_value(tmp_path):
    img(tmp_path / "1.png")
    img(tmp_path / "2.png")
    csv = write_csv(tmp_path / "labels.csv", ["1.png,a,train", "2.png,b,holdout"])
    with pytest.raises(DataError, match="unknown split values"):
        read_labels_csv(csv)


def test_csv_patient_column_is_read(tmp_path):
    img(tmp_path / "1.png")
    img(tmp_path / "2.png")
    csv = write_csv(tmp_path / "labels.csv", ["1.png,a,p7", "2.png,b,p7"], header="path,label,patient")
    assert {r.patient for r in read_labels_csv(csv).records} == {"p7"}


def test_preset_names_are_patterns(tmp_path):
    img(tmp_path / "a" / "person12_virus_3.png")
    img(tmp_path / "b" / "UID_H7_1_2_hem.png")
    kermany = attach_patients(scan_folder(tmp_path), "kermany").records
    assert {r.patient for r in kermany} == {"12", None}
    cnmc = attach_patients(scan_folder(tmp_path), "cnmc").records
    assert {r.patient for r in cnmc} == {None, "H7"}


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "does not exist" in err[0]
    assert not (tmp_path / "out").exists()
