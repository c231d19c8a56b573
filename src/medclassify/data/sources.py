"""Finding the labelled images of a dataset: class-per-folder trees (with or without split folders)
and labels CSV files. The result is a flat list of `Record`s that everything else consumes."""

from __future__ import annotations

import csv
import difflib
import re
from typing import Callable
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ConfigError, DataError
from .images import IMAGE_EXTENSIONS, storage_path
from .listing import entry_problem, folder_problem, list_entries, sort_walk, walk_files
from .patients import PRESETS

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
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason: links and folders that cannot be read
    left_out: list[str] = field(default_factory=list)  # top-level folders beside the split folders, not used

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            out.setdefault(r.split or "unsplit", Counter())[r.label] += 1
        return {s: dict(sorted(c.items())) for s, c in out.items()}

    def with_records(self, records: list[Record]) -> "DatasetIndex":
        return DatasetIndex(self.root, records, self.classes, self.layout, self.ignored_files, self.unlabelled,
                            self.skipped, self.left_out)


def _split_of(name: str) -> str | None:
    return SPLIT_ALIASES.get(name.strip().lower())


def _images_below(folder: Path) -> tuple[list[Path], list[Path], dict[str, str]]:
    """(images, non-image files, {path: reason} of what could not be read) below a readable folder."""
    images, others, bad, other_bad = sort_walk(*walk_files(folder))
    return images, others + [Path(o) for o in other_bad], bad


def _top_folders(folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Sub-folders (links followed, hidden ones left out), and {path: reason} of entries that cannot be followed."""
    try:
        entries = list_entries(folder)
    except OSError as e:
        raise DataError(f"Cannot list {folder}: {folder_problem(folder, e)}.", "make it readable (chmod -R u+rX) or pass another folder.") from None
    dirs, bad = [], {}
    for e in entries:
        if e.name.startswith("."):
            continue
        path = folder / e.name
        try:
            if path.is_dir():
                dirs.append(path)
        except OSError as err:
            bad[str(path)] = entry_problem(path, err)
            continue
        if e.is_symlink() and not path.exists():
            bad[str(path)] = entry_problem(path, _stat_error(path))
    return dirs, bad


def _stat_error(path: Path) -> OSError:
    try:
        path.stat()
    except OSError as e:
        return e
    return OSError("unknown")


def _class_folders(folder: Path) -> list[Path]:
    return _top_folders(folder)[0]


def _scan_classes(folder: Path, split: str | None) -> tuple[list[Record], list[str], list[str], dict[str, str]]:
    records, ignored, empty = [], [], []
    cdirs, skipped = _top_folders(folder)
    for cdir in cdirs:
        try:
            images, others, bad = _images_below(cdir)
        except OSError as e:
            raise DataError(f"Class folder {cdir} cannot be read: {folder_problem(cdir, e)}.",
                            "make it readable (chmod -R u+rX), or move it out of the dataset.") from None
        ignored += [str(o) for o in others if not o.name.startswith(".")]
        skipped.update(bad)
        if not images:
            empty.append(cdir.name)
        records += [Record(str(p.resolve()), cdir.name, split) for p in images]
    return records, ignored, empty, skipped


def parse_splits(text: str | dict | None) -> dict[str, str] | None:
    """'train=Training,test=External' -> {'train': 'Training', 'test': 'External'} (split -> folder name)."""
    if not text:
        return None
    if isinstance(text, dict):
        pairs = list(text.items())
    else:
        pairs = []
        for part in str(text).split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ConfigError(f"Cannot read --splits {text!r}: {part.strip()!r} has no '='.",
                                  "write it as split=folder pairs, e.g. --splits train=Training,test=External.")
            k, v = part.split("=", 1)
            pairs.append((k, v))
    out: dict[str, str] = {}
    for k, v in pairs:
        split, folder = _split_of(str(k)), str(v).strip()
        if split is None or not folder:
            raise ConfigError(f"Cannot read --splits {text!r}: {str(k).strip()!r} is not train, val or test, or the folder is empty.",
                              "write it as split=folder pairs, e.g. --splits train=Training,test=External.")
        if split in out:
            raise ConfigError(f"--splits names the {split} split twice.", "give each split one folder.")
        out[split] = folder
    if "train" not in out:
        raise ConfigError(f"--splits {text!r} names no train folder.", "add train=FOLDER.")
    if len(set(out.values())) < len(out):
        raise ConfigError(f"--splits {text!r} names one folder for two splits.", "give each split its own folder.")
    return out


def _named_split_dirs(root: Path, subdirs: list[Path], splits: dict[str, str]) -> dict[Path, str | None]:
    """The user's split -> folder names, matched exactly or else case-insensitively; other folders map to None."""
    by_name = {d.name: d for d in subdirs}
    chosen: dict[Path, str | None] = {d: None for d in subdirs}
    for split, name in splits.items():
        d = by_name.get(name) or next((x for x in subdirs if x.name.lower() == name.lower()), None)
        if d is None:
            raise DataError(f"--splits names folder {name!r} for the {split} split, but {root} has no such folder "
                            f"(it has: {', '.join(sorted(by_name)) or 'none'}).", "fix the folder name in --splits.")
        chosen[d] = split
    return chosen


# Readers of other dataset layouts register themselves (compose: .yaml/.yml specs, medmnist: .npz,
# cnmc: its folder layout) and data/__init__ imports them, so this module never imports its readers.
FILE_READERS: dict[str, Callable[[Path], DatasetIndex]] = {}
FOLDER_READERS: list[Callable[[Path], DatasetIndex | None]] = []


def register_file_reader(suffixes: tuple[str, ...], reader: Callable[[Path], DatasetIndex]) -> None:
    FILE_READERS.update({s: reader for s in suffixes})


def register_folder_reader(reader: Callable[[Path], DatasetIndex | None]) -> None:
    """`reader(root)` returns the index when it recognises the folder's layout, else None."""
    FOLDER_READERS.append(reader)


def scan_folder(root: Path | str, splits: str | dict | None = None) -> DatasetIndex:
    """The labelled images of a dataset. `splits` names which top-level folder is which split
    ('train=Training,test=External'); without it, folders named like splits are recognised."""
    root = Path(root).expanduser()
    named = parse_splits(splits)
    if not root.exists():
        if root.is_symlink():
            raise DataError(f"Dataset folder {root} is a {entry_problem(root, _stat_error(root))}.", "point the link at the dataset, or pass the dataset itself.")
        raise DataError(f"Dataset folder {root} does not exist.", "check the path (relative paths start from the current folder).")
    if root.is_file():
        if named:
            raise ConfigError(f"--splits applies to a dataset folder, and {root} is a file.", "leave --splits out, or give the split column / folders in the file.")
        if root.suffix.lower() == ".csv":
            return read_labels_csv(root)
        if root.suffix.lower() in FILE_READERS:
            return FILE_READERS[root.suffix.lower()](root)
        raise DataError(f"{root} is a file, not a dataset folder.", "pass a folder with one sub-folder per class, a labels CSV or a dataset spec YAML.")
    for reader in FOLDER_READERS if not named else ():
        index = reader(root)
        if index is not None:
            return index
    subdirs, skipped = _top_folders(root.absolute())  # skipped paths absolute, links unresolved
    split_dirs = _named_split_dirs(root, subdirs, named) if named else {d: _split_of(d.name) for d in subdirs}
    left_out: list[str] = []
    if subdirs and any(split_dirs.values()):
        left_out = [str(d) for d, s in split_dirs.items() if s is None]
        seen: dict[str, Path] = {}
        records, ignored = [], []
        for d, split in split_dirs.items():
            if split is None:
                continue
            if split in seen:
                raise DataError(f"{root} has two folders for the {split} split: {seen[split].name} and {d.name}.",
                                "merge or remove one of them, or say which is which with --splits train=FOLDER,test=FOLDER.")
            seen[split] = d
            recs, ign, empty, bad = _scan_classes(d, split)
            if empty:
                raise DataError(f"Class folder(s) {', '.join(empty)} in {d} hold no images.", "remove the empty folder or add its images.")
            records += recs
            ignored += ign
            skipped.update(bad)
        layout = "split-folders"
        if "train" not in seen:
            raise DataError(f"{root} has split folders but no train folder.",
                            "add a train (or Training) folder with one sub-folder per class, or name it with --splits train=FOLDER.")
    else:
        records, ignored, empty, bad = _scan_classes(root.absolute(), None)
        skipped.update(bad)
        if empty:
            raise DataError(f"Class folder(s) {', '.join(empty)} in {root} hold no images.", "remove the empty folder or add its images.")
        layout = "class-folders"
        if not subdirs:
            loose = [e for e in list_entries(root) if Path(e.name).suffix.lower() in IMAGE_EXTENSIONS]
            hint = "put the images in one sub-folder per class" if loose else "point to a folder with one sub-folder per class"
            raise DataError(f"{root} has no class sub-folders.", hint + f" ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    index = DatasetIndex(str(root.resolve()), records, sorted({r.label for r in records}), layout, ignored,
                         skipped=dict(sorted(skipped.items())), left_out=left_out)
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
        train_classes = sorted({r.label for r in index.records if r.split == "train"})
        for split in ("val", "test"):
            extra = sorted({r.label for r in index.records if r.split == split} - set(train_classes))
            if extra:
                raise DataError(_not_a_train_class(index, split, extra, train_classes),
                                "fix the label, or add training images of that class.")


def _not_a_train_class(index: DatasetIndex, split: str, extra: list[str], train_classes: list[str]) -> str:
    """E.g. label 'NORMAl' in the test rows of labels.csv is not a train class; did you mean 'NORMAL'?"""
    label = extra[0]
    where = (f"label {label!r} in the {split} rows of {Path(index.root).name}" if index.layout == "csv"
             else f"class folder {label!r} in the {split} split of {index.root}")
    close = difflib.get_close_matches(label, train_classes, n=1, cutoff=0.6)
    if not close:  # case-only typos score low on short names
        close = [c for c in train_classes if c.lower() == label.lower()][:1]
    hint = f"; did you mean {close[0]!r}?" if close else f" (train classes: {', '.join(train_classes)})."
    more = f" ({len(extra) - 1} other {split} label(s) are not train classes either: {', '.join(extra[1:4])})" if len(extra) > 1 else ""
    return f"{where} is not a train class{hint}{more}"


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
