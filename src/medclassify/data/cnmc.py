"""The C-NMC 2019 leukemia dataset exactly as downloaded:

    C-NMC_Leukemia/training_data/fold_{0,1,2}/{all,hem}/UID_<P>_<img>_<cell>_{all,hem}.bmp
    C-NMC_Leukemia/validation_data/C-NMC_test_prelim_phase_data/<n>.bmp
    C-NMC_Leukemia/validation_data/C-NMC_test_prelim_phase_data_labels.csv   (Patient_ID,new_names,labels)
    C-NMC_Leukemia/testing_data/C-NMC_test_final_phase_data/<n>.bmp          (no labels published)

The three training folds become the train split, the labelled preliminary-phase images the test split
(other patients, the challenge's held-out set), and the final-phase images are left out as unlabelled.
Patient ids come from the file names (UID_<P>_ / UID_H<P>_; for the renamed test images from the
CSV's Patient_ID column, which holds the original name)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ..errors import DataError
from .images import is_image_file
from .listing import entry_problem
from .patients import PRESETS
from .sources import DatasetIndex, Record, check_usable, register_folder_reader

CLASSES = ("all", "hem")
# labels column: 1 = ALL (leukemic blast), 0 = hem (normal); the class names are accepted too.
LABELS = {"1": "all", "0": "hem", "all": "all", "hem": "hem"}
_PATIENT = re.compile(PRESETS["cnmc"])


def find_cnmc_root(root: Path) -> Path | None:
    """The C-NMC_Leukemia folder when `root` is it (or holds it), else None."""
    for cand in (root, root / "C-NMC_Leukemia"):
        td = cand / "training_data"
        if td.is_dir() and any(p.is_dir() and p.name.lower().startswith("fold_") for p in td.iterdir()):
            return cand
    return None


def _patient(name: str) -> str | None:
    m = _PATIENT.search(name)
    return m.group("patient") if m else None


def _broken_link(p: Path) -> str | None:
    """The reason an image-named link cannot be followed (dangling, loop), or None."""
    if not (p.is_symlink() and is_image_file(p)) or p.exists():
        return None
    try:
        p.stat()
    except OSError as e:
        return entry_problem(p, e)
    return None


def _train_records(root: Path, skipped: dict[str, str]) -> tuple[list[Record], list[str]]:
    records, ignored = [], []
    for fold in sorted(p for p in (root / "training_data").iterdir() if p.is_dir()):
        for cdir in sorted(p for p in fold.iterdir() if p.is_dir()):
            label = cdir.name.lower()
            if label not in CLASSES:
                raise DataError(f"Unexpected class folder {cdir} in the C-NMC training data.",
                                f"C-NMC folds hold only {' and '.join(CLASSES)}; move or remove it.")
            for p in sorted(cdir.iterdir()):
                reason = _broken_link(p)
                if reason:
                    skipped[str(p)] = reason
                elif p.is_file() and is_image_file(p):
                    records.append(Record(str(p.resolve()), label, "train", _patient(p.name)))
                elif p.is_file() and not p.name.startswith("."):
                    ignored.append(str(p))
    return records, ignored


def _labels_csv(folder: Path) -> Path | None:
    found = sorted(folder.glob("*labels*.csv"))
    return found[0] if found else None


def _test_records(root: Path) -> tuple[list[Record], list[str]]:
    vdir = root / "validation_data"
    if not vdir.is_dir():
        return [], []
    image_dirs = [p for p in vdir.iterdir() if p.is_dir()]
    images = {p.name: p for d in image_dirs for p in d.iterdir() if p.is_file() and is_image_file(p)}
    csv_path = _labels_csv(vdir)
    if csv_path is None:
        if images:
            raise DataError(f"{vdir} has {len(images)} images but no labels CSV.",
                            "put C-NMC_test_prelim_phase_data_labels.csv back next to the image folder.")
        return [], []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        need = {"patient_id", "new_names", "labels"} - set(cols)
        if need:
            raise DataError(f"{csv_path} lacks column(s) {', '.join(sorted(need))}.",
                            "use the labels CSV as downloaded (Patient_ID,new_names,labels).")
        rows = [{k: (row[c] or "").strip() for k, c in cols.items()} for row in reader]
    records, missing, unknown, seen = [], [], [], set()
    for i, row in enumerate(rows, start=2):
        name = row["new_names"]
        if name in seen:
            raise DataError(f"{csv_path} line {i} lists {name} a second time.", "keep one line per image.")
        seen.add(name)
        label = LABELS.get(row["labels"].lower())
        if label is None:
            unknown.append(f"line {i}: {row['labels']!r}")
            continue
        if name not in images:
            missing.append(name)
            continue
        patient = _patient(row["patient_id"]) or row["patient_id"] or None
        records.append(Record(str(images[name].resolve()), label, "test", patient))
    if unknown:
        raise DataError(f"{csv_path} has unknown labels ({'; '.join(unknown[:3])}).", "labels must be 1 (all) or 0 (hem).")
    if missing:
        raise DataError(f"{csv_path} lists {len(missing)} image(s) that are not in {vdir} (first: {missing[0]}).",
                        "restore the missing images or the complete download.")
    unlabelled = [str(p) for n, p in sorted(images.items()) if n not in seen]
    return records, unlabelled


def scan_cnmc(root: Path) -> DatasetIndex:
    skipped: dict[str, str] = {}
    train, ignored = _train_records(root, skipped)
    test, unlabelled = _test_records(root)
    final = root / "testing_data"
    if final.is_dir():
        unlabelled += [str(p) for p in sorted(final.rglob("*")) if p.is_file() and is_image_file(p)]
    index = DatasetIndex(str(root.resolve()), train + test, sorted({r.label for r in train + test}), "cnmc",
                         ignored, unlabelled, skipped=skipped)
    check_usable(index)
    return index


def _read_if_cnmc(root: Path) -> DatasetIndex | None:
    found = find_cnmc_root(root)
    return scan_cnmc(found) if found is not None else None


register_folder_reader(_read_if_cnmc)
