"""Every sentence that evaluate prints and report.html shows about calibration, the split, the
weights, test-time augmentation, the threshold and warnings, built from one record of facts.

facts(run_info, metrics) reads only the run record (run.json) and the metrics of one evaluation;
each *_sentence function turns one part of it into plain text. Nothing here assumes a state the
record does not state: no temperature is printed unless one was fitted, a validation split is never
called unseen, a weights file is never called "none"."""

from __future__ import annotations

from pathlib import Path


def calibration_facts(info: dict) -> dict:
    cal = info.get("calibration")
    if cal:
        return {"fitted": True, "temperature": float(cal["temperature"]), "n": cal.get("n"),
                "fitted_on": cal.get("fitted_on", "val"), "ece_before": cal.get("ece_before"),
                "ece_after": cal.get("ece_after")}
    return {"fitted": False, "reason": info.get("calibration_skipped")}


def weights_facts(info: dict) -> dict:
    config = info.get("config", {})
    if config.get("weights"):
        return {"kind": "file", "source": str(config["weights"])}
    pretrained = info.get("pretrained") or config.get("pretrained") or "none"
    if pretrained not in ("none", "auto"):
        return {"kind": "pretrained", "source": str(pretrained)}
    return {"kind": "scratch", "source": None}


def split_facts(metrics: dict) -> dict:
    name = metrics.get("split", "test")
    kind = name if name in ("test", "val", "train") else "external"
    return {"name": name, "kind": kind, "n": metrics.get("n", 0), "source": metrics.get("source")}


def facts(info: dict, metrics: dict) -> dict:
    """The record both the console and the report read."""
    tta = info.get("tta") or {}
    op = metrics.get("operating_point")
    return {
        "split": split_facts(metrics),
        "calibration": calibration_facts(info),
        "weights": weights_facts(info),
        "model": info.get("config", {}).get("model"),
        "tta": {"enabled": bool(metrics.get("tta", tta.get("enabled", False))), "chosen_on": tta.get("chosen_on"),
                "balanced_accuracy": tta.get("balanced_accuracy")},
        "threshold": None if not op else {"value": op["threshold"], "target": op["target"],
                                          "positive_class": op["positive_class"]},
        "best_epoch": info.get("best_epoch"),
        "selection": info.get("selection"),
        "epochs_run": info.get("epochs_run"),
        "warnings": list(metrics.get("warnings") or []),
    }


def calibration_sentence(f: dict) -> str:
    cal = f["calibration"]
    if not cal["fitted"]:
        why = f" because {cal['reason']}" if cal.get("reason") else ""
        return (f"Calibration: not fitted{why}; the probabilities are the model's own softmax outputs, "
                "which are often over-confident.")
    text = (f"Calibration: temperature {cal['temperature']:.3f}, fitted on {cal.get('n') or '?'} validation images "
            "and used by predict and serve")
    if cal.get("ece_before") is not None and cal.get("ece_after") is not None:
        text += f"; validation ECE {cal['ece_before']:.3f} before, {cal['ece_after']:.3f} after"
    if abs(cal["temperature"] - 1.0) < 5e-4:
        text += " (a temperature of 1 leaves the probabilities unchanged)"
    return text + "."


def split_sentence(f: dict) -> str:
    s = f["split"]
    n = s["n"]
    if s["kind"] == "test":
        return (f"All figures come from {n} test images the model never saw while it was trained or tuned: "
                "they are the honest estimate.")
    if s["kind"] == "val":
        return (f"These figures come from {n} validation images. They were not used to fit the weights, but they "
                "chose the kept epoch, the test-time augmentation, the calibration and any threshold, so the "
                "figures are optimistic; the test split gives the honest estimate.")
    if s["kind"] == "train":
        return f"These figures come from {n} training images, which fitted the weights: they say nothing about new patients."
    return (f"These figures come from {n} images of {s.get('source') or 'an external folder'}, outside the run's "
            "own splits; the model never saw them.")


def weights_sentence(f: dict) -> str:
    w = f["weights"]
    model = f.get("model") or "the model"
    if w["kind"] == "file":
        return f"{model} started from the weights file {Path(w['source']).name} and was fine-tuned on these data."
    if w["kind"] == "pretrained":
        return f"{model} started from {w['source']}-pretrained weights and was fine-tuned on these data."
    return f"{model} was trained from scratch (random initial weights) on these data."


def tta_sentence(f: dict) -> str:
    t = f["tta"]
    if t["enabled"]:
        return ("Test-time augmentation: on. Each image is averaged with its mirror image (chosen on validation, "
                "where it raised balanced accuracy; predict and serve do the same).")
    if t.get("chosen_on") == "val":
        return "Test-time augmentation: off (on validation it did not raise balanced accuracy)."
    return "Test-time augmentation: off."


def threshold_sentence(f: dict) -> str:
    t = f["threshold"]
    if not t:
        return ("Decision rule: the class with the highest probability (for two classes, probability ≥ 50%); "
                "no threshold was chosen.")
    (name, target), = t["target"].items()
    return (f"Decision rule: call an image {t['positive_class']} when its probability is at least {t['value']:.3f}, "
            f"the threshold chosen on validation for {name} ≥ {100 * target:.0f}%.")


def selection_sentence(f: dict) -> str:
    if f.get("best_epoch") is None:
        return "The run records no kept epoch."
    sel, run = f.get("selection") or {"select": "best"}, f.get("epochs_run") or "?"
    if sel.get("select") == "average" and len(sel.get("epochs") or []) > 1:
        return f"Of {run} epoch(s), the model kept is the average of the weights of epochs {sel['epochs'][0]}-{sel['epochs'][-1]}."
    if sel.get("select") in ("last", "average"):
        return f"Of {run} epoch(s), the model kept is the one from the last, epoch {f['best_epoch']}."
    return f"Of {run} epoch(s), the model kept is the one from epoch {f['best_epoch']}, the best on validation."


def console_lines(f: dict) -> list[str]:
    """What evaluate prints after its tables."""
    return [split_sentence(f), weights_sentence(f), tta_sentence(f), calibration_sentence(f), threshold_sentence(f)]
