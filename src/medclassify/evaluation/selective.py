"""Selective prediction: how accurate the model is on the images it keeps when it refers the others
to a reader. Images are referred in a fixed order (least confident first; or, when the evaluation
carries out-of-distribution scores, most out-of-distribution first), and the curve gives, for each
share of images kept (coverage), the accuracy on those images. The operating point is what predict
does with the run's thresholds: an image is referred when its top probability is under
`abstain_below` (or when the OOD guard says it is not in distribution)."""

from __future__ import annotations

import numpy as np

from ..config import predict_default

MAX_POINTS = 200  # points stored per curve: enough to draw it, small in metrics/<split>.json


def decisions(probs: np.ndarray, operating_point: dict | None = None, classes: list[str] | None = None) -> np.ndarray:
    """The class predict answers: the highest probability, or the run's threshold for a binary task."""
    pred = probs.argmax(1)
    if operating_point and classes and operating_point.get("positive_class") in classes and probs.shape[1] == 2:
        pos = classes.index(operating_point["positive_class"])
        pred = np.where(probs[:, pos] >= operating_point["threshold"], pos, 1 - pos)
    return pred


def referral_curve(risk: np.ndarray, correct: np.ndarray, max_points: int = MAX_POINTS) -> dict:
    """Refer images from the highest `risk` down (ties in their given order); for each number kept,
    the coverage (share kept) and the accuracy on the kept images. Coverage 1 is the plain accuracy."""
    risk, correct = np.asarray(risk, dtype=np.float64), np.asarray(correct, dtype=bool)
    n = len(correct)
    if n == 0:
        return {"coverage": [], "accuracy": []}
    keep_order = np.argsort(risk, kind="stable")  # lowest risk first: kept longest
    right = np.cumsum(correct[keep_order])
    kept = np.unique(np.linspace(1, n, min(n, max_points)).round().astype(int))
    return {"coverage": np.round(kept / n, 5).tolist(), "accuracy": np.round(right[kept - 1] / kept, 5).tolist()}


def selective_summary(probs: np.ndarray, labels: np.ndarray, abstain_below: float | None,
                      ood_score: np.ndarray | None = None, in_distribution: np.ndarray | None = None,
                      operating_point: dict | None = None, classes: list[str] | None = None) -> dict:
    """The coverage-accuracy curve(s) and the run's operating point, as stored in the metrics JSON."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    pred = decisions(probs, operating_point, classes)
    confidence = probs[np.arange(len(pred)), pred]
    correct = pred == labels
    out = {"abstain_below": abstain_below, "decision": "threshold" if operating_point else "highest probability",
           "n": int(len(labels)), "accuracy_all": float(correct.mean()) if len(correct) else None,
           "curves": {"confidence": referral_curve(-confidence, correct)}}
    kept = np.ones(len(labels), bool) if abstain_below is None else confidence >= abstain_below
    reasons = {"low_confidence": int((~kept).sum())}
    if ood_score is not None:
        out["curves"]["ood"] = referral_curve(np.asarray(ood_score, dtype=np.float64), correct)
    if in_distribution is not None:
        in_dist = np.asarray(in_distribution, dtype=bool)
        reasons["out_of_distribution"] = int((~in_dist).sum())
        kept &= in_dist
    out["operating_point"] = {"coverage": float(kept.mean()) if len(kept) else None,
                              "accuracy": float(correct[kept].mean()) if kept.any() else None,
                              "kept": int(kept.sum()), "referred": int((~kept).sum()), "referred_by": reasons}
    return out


def run_abstain_below(info: dict) -> float | None:
    """The abstain threshold predict uses for this run (PredictOptions' default unless the run records one)."""
    return info.get("abstain_below", predict_default("abstain_below"))


def selective_from_metrics(metrics: dict, abstain_below: float | None, operating_point: dict | None = None) -> dict:
    """selective_summary of an evaluation's saved predictions (with their OOD columns when present)."""
    pr = metrics["predictions"]
    ood = pr.get("ood_scores")
    in_dist = pr.get("in_distribution")
    return selective_summary(np.asarray(pr["probabilities"]), np.asarray(pr["labels"]), abstain_below,
                             ood_score=None if ood is None else np.asarray(ood, dtype=np.float64),
                             in_distribution=None if in_dist is None else np.asarray(in_dist, dtype=bool),
                             operating_point=operating_point, classes=metrics.get("classes"))


def sentence(sel: dict) -> str:
    """One sentence for the report: what the abstain threshold costs and gives."""
    op, n = sel["operating_point"], sel["n"]
    if sel["accuracy_all"] is None:
        return "There are no images to refer."
    base = f"Answering every image, the model is right on {100 * sel['accuracy_all']:.1f}% of them."
    if sel["abstain_below"] is None and "out_of_distribution" not in op["referred_by"]:
        return base + " No abstain threshold is set, so no image is referred."
    why = []
    if sel["abstain_below"] is not None:
        why.append(f"top probability under {100 * sel['abstain_below']:.0f}%")
    if "out_of_distribution" in op["referred_by"]:
        why.append("unlike the training images")
    if not op["referred"]:
        return base + f" No image is referred at the run's thresholds ({' or '.join(why)})."
    rest = ("no image is left to answer" if op["accuracy"] is None else
            f"on the {100 * op['coverage']:.1f}% it answers, it is right on {100 * op['accuracy']:.1f}%")
    return (base + f" The run's thresholds refer {op['referred']} of {n} images ({100 * (1 - op['coverage']):.1f}%: "
            f"{' or '.join(why)}); {rest}.")
