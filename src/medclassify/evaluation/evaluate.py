"""Evaluating a run on one of its splits or on any labelled folder. The scoring itself
(score_records, through engine.py) and the TTA choice live in training/validation.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.sources import scan_folder
from ..errors import ConfigError, RunError
from ..io import check_output_file, check_writable_folder, write_csv
from ..reporting import Reporter
from ..engine import softmax
from ..run import Run, load_run
from ..training.tracking import run_tracker
from ..training.validation import choose_tta, score_records
from .alarms import metric_warnings
from .bootstrap import attach_cis
from .intervals import proportion_cis
from .calibration import expected_calibration_error, fit_temperature, reliability, save_temperature
from .narrative import facts
from .shift import shift_check
from .selective import run_abstain_below, selective_from_metrics
from .threshold import check_target, choose_threshold, operating_point


MIN_CALIBRATION_IMAGES = 50


def validation_logits(run: Run, reporter: Reporter | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(logits, labels) of the run's validation split: from metrics/val.json when it holds logits for
    exactly the split's images, else computed once and saved. None when the run has no validation split."""
    records = run.records("val")
    if not records:
        return None
    saved = run.metrics("val")
    usable = saved is not None and "logits" in saved.get("predictions", {}) and bool(saved.get("tta")) == run.tta
    if usable:
        paths = saved["predictions"]["paths"]
        usable = set(paths) <= {r.path for r in records} and len(paths) + saved.get("unreadable", 0) == len(records)
    if not usable:
        saved = score_records(run, records, reporter=reporter)
        saved["split"] = "val"
        run.save_metrics("val", saved)
    pr = saved["predictions"]
    return np.asarray(pr["logits"], dtype=np.float64), np.asarray(pr["labels"], dtype=np.int64)


def calibrate(run: Run, reporter: Reporter | None = None) -> dict | None:
    """Fit temperature scaling on the validation logits and store it in run.json."""
    if run.record.adaptation is not None and run.record.calibration is not None:
        # the source's temperature: its validation images are not the site the statistics were adapted to
        return run.info["calibration"]
    val = validation_logits(run, reporter)
    reason = None
    if val is None:
        reason = "it has no validation split"
    elif len(val[1]) < MIN_CALIBRATION_IMAGES:
        reason = f"its validation split has only {len(val[1])} images (calibration needs {MIN_CALIBRATION_IMAGES})"
    elif (val[0].argmax(1) == val[1]).all():
        reason = "the model makes no mistake on validation, so the temperature cannot be estimated (it would go to 0)"
    if reason:
        (reporter or Reporter(quiet=True)).warn(f"Probabilities of run {run.path} are left uncalibrated: {reason}.")
        if run.info.get("calibration_skipped") != reason or "calibration" in run.info:
            run.update(calibration=None, calibration_skipped=reason)  # the report and evaluate say why, and print no temperature
        return None
    logits, y = val
    t = fit_temperature(logits, y)
    save_temperature(run, t, "val", len(y), expected_calibration_error(y, softmax(logits)),
                     expected_calibration_error(y, softmax(logits, t)))
    return run.info["calibration"]


def class_order(run: Run, order: str | list[str] | None) -> list[int]:
    """Class indices from lowest to highest grade, for ordinal statistics."""
    if order is None:
        return list(range(len(run.classes)))
    names = [n.strip() for n in order.split(",")] if isinstance(order, str) else list(order)
    if sorted(names) != sorted(run.classes):
        raise ConfigError(f"--order {','.join(names)} must list each class of the run exactly once ({', '.join(run.classes)}).",
                          "pass all class names, comma-separated, from lowest to highest grade.")
    return [run.classes.index(n) for n in names]


def add_statistics(metrics: dict, n_boot: int = 1000, seed: int = 0, order: list[int] | None = None) -> dict:
    """CIs, quadratic-weighted kappa (when `order` is given) and calibration of a metrics dict."""
    pr = metrics["predictions"]
    y, probs = np.asarray(pr["labels"]), np.asarray(pr["probabilities"])
    attach_cis(metrics, n_boot=n_boot, seed=seed, order=order)
    if order is not None:
        from sklearn.metrics import cohen_kappa_score

        rank = np.argsort(order)
        metrics["qwk"] = float(cohen_kappa_score(rank[y], rank[probs.argmax(1)], weights="quadratic"))
        metrics["ordinal_order"] = [metrics["classes"][i] for i in order]
    metrics["reliability"] = reliability(y, probs)
    metrics["ece"] = metrics["reliability"]["ece"]
    if "logits" in pr:
        metrics["ece_uncalibrated"] = expected_calibration_error(y, softmax(np.asarray(pr["logits"])))
    return metrics


def add_operating_point(run: Run, metrics: dict, target_sensitivity: float | None, target_specificity: float | None,
                        n_boot: int = 1000, seed: int = 0) -> dict:
    """Choose a threshold on validation for the target and report what it gives on `metrics`' images."""
    if len(run.classes) != 2:
        raise ConfigError("--target-sensitivity/--target-specificity need a binary task "
                          f"(run {run.path} has {len(run.classes)} classes).", "drop the option for multiclass runs.")
    val = validation_logits(run)
    if val is None:
        raise RunError(f"Run {run.path} has no validation split to choose a threshold on.",
                       "train with a validation split (the default), or drop --target-*.")
    val_p = softmax(val[0], run.temperature)[:, 1]
    t = choose_threshold(val[1], val_p, target_sensitivity, target_specificity)
    pr = metrics["predictions"]
    y, p = np.asarray(pr["labels"]), np.asarray(pr["probabilities"])[:, 1]
    test = operating_point(y, p, t)
    val_fig = operating_point(val[1], val_p, t)
    for fig in (test, val_fig):  # exact intervals from the counts at this threshold
        ci = proportion_cis(np.array([[fig["tn"], fig["fp"]], [fig["fn"], fig["tp"]]]))
        fig["ci"] = {m: list(ci[m]) for m in ("sensitivity", "specificity", "ppv", "npv") if m in ci}
    target = ("sensitivity", target_sensitivity) if target_sensitivity is not None else ("specificity", target_specificity)
    metrics["operating_point"] = {"target": {target[0]: target[1]}, "chosen_on": "val", "threshold": t,
                                  "positive_class": run.classes[1], "val": val_fig,
                                  metrics["split"]: test}
    run.update(operating_point={"threshold": t, "target": {target[0]: target[1]}, "positive_class": run.classes[1]})
    return metrics


def evaluate(run: Run | str | Path, split: str = "test", data: str | Path | None = None,
             reporter: Reporter | None = None, save: bool = True, target_sensitivity: float | None = None,
             target_specificity: float | None = None, ordinal: bool = False, order: str | list[str] | None = None,
             n_boot: int = 1000, seed: int = 0, calibrate_first: bool = True) -> dict:
    """Metrics of a run on its `split` (default: test), or on the labelled folder/CSV `data`, with 95%
    bootstrap CIs, calibration (temperature fitted on validation and stored in the run), and optionally
    an operating threshold chosen on validation and the quadratic-weighted kappa for ordinal classes.
    Saved as metrics/<split>.json (metrics/external.json for --data) unless save=False."""
    run = run if isinstance(run, Run) else load_run(run)
    order_idx = class_order(run, order) if ordinal or order is not None else None
    wants_threshold = target_sensitivity is not None or target_specificity is not None
    if wants_threshold:
        check_target(target_sensitivity, target_specificity)
        if len(run.classes) != 2:
            raise ConfigError("--target-sensitivity/--target-specificity need a binary task "
                              f"(run {run.path} has {len(run.classes)} classes).", "drop the option for multiclass runs.")
    if data is not None:
        records = scan_folder(data).records
        name = "external"
    else:
        records = run.records(split)
        name = split
        if not records:
            have = sorted({r.split for r in run.records() if r.split})
            raise RunError(f"Run {run.path} has no {split!r} split (it has: {', '.join(have)}).",
                           "pass --split with one of those, or --data FOLDER with labelled images.")
    if save or calibrate_first:  # its outputs (run.json, metrics/) are checked before the work
        check_output_file(run.path / "metrics" / f"{name}.json", what="metrics file")
        check_writable_folder(run.path, what="run directory")
    model = run.build_model()  # damaged weights fail here, before anything is written into the run
    if calibrate_first:
        choose_tta(run, reporter)
        calibrate(run, reporter)
    metrics = score_records(run, records, reporter=reporter, model=model, features=True)
    feats = metrics.pop("_features", None)
    metrics["shift"] = shift_check(run, records, name, reporter, seed, features=feats) if feats is not None and len(feats) > 1 \
        else {"status": "unavailable", "name": name, "reason": "the model's features cannot be read"}
    metrics["split"] = name
    metrics["source"] = str(data) if data is not None else str(run.path / "split.csv")
    add_statistics(metrics, n_boot=n_boot, seed=seed, order=order_idx)
    if wants_threshold:
        add_operating_point(run, metrics, target_sensitivity, target_specificity, n_boot, seed)
    metrics["selective"] = selective_from_metrics(metrics, run_abstain_below(run.info), run.info.get("operating_point"))
    metrics["warnings"] = metric_warnings(metrics)  # printed by the CLI after its tables, shown atop report.html
    metrics["facts"] = facts(run.info, metrics)
    if save:
        run.save_metrics(name, metrics)
        write_predictions_table(run, metrics)
        tracker = run_tracker(run.info, reporter)  # the training's MLflow run, when it was tracked
        tracker.log_test(metrics)
        tracker.log_artifacts(run.path, ("run.json", "metrics"))
    return metrics


def write_predictions_table(run: Run, metrics: dict) -> Path:
    """metrics/<split>-predictions.csv: one row per image with its label, prediction, probabilities,
    and the out-of-distribution guard's ood_score and in_distribution (empty without a guard)."""
    pr, classes = metrics["predictions"], run.classes
    probs = np.asarray(pr["probabilities"], dtype=np.float64).reshape(len(pr["paths"]), -1)
    n = len(pr["paths"])
    scores, inside = pr.get("ood_scores", [None] * n), pr.get("in_distribution", [None] * n)
    path = run.path / "metrics" / f"{metrics['split']}-predictions.csv"
    write_csv(path, ["path", "label", "predicted", "confidence", *[f"prob_{c}" for c in classes], "ood_score", "in_distribution"],
              ([pr["paths"][i], classes[pr["labels"][i]], classes[int(probs[i].argmax())], f"{probs[i].max():.6f}",
                *[f"{v:.6f}" for v in probs[i]], "" if scores[i] is None else f"{scores[i]:.6g}",
                "" if inside[i] is None else ("yes" if inside[i] else "no")] for i in range(n)))
    return path


def saved_metrics(run: Run, split: str) -> dict | None:
    """Saved metrics that are complete and current (same weights, same calibration) — reused so a
    report right after `evaluate` does not run the model twice."""
    m = run.metrics(split)
    path = run.path / "metrics" / f"{split}.json"
    if not m or "ci" not in m or "logits" not in m.get("predictions", {}) or "ci_methods" not in m:
        return None
    if path.stat().st_mtime < (run.path / "model.safetensors").stat().st_mtime:
        return None
    if abs(m.get("temperature", 1.0) - run.temperature) > 1e-9:
        return None
    return m


evaluate_records = score_records  # the name older callers use
