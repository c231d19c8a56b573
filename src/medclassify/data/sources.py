"""Finding the labelled images of a dataset: class-per-folder trees (with or without split folders)
and labels CSV files. The result is a flat list of `Record`s that everything else consumes."""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import DataError
from .images import IMAGE_EXTENSIONS, is_image_file, storage_path

SPLITS = ("train", "val", "test")
# Folder names users download, mapped to our three split names (matched case-insensitively).
SPLIT_ALIASES = {
    "train": "train", "training": "train", "trn": "train", "training_data": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "tst": "test",
}


@dataclass(frozen=True)
class Record:
    path: str  # absolute path
    label: str
    split: str | None = None  # train / val / test, or None until a split is assigned
    patient: str | None = None


@dataclass
class DatasetIndex:
    root: str
    records: list[Record]
    classes: list[str]
    layout: str  # "split-folders", "class-folders", "csv"
    ignored_files: list[str] = field(default_factory=list)  # non-image files seen in class folders
    unlabelled: list[str] = field(default_factory=list)  # images the layout gives no label (left out)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            out.setdefault(r.split or "unsplit", Counter())[r.label] += 1
        return {s: dict(sorted(c.items())) for s, c in out.items()}

    def with_records(self, records: list[Record]) -> "DatasetIndex":
        return DatasetIndex(self.root, records, self.classes, self.layout, self.ignored_files, self.unlabelled)


def _split_of(name: str) -> str | None:
    return SPLIT_ALIASES.get(name.strip().lower())


def _images_below(folder: Path) -> tuple[list[Path], list[Path]]:
    images, others = [], []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            (images if is_image_file(p) else others).append(p)
    return images, [o for o in others if not o.name.startswith(".")]


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_classes(folder: Path, split: str | None) -> tuple[list[Record], list[str], list[str]]:
    records, ignored, empty = [], [], []
    for cdir in _class_folders(folder):
        images, others = _images_below(cdir)
        ignored += [str(o) for o in others]
        if not images:
            empty.append(cdir.name)
        records += [Record(str(p.resolve()), cdir.name, split) for p in images]
    return records, ignored, empty


def scan_folder(root: Path | str) -> DatasetIndex:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"Dataset folder {root} does not exist.", "check the path (relative paths start from the current folder).")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return read_labels_csv(root)
        if root.suffix.lower() == ".npz":
            from .medmnist import scan_npz

            return scan_npz(root)
        raise DataError(f"{root} is a file, not a dataset folder.", "pass a folder with one sub-folder per class, or a labels CSV.")
    from .cnmc import find_cnmc_root, scan_cnmc

    cnmc = find_cnmc_root(root)
    if cnmc is not None:
        return scan_cnmc(cnmc)
    subdirs = _class_folders(root)
    split_dirs = {d: _split_of(d.name) for d in subdirs}
    if subdirs and any(split_dirs.values()):
        unknown = [d.name for d, s in split_dirs.items() if s is None]
        if unknown:
            raise DataError(
                f"{root} mixes split folders with other folders ({', '.join(unknown)}).",
                "keep only train/val/test (or Training/Testing) at the top, with class folders inside each.",
            )
        seen: dict[str, Path] = {}
        records, ignored = [], []
        for d, split in split_dirs.items():
            if split in seen:
                raise DataError(f"{root} has two folders for the {split} split: {seen[split].name} and {d.name}.", "merge or remove one of them.")
            seen[split] = d
            recs, ign, empty = _scan_classes(d, split)
            if empty:
                raise DataError(f"Class folder(s) {', '.join(empty)} in {d} hold no images.", "remove the empty folder or add its images.")
            records += recs
            ignored += ign
        layout = "split-folders"
        if "train" not in seen:
            raise DataError(f"{root} has split folders but no train folder.", "add a train (or Training) folder with one sub-folder per class.")
    else:
        records, ignored, empty = _scan_classes(root, None)
        if empty:
            raise DataError(f"Class folder(s) {', '.join(empty)} in {root} hold no images.", "remove the empty folder or add its images.")
        layout = "class-folders"
        if not subdirs:
            loose, _ = _images_below(root) if root.is_dir() else ([], [])
            hint = "put the images in one sub-folder per class" if loose else "point to a folder with one sub-folder per class"
            raise DataError(f"{root} has no class sub-folders.", hint + f" ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    index = DatasetIndex(str(root.resolve()), records, sorted({r.label for r in records}), layout, ignored)
    check_usable(index)
    return index


def check_usable(index: DatasetIndex) -> None:
    if not index.records:
        raise DataError(f"No images found in {index.root}.", f"supported extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}.")
    if len(index.classes) < 2:
        raise DataError(
            f"{index.root} has only one class ({index.classes[0]}); a classifier needs at least two.",
            "add a folder for each other class.",
        )
    if any(r.split == "train" for r in index.records):
        train_classes = {r.label for r in index.records if r.split == "train"}
        for split in ("val", "test"):
            extra = {r.label for r in index.records if r.split == split} - train_classes
            if extra:
                raise DataError(
                    f"The {split} split of {index.root} has classes the train split lacks: {', '.join(sorted(extra))}.",
                    "add training images of those classes, fix the labels, or remove them from the other split.",
                )


def missing_classes(index: DatasetIndex) -> dict[str, list[str]]:
    """{split: classes of the dataset that split has no image of} (e.g. a test folder without a class)."""
    out = {}
    for split in sorted({r.split for r in index.records if r.split}):
        lack = set(index.classes) - {r.label for r in index.records if r.split == split}
        if lack:
            out[split] = sorted(lack)
    return out


def read_labels_csv(csv_path: Path | str, image_root: Path | str | None = None) -> DatasetIndex:
    """CSV with columns path,label and optional patient, split. Relative paths are resolved
    against `image_root` or the CSV's own folder."""
    csv_path = Path(csv_path)
    base = Path(image_root) if image_root else csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"Cannot read labels CSV {csv_path}: {e}.", "save it as UTF-8 CSV with a header row.") from None
    missing_cols = {"path", "label"} - set(fields)
    if missing_cols:
        raise DataError(
            f"Labels CSV {csv_path} lacks column(s) {', '.join(sorted(missing_cols))} (has: {', '.join(fields) or 'none'}).",
            "the header must be path,label[,patient][,split].",
        )
    records, missing, seen, dupes, bad_split = [], [], set(), [], []
    for i, row in enumerate(rows, start=2):
        if not row.get("path") or not row.get("label"):
            raise DataError(f"{csv_path} line {i} has an empty path or label.", "fill it in or delete the line.")
        p = Path(row["path"]).expanduser()
        p = p if p.is_absolute() else base / p
        key = str(p.resolve())
        if key in seen:
            dupes.append(row["path"])
            continue
        seen.add(key)
        if not Path(storage_path(key)).is_file():
            missing.append(row["path"])
            continue
        split = None
        if row.get("split"):
            split = _split_of(row["split"])
            if split is None:
                bad_split.append(f"line {i}: {row['split']!r}")
                continue
        records.append(Record(key, row["label"], split, row.get("patient") or None))
    if dupes:
        raise DataError(
            f"{csv_path} lists {len(dupes)} path(s) more than once (first: {dupes[0]}).",
            "keep one line per image.",
        )
    if bad_split:
        raise DataError(f"{csv_path} has unknown split values ({'; '.join(bad_split[:3])}).", "use train, val or test.")
    if missing:
        raise DataError(
            f"{csv_path} lists {len(missing)} file(s) that do not exist (first: {missing[0]}, looked in {base}).",
            "fix the paths, or pass the images' folder as the image root.",
        )
    layout = "csv"
    index = DatasetIndex(str(csv_path.resolve()), records, sorted({r.label for r in records}), layout)
    splits = {r.split for r in records}
    if None in splits and len(splits) > 1:
        raise DataError(f"{csv_path} gives a split for some rows but not others.", "fill the split column on every row or leave it empty on all.")
    check_usable(index)
    return index


def attach_patients(index: DatasetIndex, pattern: str | None) -> DatasetIndex:
    """Fill `patient` from a regex with a named group `patient`, matched against the file name
    (then the full path when the name does not match)."""
    if not pattern:
        return index
    rx = compile_patient_pattern(pattern)
    out = []
    for r in index.records:
        if r.patient:
            out.append(r)
            continue
        m = rx.search(Path(r.path).name) or rx.search(r.path)
        out.append(replace(r, patient=patient_from_match(m)))
    return index.with_records(out)


def patient_from_match(m: re.Match | None) -> str | None:
    """The `patient` group, or else the first other named group that matched, prefixed by its name
    (presets use extra groups for file series that number patients independently)."""
    if m is None:
        return None
    if m.group("patient"):
        return m.group("patient")
    for name, value in m.groupdict().items():
        if value:
            return f"{name}:{value}"
    return None


def compile_patient_pattern(pattern: str) -> re.Pattern:
    from .patients import PRESETS

    pattern = PRESETS.get(pattern, pattern)
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise DataError(f"Patient pattern {pattern!r} is not a valid regular expression ({e}).", "check brackets and escapes.") from None
    if "patient" not in rx.groupindex:
        raise DataError(
            f"Patient pattern {pattern!r} has no named group 'patient'.",
            r"wrap the id in (?P<patient>...), e.g. 'person(?P<patient>\d+)_'.",
        )
    return rx
