"""Calibration: expected calibration error, reliability-diagram data, and temperature scaling
(Guo et al. 2017) fitted on the validation logits and stored in the run, where predict reads it."""

from __future__ import annotations

import numpy as np

from ..engine import softmax  # noqa: F401  (the one softmax; re-exported for callers of this module)
from ..run import Run


def reliability(y, probs, n_bins: int = 10) -> dict:
    """Top-label reliability: per equal-width confidence bin, the mean confidence, the accuracy and
    the count. ECE is the count-weighted mean |accuracy - confidence|."""
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, n_bins) / count
        acc = np.bincount(which, correct, n_bins) / count
    gaps = np.nan_to_num(np.abs(acc - mean_conf)) * count
    ece = float(gaps.sum() / max(count.sum(), 1))
    return {"edges": edges.tolist(), "confidence": _nan_none(mean_conf), "accuracy": _nan_none(acc),
            "count": count.astype(int).tolist(), "ece": ece}


def _nan_none(a: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in a]


def expected_calibration_error(y, probs, n_bins: int = 10) -> float:
    return reliability(y, probs, n_bins)["ece"]


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(logits, y) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(logits / T)."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    res = minimize_scalar(lambda log_t: _nll(logits, y, float(np.exp(log_t))), bounds=(np.log(0.05), np.log(20.0)),
                          method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def save_temperature(run: Run, temperature: float, fitted_on: str, n: int, ece_before: float, ece_after: float) -> None:
    """Store the temperature in run.json (atomically): predict divides logits by it."""
    run.update(calibration={"temperature": round(float(temperature), 6), "fitted_on": fitted_on, "n": int(n),
                            "ece_before": round(ece_before, 6), "ece_after": round(ece_after, 6)},
               calibration_skipped=None)
