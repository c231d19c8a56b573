"""Operating threshold of a binary classifier, chosen on validation for a target sensitivity or
specificity, then applied unchanged to the test set (choosing it on test would flatter it)."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def check_target(target_sensitivity: float | None, target_specificity: float | None) -> None:
    if (target_sensitivity is None) == (target_specificity is None):
        raise ConfigError("Give exactly one of --target-sensitivity and --target-specificity.", "drop one of them.")
    target = target_sensitivity if target_sensitivity is not None else target_specificity
    if not 0 < target <= 1:
        raise ConfigError(f"Target {target} is not in (0, 1].", "pass a fraction such as 0.95.")


def choose_threshold(y, p_pos, target_sensitivity: float | None = None, target_specificity: float | None = None) -> float:
    """Predict positive when p >= threshold. For a sensitivity target: the highest threshold whose
    validation sensitivity reaches it (best specificity given the target); for a specificity target:
    the lowest threshold whose validation specificity reaches it."""
    check_target(target_sensitivity, target_specificity)
    target = target_sensitivity if target_sensitivity is not None else target_specificity
    y = np.asarray(y).astype(bool)
    p = np.asarray(p_pos, dtype=np.float64)
    if y.all() or not y.any():
        raise ConfigError("The validation split has only one class, so no threshold can be chosen.",
                          "evaluate a run whose validation split has both classes.")
    candidates = np.unique(np.r_[p, np.nextafter(p.max(), np.inf)])
    if target_sensitivity is not None:
        pos = np.sort(p[y])
        # sensitivity(t) = fraction of positives with p >= t; non-increasing in t
        sens = 1 - np.searchsorted(pos, candidates, side="left") / len(pos)
        t = candidates[sens >= target - 1e-12].max()
    else:
        neg = np.sort(p[~y])
        spec = np.searchsorted(neg, candidates, side="left") / len(neg)  # fraction of negatives with p < t
        t = candidates[spec >= target - 1e-12].min()
    # Any threshold between t and the next lower validation score gives the same validation figures;
    # the midpoint keeps a margin instead of sitting on one image's score.
    below = p[p < t]
    return float((t + below.max()) / 2) if below.size else float(t)


def operating_point(y, p_pos, threshold: float) -> dict:
    y = np.asarray(y).astype(bool)
    pred = np.asarray(p_pos) >= threshold
    tp, fn = int((pred & y).sum()), int((~pred & y).sum())
    tn, fp = int((~pred & ~y).sum()), int((pred & ~y).sum())

    def ratio(a, b):
        return a / (a + b) if a + b else None

    return {"threshold": float(threshold), "sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp),
            "ppv": ratio(tp, fp), "npv": ratio(tn, fn), "tp": tp, "fn": fn, "tn": tn, "fp": fp}
