"""Patient-grouped splits: carving and k-fold never split a patient or a linked duplicate group."""

from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from medclassify.data.sources import Record
from medclassify.data.splits import assign_splits, carve, group_kfold, record_groups

# A dataset: per image (patient id or None, class index).
datasets = st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 25)), st.integers(0, 2)), min_size=12, max_size=120)


def make(rows):
    return [Record(f"/d/{k}.png", "abc"[c], None, None if p is None else f"p{p}") for k, (p, c) in enumerate(rows)]


def never_split(records, side_of):
    sides = defaultdict(set)
    for i, r in enumerate(records):
        if r.patient:
            sides[r.patient].add(side_of[i])
    return all(len(s) == 1 for s in sides.values())


@settings(max_examples=60, deadline=None)
@given(rows=datasets, k=st.integers(2, 5), seed=st.integers(0, 100))
def test_group_kfold_never_splits_a_patient(rows, k, seed):
    records = make(rows)
    groups = len(record_groups(records))
    if groups < k:
        return
    folds = group_kfold(records, k, seed)
    assert sorted(i for f in folds for i in f) == list(range(len(records)))  # a partition
    fold_of = {i: f for f, idx in enumerate(folds) for i in idx}
    assert never_split(records, fold_of)


@settings(max_examples=60, deadline=None)
@given(rows=datasets, seed=st.integers(0, 100))
def test_assign_splits_never_splits_a_patient(rows, seed):
    records = assign_splits(make(rows), 0.2, 0.2, seed)
    assert never_split(records, {i: r.split for i, r in enumerate(records)})


def test_linked_duplicates_stay_together():
    records = [Record(f"/d/{k}.png", "ab"[k % 2]) for k in range(40)]
    linked = [[f"/d/{k}.png", f"/d/{k + 20}.png"] for k in range(0, 20, 2)]
    out = carve(records, 0.3, 0, "test", linked)
    split = {r.path: r.split for r in out}
    assert all(split[a] == split[b] for a, b in linked)
    folds = group_kfold(records, 4, 0, linked)
    fold_of = {records[i].path: f for f, idx in enumerate(folds) for i in idx}
    assert all(fold_of[a] == fold_of[b] for a, b in linked)


def test_kfold_balances_every_class_per_fold():
    # 90 images of a, 10 of b, each its own patient: every fold gets 18 a and 2 b.
    records = [Record(f"/d/{k}.png", "a" if k < 90 else "b", None, f"p{k}") for k in range(100)]
    folds = group_kfold(records, 5, seed=3)
    for idx in folds:
        assert Counter(records[i].label for i in idx) == {"a": 18, "b": 2}


def test_kfold_balances_classes_with_uneven_patients():
    # Patients with 1-4 images; the rare class must land in every fold.
    records, k = [], 0
    for p in range(60):
        for _ in range(1 + p % 4):
            records.append(Record(f"/d/{k}.png", "b" if p % 10 == 0 else "a", None, f"p{p}"))
            k += 1
    folds = group_kfold(records, 3, seed=0)
    per_fold_b = [sum(records[i].label == "b" for i in f) for f in folds]
    assert min(per_fold_b) > 0 and max(per_fold_b) - min(per_fold_b) <= 4
