"""Patient-grouped splits: carving and k-fold never split a patient or a linked duplicate group."""

from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from medclassify.data.sources import Record
from medclassify.data.splits import assign_splits, carve, group_kfold, patient_overlap, record_groups


def records(n_patients, per_patient, classes=("a", "b")):
    out = []
    for p in range(n_patients):
        for k in range(per_patient):
            out.append(Record(f"/x/p{p}_{k}.png", classes[p % len(classes)], None, f"p{p}"))
    return out


def test_unsplit_dataset_gets_stratified_train_val_test():
    recs = assign_splits([Record(f"/x/{i}.png", "a" if i < 300 else "b") for i in range(400)], 0.1, 0.2, seed=0)
    counts = Counter((r.split, r.label) for r in recs)
    assert counts[("test", "a")] == 60 and counts[("test", "b")] == 20
    assert 25 <= counts[("val", "a")] <= 35 and 8 <= counts[("val", "b")] <= 12


def test_official_splits_are_kept_and_val_carved_from_train():
    recs = [Record(f"/x/{i}.png", "ab"[i % 2], "train") for i in range(100)] + [Record("/x/t.png", "a", "test")]
    out = assign_splits(recs, 0.1, 0.2, seed=0)
    assert [r.split for r in out if r.path == "/x/t.png"] == ["test"]
    assert Counter(r.split for r in out) == {"train": 90, "val": 10, "test": 1}


def test_seeded_and_reproducible():
    recs = records(50, 3)
    assert assign_splits(recs, seed=7) == assign_splits(recs, seed=7)
    assert assign_splits(recs, seed=7) != assign_splits(recs, seed=8)


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 60), st.integers(1, 6), st.integers(0, 1000))
def test_patients_never_on_both_sides(n_patients, per_patient, seed):
    out = assign_splits(records(n_patients, per_patient), 0.15, 0.2, seed=seed)
    assert patient_overlap(out) == {}
    assert any(r.split == "train" for r in out)


@settings(max_examples=25, deadline=None)
@given(st.integers(6, 40), st.integers(1, 5), st.integers(2, 5))
def test_group_kfold_never_splits_a_patient(n_patients, per_patient, k):
    recs = records(n_patients, per_patient)
    folds = group_kfold(recs, k, seed=1)
    assert sorted(i for f in folds for i in f) == list(range(len(recs)))
    owner = {}
    for f, idx in enumerate(folds):
        for i in idx:
            assert owner.setdefault(recs[i].patient, f) == f


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
def test_group_kfold_never_splits_a_patient_with_mixed_groups(rows, k, seed):
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
def test_assign_splits_never_splits_a_patient_with_mixed_groups(rows, seed):
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
