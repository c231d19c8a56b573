"""Classification metrics from labels and predicted probabilities."""

from __future__ import annotations

import warnings

import numpy as np


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Binary: AUC of the second class's probability. Multiclass: one-vs-rest macro over the classes
    present in y_true. None when undefined (a single class present)."""
    from sklearn.metrics import roc_auc_score

    present = np.unique(y_true)
    if len(present) < 2:
        return None
    k = probs.shape[1]
    if k == 2:
        return float(roc_auc_score(y_true == 1, probs[:, 1]))
    aucs = [roc_auc_score(y_true == c, probs[:, c]) for c in present]
    return float(np.mean(aucs))


def _clipped(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-7, 1)
    return p / p.sum(1, keepdims=True)


def compute_metrics(y_true, probs, classes: list[str]) -> dict:
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True).clip(1e-12)
    y_pred = probs.argmax(1)
    labels = list(range(len(classes)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision of a never-predicted class -> 0
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        bal = balanced_accuracy_score(y_true, y_pred)
    present = np.isin(labels, y_true)
    out = {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else float("nan"),
        "balanced_accuracy": float(bal),
        "macro_f1": float(f[present].mean()) if present.any() else 0.0,
        "auc": roc_auc(y_true, probs),
        "log_loss": float(log_loss(y_true, _clipped(probs), labels=labels)) if len(y_true) else None,
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
    }
    if len(classes) == 2:
        tn, fp, fn, tp = np.array(out["confusion_matrix"]).ravel()
        out["sensitivity"] = float(tp / (tp + fn)) if tp + fn else None
        out["specificity"] = float(tn / (tn + fp)) if tn + fp else None
        out["positive_class"] = classes[1]
    return out


def monitor_value(metrics: dict, name: str) -> float:
    """Higher is better for every monitored name (loss is negated)."""
    if name == "loss":
        return -float(metrics["loss"])
    v = metrics.get(name)
    return float("-inf") if v is None else float(v)
