"""From a dataset path to everything training needs: records with splits, the decoded-image cache,
the preprocessing. Unreadable files are removed, counted and listed, never silently dropped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import DataError
from ..reporting import Reporter
from .cache import ImageCache, build_cache
from .preprocessing import Preprocessing, channel_stats, detect_channels
from .sources import DatasetIndex, Record, attach_patients, scan_folder
from .audit import build_report, find_duplicates, fingerprint_index
from .audit import dedupe as dedupe_records
from .splits import assign_splits, patient_overlap


@dataclass
class PreparedData:
    index: DatasetIndex
    records: list[Record]  # readable images, every one with a split
    classes: list[str]
    cache: ImageCache
    preprocessing: Preprocessing
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason
    channel_census: tuple[int, int] = (0, 0)  # (grey, colour) among the sampled images
    patient_overlap: dict[str, list[str]] = field(default_factory=dict)
    audit: dict = field(default_factory=dict)  # audit_summary(): findings, warnings, what --dedupe dropped

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]

    def summary(self) -> dict:
        counts: dict[str, Counter] = {}
        for r in self.records:
            counts.setdefault(r.split, Counter())[r.label] += 1
        return {
            "root": self.index.root,
            "layout": self.index.layout,
            "classes": self.classes,
            "counts": {s: dict(sorted(c.items())) for s, c in sorted(counts.items())},
            "skipped_unreadable": len(self.skipped),
            "ignored_non_image_files": len(self.index.ignored_files),
            "grey_vs_colour_sample": list(self.channel_census),
            "patients_known": sum(1 for r in self.records if r.patient),
            "patients_in_several_splits": len(self.patient_overlap),
            "audit": self.audit,
        }


def load_cache(records: list[Record], prep: Preprocessing, reporter: Reporter, workers: int | None = None) -> ImageCache:
    paths = sorted({r.path for r in records})
    with reporter.task("Decoding images into the cache", len(paths)) as bar:
        cache = build_cache(paths, prep.image_size, prep.resize, prep.channels, workers=workers,
                            progress=lambda done, total: bar.update(done))
    if cache.hit:
        reporter.info(f"Image cache: {len(paths)} images loaded from {cache.directory} (no decoding).")
    else:
        reporter.info(f"Image cache: decoded {len(paths)} images in {cache.build_seconds:.1f} s "
                      f"({len(paths) / max(cache.build_seconds, 1e-9):.0f} img/s) into {cache.directory}.")
    return cache


def prepare(
    data: str,
    *,
    image_size: int,
    resize: str,
    channels: str | int,
    normalize: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    patient_pattern: str | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    reporter: Reporter,
    workers: int | None = None,
    dedupe: bool = False,
    strict: bool = False,
    splits: str | None = None,
) -> PreparedData:
    index = attach_patients(scan_folder(data, splits), patient_pattern)
    report_scan(index, reporter)
    if index.ignored_files:
        reporter.warn(f"{len(index.ignored_files)} non-image file(s) in class folders ignored (first: {index.ignored_files[0]}).")
    if index.unlabelled:
        reporter.info(f"{len(index.unlabelled)} image(s) without a label in this layout left out (first: {index.unlabelled[0]}).")
    fingerprints = fingerprint_index(index, reporter, workers)
    duplicates = find_duplicates(fingerprints)
    if patient_pattern:
        known = sum(1 for r in index.records if r.patient)
        reporter.info(f"Patient ids found for {known} of {len(index.records)} images.")
        if known == 0:
            raise DataError(f"Patient pattern {patient_pattern!r} matched no file name in {data}.",
                            "check the pattern against a few file names, or leave it out.")
    train_paths = [r.path for r in index.records if r.split in (None, "train")]
    census = (0, 0)
    if channels == "auto":
        n_ch, grey, colour = detect_channels(train_paths, seed=seed)
        census = (grey, colour)
        reporter.info(f"Channels: {n_ch} ({grey} grey, {colour} colour among {grey + colour} sampled training images"
                      f"{'; grey content stored as RGB is read as one channel' if n_ch == 1 else ''}).")
    else:
        n_ch = int(channels)
    m, s = channel_stats(mean, std, n_ch)
    prep = Preprocessing(image_size=image_size, resize=resize, channels=n_ch, mean=m, std=s, normalize=normalize)
    cache = load_cache(index.records, prep, reporter, workers)
    skipped = dict(sorted({**index.skipped, **cache.errors}.items()))
    if skipped:
        first = next(iter(skipped.items()))
        reporter.warn(f"{len(skipped)} unreadable file(s) skipped and listed in the run's skipped.csv "
                      f"(first: {first[0]}: {first[1]}).")
    records = [r for r in index.records if r.path not in skipped]
    lost = {r.label for r in index.records} - {r.label for r in records if r.split in (None, "train")}
    if lost:
        raise DataError(f"Every training image of class(es) {', '.join(sorted(lost))} is unreadable.",
                        "replace the corrupt files (see the list above).")
    records = carve_splits(records, val_fraction, test_fraction, seed, duplicates.linked(), reporter)
    records, audit = apply_audit(index, records, fingerprints, duplicates, patient_pattern, dedupe, strict, reporter)
    for split in ("val", "test"):
        have = {r.label for r in records if r.split == split}
        missing = set(index.classes) - have
        if missing and have:
            reporter.warn(f"The {split} split has no images of {', '.join(sorted(missing))}; its metrics ignore those classes.")
    overlap = patient_overlap(records)
    classes = index.classes
    return PreparedData(index, [replace(r) for r in records], classes, cache, prep, skipped, census, overlap, audit)


def report_scan(index: DatasetIndex, reporter: Reporter) -> None:
    """Say which top-level folders were left out of a split-folder dataset."""
    if index.left_out:
        names = ", ".join(Path(p).name for p in index.left_out)
        root = Path(index.left_out[0]).parent
        train = next((Path(r.path).relative_to(root).parts[0] for r in index.records
                      if r.split == "train" and Path(r.path).is_relative_to(root)), "TRAIN_FOLDER")
        reporter.warn(f"{len(index.left_out)} top-level folder(s) beside the split folders left out: {names}. "
                      f"To use one, name the splits, e.g. --splits train={train},test={Path(index.left_out[0]).name}.")


def carve_splits(records: list[Record], val_fraction: float, test_fraction: float, seed: int,
                 linked: list[list[str]], reporter: Reporter) -> list[Record]:
    """assign_splits keeping every duplicate group (and patient) on one side; when that leaves a
    carved split empty (a class made of copies of one image), carve by patient only, and say so."""
    wanted = {"train", "val"} | ({"test"} if all(r.split is None for r in records) else set())
    out = assign_splits(records, val_fraction, test_fraction, seed, linked=linked)
    empty = wanted - {r.split for r in out} - {r.split for r in records}
    if linked and empty:
        reporter.warn(f"Keeping duplicate images together would leave the {'/'.join(sorted(empty))} split empty; "
                      "split without them, so duplicates may sit on both sides (see the warnings below).")
        out = assign_splits(records, val_fraction, test_fraction, seed)
    return out


def apply_audit(index: DatasetIndex, records: list[Record], fingerprints, duplicates, patient_pattern: str | None,
                dedupe: bool, strict: bool, reporter: Reporter) -> tuple[list[Record], dict]:
    """Warn loudly about leakage and conflicting labels in the final splits; with `dedupe` drop the
    train copies of leaking groups and every conflicting group; with `strict` refuse what is left."""
    report = build_report(index, records, fingerprints, duplicates, patient_pattern)
    dropped: dict[str, str] = {}
    if dedupe:
        records, dropped = dedupe_records(records, report)
        if dropped:
            reporter.warn(f"--dedupe dropped {len(dropped)} image(s): "
                          + ", ".join(f"{n} {why}" for why, n in Counter(
                              "as copies of held-out images" if "duplicate of" in w else "in conflicting-label groups"
                              for w in dropped.values()).items()) + ".")
            report = build_report(index, records, fingerprints, duplicates, patient_pattern)
    s = report["summary"]
    problems = []
    if s["duplicate_leakage_groups"]:
        lk = report["leakage"]
        problems.append(f"LEAKAGE: {lk['groups']} group(s) of duplicate images span splits "
                        f"({', '.join(f'{k} {v}' for k, v in lk['by_splits'].items())}); validation/test scores are inflated. "
                        "Use --dedupe to keep only the held-out copies.")
    if s["patients_in_several_splits"]:
        problems.append(f"LEAKAGE: {s['patients_in_several_splits']} patient(s) have images in more than one split "
                        "(official split folders); scores on those splits are optimistic.")
    if s["conflicting_label_groups"]:
        problems.append(f"CONFLICTING LABELS: {s['conflicting_label_groups']} group(s) of duplicate images carry different "
                        "labels. Use --dedupe to drop them.")
    for p in problems:
        reporter.warn(p)
    if strict and problems:
        raise DataError(f"--strict: {len(problems)} data problem(s) found ({problems[0].split(':')[0].lower()} first).",
                        "fix the dataset, run `medclassify audit DATA --out audit/` for the details, or train with --dedupe.")
    audit = {
        "schema_version": report["version"],
        "exact_duplicate_groups": s["exact_duplicate_groups"],
        "near_duplicate_groups": s["near_duplicate_groups"],
        "duplicate_leakage_groups": s["duplicate_leakage_groups"],
        "leakage_by_splits": report["leakage"]["by_splits"],
        "conflicting_label_groups": s["conflicting_label_groups"],
        "patients_in_several_splits": s["patients_in_several_splits"],
        "dedupe_dropped": len(dropped),
        "dedupe_dropped_examples": dict(list(dropped.items())[:20]),
        "warnings": problems,
    }
    return records, audit
