"""A YAML dataset spec that merges several datasets into one, mapping class names and keeping each
source's own (official) splits:

    sources:
      - path: ../shared/datasets/alzheimer_mri        # relative paths start from the spec's folder
        classes: {NonDemented: no_disease, MildDemented: alzheimer, VeryMildDemented: alzheimer,
                  ModerateDemented: alzheimer}
      - path: ../shared/datasets/brain_tumor_mri
        classes: {no_tumor: no_disease, "*": tumor}   # "*": every class not named
        drop: []                                      # source classes to leave out

A class neither mapped nor matched by "*" keeps its own name; mapping a class to null drops it.
`medclassify train spec.yaml` reads it like a folder (data/sources.py dispatches on the suffix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .sources import DatasetIndex, Record, check_usable, register_file_reader, scan_folder

SPEC_SUFFIXES = (".yaml", ".yml")


def read_yaml(path: Path | str, what: str = "spec") -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what.capitalize()} file {path} does not exist.", "check the path.")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path} is not valid YAML ({first}).", "fix the indentation or quoting on that line.") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must be a YAML mapping (key: value lines).", f"see the {what} example in the README.")
    return doc


def resolve_path(spec_path: Path, value: str | Path) -> Path:
    """A path written in a YAML file: relative paths start from the file's folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(spec_path).parent / p


def map_label(label: str, mapping: dict[str, str | None]) -> str | None:
    """The new name of `label` under `mapping` ("*" matches every class not named; None drops)."""
    if label in mapping:
        return mapping[label]
    if "*" in mapping:
        return mapping["*"]
    return label


def source_mapping(spec_path: Path, i: int, src: dict) -> dict[str, str | None]:
    classes = src.get("classes") or {}
    if not isinstance(classes, dict):
        raise ConfigError(f"{spec_path}: sources[{i}].classes must be a mapping old_name: new_name.",
                          "write e.g. classes: {NonDemented: no_disease}.")
    mapping = {str(k): (None if v is None else str(v)) for k, v in classes.items()}
    for name in src.get("drop") or []:
        mapping[str(name)] = None
    return mapping


def compose(spec_path: Path | str, relabel: dict[str, str | None] | None = None) -> DatasetIndex:
    """Merge the spec's sources into one index. `relabel` maps the composed class names once more
    (cascade stages use it to turn final labels into a stage's classes; unlisted labels are dropped
    when it has no "*")."""
    spec_path = Path(spec_path)
    doc = read_yaml(spec_path, "dataset spec")
    sources = doc.get("sources")
    if not isinstance(sources, list) or not sources:
        raise ConfigError(f"{spec_path} has no 'sources' list.", "add sources: with one '- path: FOLDER' entry per dataset.")
    records: list[Record] = []
    ignored: list[str] = []
    for i, src in enumerate(sources):
        if not isinstance(src, dict) or not src.get("path"):
            raise ConfigError(f"{spec_path}: sources[{i}] has no path.", "give each source a 'path: FOLDER' line.")
        folder = resolve_path(spec_path, src["path"])
        if folder.suffix.lower() in SPEC_SUFFIXES:
            raise ConfigError(f"{spec_path}: sources[{i}] is itself a spec ({folder}).", "list the dataset folders directly.")
        mapping = source_mapping(spec_path, i, src)
        index = scan_folder(folder)
        unknown = sorted(set(mapping) - set(index.classes) - {"*"})
        if unknown:
            raise ConfigError(f"{spec_path}: sources[{i}] maps class(es) {', '.join(unknown)} that {folder} does not have "
                              f"(it has: {', '.join(index.classes)}).", "fix the class names in 'classes'.")
        for r in index.records:
            label = map_label(r.label, mapping)
            if label is not None and relabel is not None:
                label = map_label(label, relabel) if "*" in relabel else relabel.get(label)
            if label is not None:
                records.append(Record(r.path, label, r.split, r.patient))
        ignored += index.ignored_files
    splits = {r.split for r in records}
    if None in splits and len(splits) > 1:
        raise DataError(f"{spec_path} mixes sources with split folders and sources without.",
                        "give every source train/test folders, or none of them.")
    layout = "split-folders" if splits != {None} else "class-folders"
    index = DatasetIndex(str(spec_path.resolve()), records, sorted({r.label for r in records}), layout, ignored)
    check_usable(index)
    return index


register_file_reader((".yaml", ".yml"), compose)
