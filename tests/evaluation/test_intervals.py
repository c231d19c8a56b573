import numpy as np
import pytest

from medclassify.evaluation.bootstrap import bootstrap_ci, confidence_intervals
from medclassify.evaluation.intervals import bca_interval, format_p, proportion_ci, proportion_cis


def test_exact_interval_is_honest_at_zero_and_one():
    lo, hi = proportion_ci(20, 20)
    assert lo == pytest.approx(0.8316, abs=1e-4) and hi == 1.0
    lo, hi = proportion_ci(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1684, abs=1e-4)
    assert proportion_ci(0, 0) is None


def test_all_one_class_model_gets_intervals_that_are_not_certain():
    # the tiny run: 40 test images, 20 per class, PNEUMONIA predicted for every one
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    rng = np.random.default_rng(0)
    p = rng.uniform(0.55, 0.95, 40)
    probs = np.c_[1 - p, p]
    ci, methods = confidence_intervals(y, probs, n_boot=500)
    assert ci["sensitivity"][0] < 0.9 and ci["sensitivity"][1] == 1.0
    assert ci["specificity"][1] > 0 and ci["specificity"][0] == 0.0
    assert ci["accuracy"][1] - ci["accuracy"][0] > 0.25
    assert methods["sensitivity"] == methods["accuracy"] == "exact"
    # every stratified resample of a one-class model has the same balanced accuracy and F1: never zero width
    for name in ("balanced_accuracy", "macro_f1"):
        assert name not in ci or ci[name][1] - ci[name][0] > 0.02, (name, ci.get(name), methods[name])
    lo, hi = ci["balanced_accuracy"]
    assert lo < 0.5 < hi and methods["balanced_accuracy"].startswith("exact")
    # the never-predicted class has no defined precision, so no interval either
    assert "precision/0" not in ci and "precision/1" in ci


def test_proportions_of_a_confusion_matrix():
    ci = proportion_cis(np.array([[30, 10], [5, 55]]))
    assert ci["sensitivity"] == pytest.approx(proportion_ci(55, 60))
    assert ci["specificity"] == pytest.approx(proportion_ci(30, 40))
    assert ci["ppv"] == pytest.approx(proportion_ci(55, 65))
    assert ci["npv"] == pytest.approx(proportion_ci(30, 35))


def test_bca_falls_back_to_percentile_when_undefined():
    same = np.ones(200)
    (lo, hi), method = bca_interval(same, 1.0, np.ones(50))
    assert method == "percentile" and lo == hi == 1.0
    rng = np.random.default_rng(0)
    skewed = rng.exponential(1.0, 4000)
    (lo, hi), method = bca_interval(skewed, 1.0, rng.exponential(1.0, 100))
    assert method == "BCa" and lo < 1.0 < hi


def test_auc_keeps_the_bootstrap_with_bca():
    rng = np.random.default_rng(2)
    y = (rng.random(300) < 0.4).astype(int)
    p = 1 / (1 + np.exp(-rng.normal(1.2 * y, 1.0)))
    ci, methods = confidence_intervals(y, np.c_[1 - p, p], n_boot=500)
    assert methods["auc"] == "BCa" and methods["macro_f1"] == "BCa"
    assert ci["auc"][0] < ci["auc"][1]
    assert bootstrap_ci(y, np.c_[1 - p, p], n_boot=500, method="percentile")["auc"] != ci["auc"]


def test_coverage_at_the_extremes_exact_versus_percentile():
    """True sensitivity 0.97 on 20 positives: most test sets show 20/20 or 19/20. The exact interval
    covers the truth at least 95% of the time; the percentile bootstrap, collapsing to 100%-100% at
    20/20, misses it about half the time."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    hits = {"exact": 0, "percentile": 0}
    sims = 200
    for s in range(sims):
        correct = rng.random(40) < np.where(y == 1, 0.97, 0.03)  # specificity 0.03: near 0/n too
        pred = np.where(correct, y, 1 - y)
        probs = np.c_[1 - pred * 0.8, pred * 0.8 + 0.1]
        exact = proportion_cis(np.array([[np.sum((y == 0) & (pred == 0)), np.sum((y == 0) & (pred == 1))],
                                         [np.sum((y == 1) & (pred == 0)), np.sum((y == 1) & (pred == 1))]]))
        perc = bootstrap_ci(y, probs, n_boot=200, seed=s, pred=pred, method="percentile")
        hits["exact"] += exact["sensitivity"][0] <= 0.97 <= exact["sensitivity"][1]
        hits["percentile"] += perc["sensitivity"][0] <= 0.97 <= perc["sensitivity"][1]
    assert hits["exact"] / sims >= 0.93
    assert hits["percentile"] / sims < 0.75


def test_p_values_are_never_printed_as_zero():
    assert format_p(0.0) == "< 0.0001"
    assert format_p(3e-7) == "< 0.0001"
    assert format_p(0.04567) == "0.0457"
    assert format_p(None) == "n/a"
