"""Warnings about an evaluation that should alarm a reader, computed once from the metrics and shown
in three places: the console (evaluate), metrics/<split>.json ("warnings") and the top of report.html.

- chance: AUC <= 0.6, the model ranks images little better than a coin toss.
- never_predicted: a class the model never predicts on these images (its precision is undefined).
- small_split: the split is too small for the interval to say much: a class with no image, or the
  95% interval of a headline proportion (sensitivity and specificity for two classes, each class's
  recall otherwise) wider than MAX_CI_WIDTH = 0.20 (about 60 images per class at 85%).
- selection_split: the figures are on images that chose the model (validation picks the epoch, the
  test-time augmentation, the calibration and any threshold; training images fitted the weights), so
  they are optimistic.
- distribution_shift: the shift check (evaluation/shift.py) finds these images unlike the training
  distribution, so validation figures overstate the figures on them."""

from __future__ import annotations

CHANCE_AUC = 0.6
MAX_CI_WIDTH = 0.20


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def metric_warnings(metrics: dict) -> list[dict]:
    """[{"code", "message"}] for `metrics` as evaluate builds them (with "ci" and "per_class")."""
    out = []
    classes = metrics["classes"]
    split = metrics.get("split", "test")
    auc = metrics.get("auc")
    if auc is not None and auc <= CHANCE_AUC:
        ci = metrics.get("ci", {}).get("auc")
        out.append({"code": "chance", "message":
                    f"AUC {auc:.3f}" + (f" (95% {ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
                    + f" is no better than chance (≤ {CHANCE_AUC}): the model barely tells the classes apart on "
                    "these images. Do not use its predictions."})
    cm = metrics.get("confusion_matrix") or []
    predicted = [sum(row[j] for row in cm) for j in range(len(classes))] if cm else []
    never = [c for c, n in zip(classes, predicted) if n == 0]
    if never and metrics.get("n"):
        only = [c for c, n in zip(classes, predicted) if n > 0]
        out.append({"code": "never_predicted", "message":
                    f"The model never predicted {', '.join(never)} on these {metrics['n']} images"
                    + (f" (every image was called {only[0]})" if len(only) == 1 else "")
                    + f": it cannot find {', '.join(never)}, whatever its overall figures say."})
    absent = [c for c in classes if metrics["per_class"][c]["support"] == 0]
    if absent:
        out.append({"code": "small_split", "message":
                    f"The {split} images include no {', '.join(absent)}, so the figures for "
                    f"{'that class' if len(absent) == 1 else 'those classes'} cannot be estimated."})
    else:
        wide = _wide_intervals(metrics)
        if wide:
            out.append({"code": "small_split", "message":
                        f"The {split} split ({metrics['n']} images) is too small for precise figures: "
                        + "; ".join(f"{name} 95% interval {_pct(lo)}–{_pct(hi)}" for name, lo, hi in wide)
                        + f" (wider than {MAX_CI_WIDTH:.2f}). More test images are needed before relying on them."})
    shift = metrics.get("shift") or {}
    if shift.get("shift") and split not in ("val", "train"):
        out.append({"code": "distribution_shift", "message": shift["message"]})
    if split in ("val", "train"):
        chose = ("fitted the weights" if split == "train" else
                 "chose the kept epoch, the test-time augmentation, the calibration and any threshold")
        out.append({"code": "selection_split", "message":
                    f"These figures are on the {'training' if split == 'train' else 'validation'} images, which "
                    f"{chose}: they are optimistic. Evaluate on the test split for an honest estimate."})
    return out


def _wide_intervals(metrics: dict) -> list[tuple[str, float, float]]:
    ci = metrics.get("ci", {})
    if len(metrics["classes"]) == 2:
        named = [(k, ci[k]) for k in ("sensitivity", "specificity") if k in ci]
    else:
        named = [(f"{c} recall", m["ci"]["recall"]) for c, m in metrics["per_class"].items() if "recall" in m.get("ci", {})]
    return [(name, lo, hi) for name, (lo, hi) in named if hi - lo > MAX_CI_WIDTH]
