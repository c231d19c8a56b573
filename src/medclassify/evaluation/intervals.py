"""Confidence intervals that stay honest at the extremes, and p-values as a reader should see them.

Proportions (accuracy, sensitivity, specificity, per-class recall and precision, PPV, NPV) get the
exact Clopper-Pearson interval from the binomial counts: 20/20 correct gives 0.832-1.000, never a
zero-width 100%-100%. The bootstrap cannot do this: every resample of 20/20 is again 20/20.

Statistics that are not a single proportion (AUC, F1, balanced accuracy, kappa) keep the stratified
bootstrap, with the BCa correction (Efron 1987: bias from the share of resamples below the estimate,
acceleration from a leave-one-out jackknife). BCa is undefined when every resample lies on one side
of the estimate or the jackknife values are all equal (e.g. AUC 1.0 on every resample); those fall
back to the percentile interval, and the method used is recorded per statistic."""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def proportion_ci(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float] | None:
    """Exact (Clopper-Pearson) interval of successes/trials; None when trials is 0 (undefined)."""
    from scipy.stats import binomtest

    if trials <= 0:
        return None
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def proportion_cis(cm: np.ndarray, level: float = LEVEL) -> dict[str, tuple[float, float]]:
    """Exact intervals of the proportions of a (k, k) confusion matrix (rows true, columns predicted):
    'accuracy', 'recall/<i>', 'precision/<i>', and for two classes 'sensitivity', 'specificity',
    'ppv', 'npv' (class 1 positive). Undefined ones (no image of the class, never predicted) are left out."""
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    diag = np.diag(cm)
    out = {"accuracy": proportion_ci(diag.sum(), cm.sum(), level)}
    for c in range(k):
        out[f"recall/{c}"] = proportion_ci(diag[c], cm[c].sum(), level)
        out[f"precision/{c}"] = proportion_ci(diag[c], cm[:, c].sum(), level)
    if k == 2:
        out["sensitivity"], out["specificity"] = out["recall/1"], out["recall/0"]
        out["ppv"], out["npv"] = out["precision/1"], out["precision/0"]
    return {name: ci for name, ci in out.items() if ci is not None}


def bca_interval(samples: np.ndarray, estimate: float, jackknife: np.ndarray | None,
                 level: float = LEVEL) -> tuple[tuple[float, float], str]:
    """BCa interval from bootstrap `samples` of a statistic whose value on the data is `estimate`,
    with leave-one-out `jackknife` values for the acceleration. Returns ((low, high), method) with
    method 'BCa' or 'percentile' (the documented fallback when BCa is undefined)."""
    from scipy.stats import norm

    samples = samples[np.isfinite(samples)]
    alpha = (1 - level) / 2
    percentile = tuple(float(q) for q in np.quantile(samples, [alpha, 1 - alpha]))
    if not np.isfinite(estimate) or jackknife is None:
        return percentile, "percentile"
    below = (np.sum(samples < estimate) + 0.5 * np.sum(samples == estimate)) / samples.size
    jack = jackknife[np.isfinite(jackknife)]
    if not 0 < below < 1 or jack.size < 3:
        return percentile, "percentile"
    z0 = norm.ppf(below)
    d = jack.mean() - jack
    denominator = 6 * (d**2).sum() ** 1.5
    if denominator <= 0:
        return percentile, "percentile"
    a = (d**3).sum() / denominator
    z = norm.ppf([alpha, 1 - alpha])
    adjusted = norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    if not np.all(np.isfinite(adjusted)):
        return percentile, "percentile"
    lo, hi = np.quantile(samples, adjusted)
    return (float(lo), float(hi)), "BCa"


def format_p(p: float | None) -> str:
    """'n/a', '< 0.0001', or four decimals: a p-value is never printed as 0."""
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 0.0001" if p < 0.0001 else f"{p:.4f}"
