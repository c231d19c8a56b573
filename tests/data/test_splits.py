from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from medclassify.data.sources import Record
from medclassify.data.splits import assign_splits, group_kfold, patient_overlap


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
