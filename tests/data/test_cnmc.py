"""The C-NMC leukemia download, rebuilt with small generated images from the official file list."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclassify.data.sources import scan_folder
from medclassify.errors import DataError
FILELIST = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "reference" / "cnmc_leukemia_official_filelist.txt"
PER_FOLDER = 6  # images kept per class folder / test folder: the real layout, a fraction of its size


def build_tree(root, labels_rows=None):
    """Same-layout tree: a subset of every folder of the official list, 8x8 BMPs; the labels CSV of
    the preliminary test images (Patient_ID holds the original name, labels 1 = all, 0 = hem)."""
    if not FILELIST.is_file():
        pytest.skip(f"{FILELIST} is absent (the C-NMC file list lives in ../shared/datasets/reference)")
    lines = [line.strip() for line in FILELIST.read_text().splitlines() if line.strip()]
    kept, per_folder = [], {}
    for line in lines:
        folder = line.rsplit("/", 1)[0]
        if line.endswith(".bmp") and per_folder.get(folder, 0) < PER_FOLDER:
            per_folder[folder] = per_folder.get(folder, 0) + 1
            kept.append(line)
    rng = np.random.default_rng(0)
    for rel in kept:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    prelim = sorted(p for p in kept if "test_prelim_phase_data/" in p)
    csv_rel = next(line for line in lines if line.endswith("_labels.csv"))
    rows = labels_rows if labels_rows is not None else [
        (f"UID_{60 + k}_1_1_{'all' if k % 2 else 'hem'}.bmp", p.rsplit("/", 1)[1], str(k % 2)) for k, p in enumerate(prelim)]
    with open(root / csv_rel, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Patient_ID", "new_names", "labels"])
        w.writerows(rows)
    return root / "C-NMC_Leukemia", kept


def test_cnmc_layout_is_recognised(tmp_path):
    root, kept = build_tree(tmp_path)
    for where in (root, tmp_path):  # the C-NMC_Leukemia folder, or the folder it was unpacked in
        index = scan_folder(where)
        assert index.layout == "cnmc" and index.classes == ["all", "hem"]
        train = [r for r in index.records if r.split == "train"]
        test = [r for r in index.records if r.split == "test"]
        assert len(train) == sum("training_data/" in k for k in kept) == 6 * PER_FOLDER
        assert len(test) == PER_FOLDER
        for r in train:  # label from the folder, patient from UID_<P>_ / UID_H<P>_
            m = re.match(r"UID_(H?\d+)_.*_(all|hem)\.bmp", r.path.rsplit("/", 1)[1])
            assert (r.patient, r.label) == (m.group(1), m.group(2))
        assert {r.label for r in test} == {"all", "hem"}
        assert all(r.patient and r.patient.isdigit() for r in test)
        assert len(index.unlabelled) == PER_FOLDER  # the final-phase images carry no labels


def test_cnmc_unknown_label_value(tmp_path):
    root, _ = build_tree(tmp_path, labels_rows=[("UID_1_1_1_all.bmp", "1.bmp", "2")])
    with pytest.raises(DataError, match="unknown labels"):
        scan_folder(root)


def test_cnmc_label_row_without_image(tmp_path):
    root, _ = build_tree(tmp_path, labels_rows=[("UID_1_1_1_all.bmp", "99999.bmp", "1")])
    with pytest.raises(DataError, match="not in"):
        scan_folder(root)


def test_cnmc_audit_knows_the_patients_without_a_pattern(tmp_path):
    from medclassify.data.audit import audit_dataset

    root, _ = build_tree(tmp_path)
    report = audit_dataset(root).report
    assert report["layout"] == "cnmc" and report["unlabelled_images"] == PER_FOLDER
    assert report["patients"]["images_with_id"] == report["images"]
    assert report["exact_duplicates"]["groups"] == 0  # every generated image is distinct
