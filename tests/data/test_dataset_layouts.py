"""Datasets read as the user meant: a held-out label absent from train names the nearest train class,
extra top-level folders are listed and left out, --splits names the split folders, and a .npz that
is not a MedMNIST archive is a one-line error."""

import os

import numpy as np
import pytest
from PIL import Image

from medclassify.data.audit import audit_dataset, summary_lines
from medclassify.data.medmnist import scan_npz
from medclassify.data.prepare import prepare
from medclassify.data.sources import parse_splits, read_labels_csv, scan_folder
from medclassify.errors import ConfigError, DataError


def img(path, value=100, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(value).integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


def split_tree(root, splits=("train", "test"), classes=("NORMAL", "PNEUMONIA"), n=3):
    for s in splits:
        for c in classes:
            for i in range(n):
                img(root / s / c / f"{i}.png", value=hash((s, c, i)) % 1000)
    return root


def test_label_typo_in_test_rows_names_the_nearest_train_label(tmp_path):
    rows = []
    for i, (label, split) in enumerate([("NORMAL", "train"), ("PNEUMONIA", "train"), ("NORMAL", "test"), ("NORMAl", "test")]):
        img(tmp_path / f"{i}.png", value=i)
        rows.append(f"{i}.png,{label},{split}")
    (tmp_path / "labels.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as e:
        read_labels_csv(tmp_path / "labels.csv")
    assert e.value.message == "label 'NORMAl' in the test rows of labels.csv is not a train class; did you mean 'NORMAL'?"
    assert e.value.fix


def test_class_folder_typo_in_test_names_the_nearest_train_class(tmp_path):
    root = split_tree(tmp_path / "ds")
    img(root / "test" / "Pneumonia" / "x.png")
    with pytest.raises(DataError, match=r"class folder 'Pneumonia' in the test split of .* is not a train class; did you mean 'PNEUMONIA'\?"):
        scan_folder(root)


def test_extra_top_level_folder_is_listed_and_left_out(tmp_path, quiet):
    root = split_tree(tmp_path / "ds", n=4)
    split_tree(root / "External", splits=("",), n=2)  # External/NORMAL, External/PNEUMONIA
    index = scan_folder(root)
    assert index.left_out == [str(root / "External")]
    assert not any("External" in r.path for r in index.records) and {r.split for r in index.records} == {"train", "test"}
    data = prepare(str(root), image_size=16, resize="pad", channels=1, normalize="fixed", mean=(0.5,), std=(0.25,),
                   patient_pattern=None, val_fraction=0.25, test_fraction=0.25, seed=0, reporter=quiet, workers=1)
    warnings = [m for lvl, m in quiet.messages if lvl == "warning"]
    assert any("left out: External" in m and "--splits train=train,test=External." in m for m in warnings)
    assert data.index.left_out == [str(root / "External")]
    lines = summary_lines(audit_dataset(root).report)
    assert any(line.startswith("Left out: 1 top-level folder(s)") and "External" in line for line in lines)


def test_splits_option_names_the_folders(tmp_path):
    root = tmp_path / "ds"
    split_tree(root / "Training", splits=("",))
    split_tree(root / "External", splits=("",), n=2)
    split_tree(root / "Testing", splits=("",), n=1)
    index = scan_folder(root, "train=Training,test=External")
    by_split = {s: sum(1 for r in index.records if r.split == s) for s in ("train", "test")}
    assert by_split == {"train": 6, "test": 4} and index.left_out == [str(root / "Testing")]
    assert all("/External/" in r.path for r in index.records if r.split == "test")


@pytest.mark.parametrize("text, match", [
    ("train=Training,test", "has no '='"),
    ("holdout=External", "not train, val or test"),
    ("test=External", "names no train folder"),
    ("train=A,train=B", "twice"),
    ("train=A,test=A", "one folder for two splits"),
])
def test_bad_splits_option_is_a_one_line_error(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        parse_splits(text)


def test_splits_option_naming_a_missing_folder_lists_the_folders(tmp_path):
    root = split_tree(tmp_path / "ds")
    with pytest.raises(DataError, match=r"no such folder \(it has: test, train\)"):
        scan_folder(root, "train=train,test=External")


def test_splits_on_the_cli_train_and_audit(tmp_path, capsys):
    from medclassify.cli import main

    root = tmp_path / "ds"
    split_tree(root / "Training", splits=("",), n=4)
    split_tree(root / "External", splits=("",), n=2)
    code = main(["audit", str(root), "--out", str(tmp_path / "audit"), "--splits", "train=Training,test=External", "-q"])
    out = capsys.readouterr()
    assert code in (0, None), out.err
    import json
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report["counts"] == {"test": {"NORMAL": 2, "PNEUMONIA": 2}, "train": {"NORMAL": 4, "PNEUMONIA": 4}}
    code = main(["train", str(root), "--out", str(tmp_path / "run"), "--splits", "train=Training,test=Nope",
                 "--model", "seed_cnn", "--epochs", "1", "--pretrained", "none", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no such folder" in err[0]


# --- .npz ------------------------------------------------------------------------------------------

def test_random_bytes_npz_is_one_line_and_never_suggests_pickles(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(DataError) as e:
        scan_npz(path)
    assert e.value.message == f"{path} is not a MedMNIST .npz (not a zip archive of arrays)."
    assert "pickle" not in str(e.value).lower() and "\n" not in str(e.value)


def test_npz_with_object_arrays_is_refused_without_loading_them(tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.array([0, None], dtype=object))
    with pytest.raises(DataError, match=r"not a MedMNIST \.npz \(it holds Python objects, which are never loaded\)") as e:
        scan_npz(path)
    assert "allow_pickle" not in str(e.value)


def test_npz_with_string_labels_is_one_line(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, train_images=np.zeros((3, 8, 8), np.uint8), train_labels=np.array(["cat", "dog", "cat"]))
    with pytest.raises(DataError, match=r"train_labels holds <U3 values \(cat, dog, cat\.\.\.\), not class numbers") as e:
        scan_npz(path)
    assert "\n" not in str(e.value)


def test_npz_with_float_integer_labels_is_accepted(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.array([0.0, 1.0, 0.0, 1.0]))
    assert scan_npz(path).classes == ["0", "1"]
