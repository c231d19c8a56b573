"""Assigning train/val/test: stratified by class, seeded, and grouped by patient so that no
patient's images sit on both sides of a split."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

from ..errors import DataError
from .sources import Record


def _group_key(r: Record) -> str:
    # Images without a patient id are their own group.
    return f"patient:{r.patient}" if r.patient else f"image:{r.path}"


def carve(records: list[Record], fraction: float, seed: int, new_split: str) -> list[Record]:
    """Move about `fraction` of `records` (per class, whole patient groups at a time) to `new_split`.

    Groups are assigned to the class of their majority label, then whole groups are taken per class
    until the class's quota is met; this keeps class proportions while never splitting a patient."""
    if not 0 < fraction < 1:
        raise DataError(f"Split fraction {fraction} must be between 0 and 1.", "use e.g. 0.1 for 10%.")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[_group_key(r)].append(i)
    by_class: dict[str, list[str]] = defaultdict(list)
    for key, idx in groups.items():
        labels = [records[i].label for i in idx]
        by_class[max(set(labels), key=labels.count)].append(key)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for label in sorted(by_class):
        keys = sorted(by_class[label])
        rng.shuffle(keys)
        total = sum(len(groups[k]) for k in keys)
        quota = round(total * fraction)
        if quota == 0 and total >= 2:
            quota = 1  # every class is represented in val/test when it has two or more images
        taken = 0
        for n_taken, k in enumerate(keys):
            if taken >= quota or n_taken == len(keys) - 1:
                break  # quota met, or the class's last group, which stays where it was
            if taken + len(groups[k]) > quota * 1.5 and taken > 0:
                continue  # a large patient group would overshoot; try smaller ones first
            chosen.update(groups[k])
            taken += len(groups[k])
    return [replace(r, split=new_split) if i in chosen else r for i, r in enumerate(records)]


def assign_splits(records: list[Record], val_fraction: float = 0.1, test_fraction: float = 0.15, seed: int = 0) -> list[Record]:
    """Fill in missing splits. Records without any split get train/val/test; a dataset with train
    (and test) but no val gets val carved from train. Official splits are never changed."""
    splits = {r.split for r in records}
    if splits == {None}:
        records = [replace(r, split="train") for r in records]
        records = carve(records, test_fraction, seed, "test")
        train = [r for r in records if r.split == "train"]
        rest = [r for r in records if r.split != "train"]
        records = carve(train, val_fraction / (1 - test_fraction), seed + 1, "val") + rest
    elif "val" not in splits:
        train = [r for r in records if r.split == "train"]
        rest = [r for r in records if r.split != "train"]
        records = carve(train, val_fraction, seed + 1, "val") + rest
    if not any(r.split == "train" for r in records):
        raise DataError("No training images are left after splitting.", "add more images or lower the val/test fractions.")
    return records


def patient_overlap(records: list[Record]) -> dict[str, list[str]]:
    """Patients whose images occur in more than one split: {patient: [splits]}."""
    seen: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.patient and r.split:
            seen[r.patient].add(r.split)
    return {p: sorted(s) for p, s in seen.items() if len(s) > 1}


def group_kfold(records: list[Record], k: int, seed: int = 0) -> list[list[int]]:
    """Indices of `records` in k folds, stratified by class and never splitting a patient."""
    if k < 2:
        raise DataError(f"--folds {k} must be at least 2.", "use e.g. --folds 5.")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[_group_key(r)].append(i)
    by_class: dict[str, list[str]] = defaultdict(list)
    for key, idx in groups.items():
        labels = [records[i].label for i in idx]
        by_class[max(set(labels), key=labels.count)].append(key)
    rng = random.Random(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for label in sorted(by_class):
        keys = sorted(by_class[label], key=lambda g: -len(groups[g]))
        rng.shuffle(keys)
        keys.sort(key=lambda g: -len(groups[g]))  # largest groups first, to the smallest fold
        for key in keys:
            target = min(range(k), key=lambda f: len(folds[f]))
            folds[target].extend(groups[key])
    return [sorted(f) for f in folds]
