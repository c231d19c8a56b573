"""Matplotlib (Agg) figures of an evaluation, returned as PNG bytes for embedding in HTML."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _figure(w: float = 5.0, h: float = 3.6):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    return fig


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def read_history(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))

    def col(name):
        return np.array([float(r[name]) if r.get(name) not in (None, "", "None") else np.nan for r in rows])

    return {k: col(k) for k in (rows[0].keys() if rows else [])}


def training_curves(history: dict[str, np.ndarray], best_epoch: int | None) -> bytes:
    fig = _figure(9, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    ep = history["epoch"]
    ax1.plot(ep, history["train_loss"], "o-", label="training", color=PALETTE[0])
    ax1.plot(ep, history["val_loss"], "o-", label="validation", color=PALETTE[1])
    ax1.set(title="Loss (lower is better)", xlabel="epoch", ylabel="cross-entropy")
    ax2.plot(ep, history["train_accuracy"], "o-", label="training accuracy", color=PALETTE[0])
    ax2.plot(ep, history["val_accuracy"], "o-", label="validation accuracy", color=PALETTE[1])
    if "val_balanced_accuracy" in history:
        ax2.plot(ep, history["val_balanced_accuracy"], "s--", label="validation balanced accuracy", color=PALETTE[2])
    ax2.set(title="Accuracy (higher is better)", xlabel="epoch", ylim=(0, 1.02))
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1)
            ax.text(best_epoch, 0.98, " kept model", va="top", ha="right", fontsize=8, color="grey",
                    transform=ax.get_xaxis_transform())
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return png(fig)


def _one_vs_rest(y: np.ndarray, classes: list[str]) -> list[int]:
    """Classes to draw a curve for. Binary: only the positive class (the other curve is its mirror).
    Multiclass: every class with both positives and negatives among the images."""
    candidates = [1] if len(classes) == 2 else range(len(classes))
    return [c for c in candidates if 0 < (y == c).sum() < len(y)]


def roc_curves(y: np.ndarray, probs: np.ndarray, classes: list[str], operating_point: dict | None = None) -> bytes:
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = _figure(4.6, 4.2)
    ax = fig.subplots()
    for c in _one_vs_rest(y, classes):
        fpr, tpr, _ = roc_curve(y == c, probs[:, c])
        auc = roc_auc_score(y == c, probs[:, c])
        ax.plot(fpr, tpr, color=PALETTE[c % len(PALETTE)], label=f"{classes[c]} (AUC {auc:.3f})")
    if operating_point:
        ax.plot(1 - operating_point["specificity"], operating_point["sensitivity"], "k*", ms=12,
                label=f"chosen threshold {operating_point['threshold']:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(title="ROC curve", xlabel="false positive rate (1 - specificity)", ylabel="sensitivity (recall)",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return png(fig)


def pr_curves(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> bytes:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = _figure(4.6, 4.2)
    ax = fig.subplots()
    for c in _one_vs_rest(y, classes):
        prec, rec, _ = precision_recall_curve(y == c, probs[:, c])
        ap = average_precision_score(y == c, probs[:, c])
        color = PALETTE[c % len(PALETTE)]
        ax.plot(rec, prec, color=color, label=f"{classes[c]} (AP {ap:.3f})")
        ax.axhline((y == c).mean(), color=color, ls=":", lw=1)
    ax.set(title="Precision-recall (dotted: prevalence)", xlabel="recall (sensitivity)",
           ylabel="precision (positive predictive value)", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return png(fig)


def confusion_matrices(cm: np.ndarray, classes: list[str]) -> bytes:
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(classes)
    fig = _figure(4.2 * 2 + 0.4 * k, 3.2 + 0.35 * k)
    for ax, values, title, fmt in zip(fig.subplots(1, 2), (cm, rows), ("Counts", "Share of each true class (rows sum to 100%)"),
                                      ("{:.0f}", "{:.0%}")):
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center",
                        color="white" if rows[i, j] > 0.6 else "black", fontsize=10)
        ax.set_xticks(range(k), classes, rotation=30 if k > 2 else 0, ha="right" if k > 2 else "center", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.set(title=title, xlabel="model says", ylabel="truth")
    return png(fig)


def reliability_diagram(rel: dict) -> bytes:
    fig = _figure(4.6, 4.2)
    ax = fig.subplots()
    edges = np.asarray(rel["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    acc = np.array([np.nan if a is None else a for a in rel["accuracy"]])
    count = np.asarray(rel["count"])
    width = edges[1] - edges[0]
    ax.bar(centres, np.nan_to_num(acc), width=width * 0.9, color=PALETTE[0], alpha=0.8, label="how often it was right")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    for x, a, n in zip(centres, acc, count):
        if n:
            ax.text(x, min(np.nan_to_num(a) + 0.02, 0.97), str(n), ha="center", fontsize=7, color="dimgrey")
    # the top-label confidence of k classes is at least 1/k: start the axis there
    low = edges[np.flatnonzero(count)[0]] if count.any() else 0.0
    ax.set(title=f"Reliability (ECE {rel['ece']:.3f}; numbers: images per bar)", xlabel="model's confidence in its answer",
           ylabel="fraction correct", xlim=(low, 1), ylim=(0, 1.05))
    ax.legend(fontsize=8, loc="upper left")
    return png(fig)


def selective_curve(sel: dict) -> bytes:
    """Accuracy of the kept images against the share kept, as the least confident (and, with an OOD
    score, the most out-of-distribution) images are referred; the star is the run's operating point."""
    fig = _figure(4.8, 3.8)
    ax = fig.subplots()
    names = {"confidence": "refer the least confident first", "ood": "refer the most out-of-distribution first"}
    for i, (key, curve) in enumerate(sel["curves"].items()):
        ax.plot(curve["coverage"], curve["accuracy"], color=PALETTE[i], label=names.get(key, key))
    op = sel["operating_point"]
    if op["accuracy"] is not None:
        rules = ([f"abstain below {sel['abstain_below']:.2f}"] if sel["abstain_below"] is not None else []) + \
            (["OOD flag"] if "out_of_distribution" in op["referred_by"] else [])
        label = f"run's thresholds ({', '.join(rules) or 'none'}): {op['coverage']:.0%} answered"
        ax.plot(op["coverage"], op["accuracy"], "k*", ms=12, label=label)
    if sel["accuracy_all"] is not None:
        ax.axhline(sel["accuracy_all"], color="grey", ls=":", lw=1, label="every image answered")
    ax.set(title="Accuracy of the images the model answers", xlabel="coverage (share of images answered)",
           ylabel="accuracy on the answered images", xlim=(0, 1.01))
    ax.invert_xaxis()  # read left to right: more and more images referred
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return png(fig)
