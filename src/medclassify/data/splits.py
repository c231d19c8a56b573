"""Assigning train/val/test: stratified by class, seeded, and grouped by patient so that no
patient's images sit on both sides of a split."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from typing import Sequence

from ..errors import DataError
from .sources import Record


def record_groups(records: list[Record], linked: Sequence[Sequence[str]] | None = None) -> dict[str, list[int]]:
    """Indices of `records` that must stay on one side of a split: one patient's images, and each
    group of `linked` paths (duplicates found by the audit), merged where they share an image.
    Images with neither are their own group. Keys are stable: the group's first path."""
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_of: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.patient:
            union(first_of.setdefault(r.patient, i), i)
    if linked:
        row = {r.path: i for i, r in enumerate(records)}
        for group in linked:
            idx = [row[p] for p in group if p in row]
            for i in idx[1:]:
                union(idx[0], i)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(records)):
        members[find(i)].append(i)
    return {min(records[i].path for i in idx): idx for idx in members.values()}


def _majority_label(records: list[Record], idx: list[int]) -> str:
    labels = [records[i].label for i in idx]
    return max(sorted(set(labels)), key=labels.count)


def carve(records: list[Record], fraction: float, seed: int, new_split: str,
          linked: Sequence[Sequence[str]] | None = None) -> list[Record]:
    """Move about `fraction` of `records` (per class, whole groups at a time) to `new_split`.

    Groups (patients, linked duplicates) are assigned to the class of their majority label, then
    whole groups are taken per class until the class's quota is met; this keeps class proportions
    while never splitting a patient or a duplicate group."""
    if not 0 < fraction < 1:
        raise DataError(f"Split fraction {fraction} must be between 0 and 1.", "use e.g. 0.1 for 10%.")
    groups = record_groups(records, linked)
    by_class: dict[str, list[str]] = defaultdict(list)
    for key, idx in groups.items():
        by_class[_majority_label(records, idx)].append(key)
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


def assign_splits(records: list[Record], val_fraction: float = 0.1, test_fraction: float = 0.15, seed: int = 0,
                  linked: Sequence[Sequence[str]] | None = None) -> list[Record]:
    """Fill in missing splits. Records without any split get train/val/test; a dataset with train
    (and test) but no val gets val carved from train. Official splits are never changed."""
    splits = {r.split for r in records}
    if splits == {None}:
        records = [replace(r, split="train") for r in records]
        records = carve(records, test_fraction, seed, "test", linked)
        train = [r for r in records if r.split == "train"]
        rest = [r for r in records if r.split != "train"]
        records = carve(train, val_fraction / (1 - test_fraction), seed + 1, "val", linked) + rest
    elif "val" not in splits:
        train = [r for r in records if r.split == "train"]
        rest = [r for r in records if r.split != "train"]
        records = carve(train, val_fraction, seed + 1, "val", linked) + rest
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


def group_kfold(records: list[Record], k: int, seed: int = 0,
                linked: Sequence[Sequence[str]] | None = None) -> list[list[int]]:
    """Indices of `records` in k folds, never splitting a patient (or a linked duplicate group), with
    each class spread evenly over the folds: groups go largest first to the fold holding the fewest
    images of their class (ties: the smallest fold)."""
    if k < 2:
        raise DataError(f"--folds {k} must be at least 2.", "use e.g. --folds 5.")
    groups = record_groups(records, linked)
    if len(groups) < k:
        raise DataError(f"{k} folds need at least {k} patients or independent images; the data has {len(groups)}.",
                        "use fewer folds.")
    by_class: dict[str, list[str]] = defaultdict(list)
    for key, idx in groups.items():
        by_class[_majority_label(records, idx)].append(key)
    rng = random.Random(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    per_class = [defaultdict(int) for _ in range(k)]
    for label in sorted(by_class):
        keys = sorted(by_class[label])
        rng.shuffle(keys)
        keys.sort(key=lambda g: -len(groups[g]))  # largest first; the shuffle orders equal sizes
        for key in keys:
            target = min(range(k), key=lambda f: (per_class[f][label], len(folds[f])))
            folds[target].extend(groups[key])
            for i in groups[key]:
                per_class[target][records[i].label] += 1
    return [sorted(f) for f in folds]
