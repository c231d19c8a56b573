import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from medclassify.evaluation.bootstrap import bootstrap_ci, metric_samples, resample_counts
from medclassify.evaluation.metrics import compute_metrics


def _binary(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = np.round(rng.normal(1.2 * y, 1.0), 1)  # rounded: ties in the scores
    p = 1 / (1 + np.exp(-s))
    return y, np.c_[1 - p, p]


def test_unit_weights_reproduce_the_plain_metrics():
    y, probs = _binary()
    m = metric_samples(y, probs, np.ones((1, len(y))))
    ref = compute_metrics(y, probs, ["neg", "pos"])
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity"):
        assert m[k][0] == pytest.approx(ref[k]), k


def test_weighted_auc_equals_auc_of_the_duplicated_sample():
    y, probs = _binary()
    counts = resample_counts(y, 5, seed=3)
    m = metric_samples(y, probs, counts)
    for b in range(5):
        idx = np.repeat(np.arange(len(y)), counts[b].astype(int))
        assert m["auc"][b] == pytest.approx(roc_auc_score(y[idx], probs[idx, 1]))
        assert m["accuracy"][b] == pytest.approx((probs[idx].argmax(1) == y[idx]).mean())


def test_multiclass_auc_and_kappa_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    probs = rng.dirichlet(np.ones(4), 300)
    probs[np.arange(300), y] += 0.4
    probs /= probs.sum(1, keepdims=True)
    order = [2, 0, 3, 1]
    m = metric_samples(y, probs, np.ones((1, 300)), order=order)
    ref = compute_metrics(y, probs, list("abcd"))
    assert m["auc"][0] == pytest.approx(ref["auc"])
    assert m["macro_f1"][0] == pytest.approx(ref["macro_f1"])
    rank = np.argsort(order)
    assert m["qwk"][0] == pytest.approx(cohen_kappa_score(rank[y], rank[probs.argmax(1)], weights="quadratic"))


def test_resamples_are_stratified_and_seeded():
    y = np.r_[np.zeros(70, int), np.ones(30, int)]
    counts = resample_counts(y, 200, seed=7)
    assert np.all(counts[:, y == 0].sum(1) == 70)
    assert np.all(counts[:, y == 1].sum(1) == 30)
    assert np.array_equal(counts, resample_counts(y, 200, seed=7))
    assert not np.array_equal(counts, resample_counts(y, 200, seed=8))


def test_interval_contains_the_estimate_and_narrows_with_more_data():
    y, probs = _binary(200)
    ci = bootstrap_ci(y, probs, n_boot=1000)
    acc = (probs.argmax(1) == y).mean()
    assert ci["accuracy"][0] < acc < ci["accuracy"][1]
    y4, probs4 = np.tile(y, 4), np.tile(probs, (4, 1))
    wide, narrow = ci["accuracy"], bootstrap_ci(y4, probs4, n_boot=1000)["accuracy"]
    assert narrow[1] - narrow[0] < 0.7 * (wide[1] - wide[0])
    assert {"recall/0", "precision/1", "f1/1", "sensitivity", "specificity", "auc"} <= set(ci)
