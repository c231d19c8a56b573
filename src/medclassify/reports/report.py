"""report.html: one self-contained page (figures embedded as data URIs, no scripts, no external
files) that a clinician can read: warnings first, headline figures with 95% intervals, per-class
table, confusion matrix, ROC/PR curves, calibration, the most confidently wrong images with
Grad-CAM, training curves, and the run's configuration and data warnings. Every sentence about the
run's state comes from narrative.py; the layout is templates/report.html (jinja2, autoescaped)."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import numpy as np

from .. import pages
from ..errors import MedClassifyError
from ..io import check_output_file, resolved, write_text
from ..reporting import Reporter
from ..run import Run, load_run
from ..training.tracking import run_tracker
from ..data.images import UnreadableImage
from ..evaluation import figures
from ..evaluation.alarms import metric_warnings
from ..evaluation.evaluate import evaluate, saved_metrics
from ..evaluation.shift import shift_sentence
from ..evaluation.selective import run_abstain_below, selective_from_metrics
from ..evaluation.selective import sentence as selective_sentence
from ..explain.gradcam import GradCAM
from ..explain.overlay import explanation_figure
from ..inference.predictor import Predictor
from ..evaluation.narrative import (calibration_sentence, facts, selection_sentence, split_sentence, threshold_sentence,
                        tta_sentence, weights_sentence)

NAMES = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "macro_f1": "Macro F1", "auc": "AUC (ROC)",
         "sensitivity": "Sensitivity", "specificity": "Specificity", "qwk": "Quadratic-weighted kappa"}
EXPLAIN = {
    "accuracy": "share of all images classified correctly",
    "balanced_accuracy": "average of the per-class recalls; not inflated when one class is common",
    "macro_f1": "average over classes of the balance between precision and recall",
    "auc": "chance that a random {pos} image scores higher than a random {neg} one (0.5 = coin toss, 1 = perfect)",
    "sensitivity": "share of {pos} images the model calls {pos}",
    "specificity": "share of {neg} images the model calls {neg}",
    "qwk": "agreement with the true grade, counting far-off grades as worse errors",
}


def _explain(key: str, pos: str, neg: str) -> str:
    if key == "auc" and not pos:
        return "for each class against the others, the chance that an image of it scores higher than one that is not; averaged"
    return EXPLAIN[key].format(pos=pos, neg=neg)


def _metric_rows(metrics: dict, pos: str, neg: str) -> list[list]:
    rows = []
    for k in (k for k in NAMES if metrics.get(k) is not None):
        ci = metrics.get("ci", {}).get(k)
        if k == "qwk":
            value, text = pages.num(metrics[k]), pages.interval(ci, percent=False)
        else:
            value, text = pages.pct(metrics[k]), pages.interval(ci)
        if not text and metrics.get("ci_methods", {}).get(k) == "not estimable":
            text = "not estimable (every resample gave the same value)"
        rows.append([NAMES[k], value, text, _explain(k, pos, neg)])
    return rows


def _cards(metrics: dict, binary: bool) -> list[dict]:
    op = metrics.get("operating_point")
    ci = metrics.get("ci", {})
    if op:  # the figures a user of the chosen threshold will see
        fig = op[metrics["split"]]
        cards = [{"value": fig[k], "ci": fig.get("ci", {}).get(k), "label": f"{NAMES[k]} at threshold {op['threshold']:.3f}"}
                 for k in ("sensitivity", "specificity")]
        cards.append({"value": metrics.get("auc"), "ci": ci.get("auc"), "label": NAMES["auc"]})
    else:
        keys = ["sensitivity", "specificity", "auc"] if binary else ["balanced_accuracy", "accuracy", "macro_f1"]
        cards = [{"value": metrics.get(k), "ci": ci.get(k), "label": NAMES[k]} for k in keys]
    return [c for c in cards if c["value"] is not None]


def _per_class(metrics: dict) -> list[list]:
    rows = []
    for i, (c, m) in enumerate(metrics["per_class"].items()):
        ci = m.get("ci", {})
        predicted = sum(row[i] for row in metrics["confusion_matrix"])
        cells = []
        for k in ("recall", "precision", "f1"):
            undefined = (k == "precision" and predicted == 0) or (k == "recall" and m["support"] == 0)
            cells.append({"v": "n/a" if undefined else pages.pct(m[k]), "ci": pages.interval(ci.get(k))})
        rows.append([c, m["support"], *cells])
    return rows


def operating_point_view(metrics: dict) -> dict | None:
    op = metrics.get("operating_point")
    if not op:
        return None
    (name, target), = op["target"].items()
    test = op[metrics["split"]]

    def row(label, fig):
        return [label] + [{"v": pages.pct(fig[k]), "ci": pages.interval(fig.get("ci", {}).get(k))}
                          for k in ("sensitivity", "specificity", "ppv", "npv")]

    # a validation figure above the whole test interval: the threshold does not carry over
    worse = [{"name": k, "val": op["val"][k], "test": test[k], "ci": test["ci"][k]}
             for k in ("sensitivity", "specificity") if test.get("ci", {}).get(k) and op["val"][k] is not None
             and op["val"][k] > test["ci"][k][1] and metrics["split"] != "val"]
    return {"target_name": name, "target": target, "threshold": op["threshold"], "positive_class": op["positive_class"],
            "rows": ([row("validation (threshold chosen here, so not an independent check)", op["val"])]
                     if metrics["split"] == "val" else
                     [row("validation (threshold chosen here)", op["val"]), row(f"{metrics['split']} (independent check)", test)]),
            "worse": worse, "prevalence": sum(metrics["confusion_matrix"][1]) / max(metrics["n"], 1)}


def _wrong_images(run: Run, metrics: dict, n: int, reporter: Reporter) -> list[dict]:

    pr = metrics["predictions"]
    y = np.asarray(pr["labels"])
    probs = np.asarray(pr["probabilities"])
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:n]
    if not wrong.size:
        return []
    predictor = Predictor(run)
    cam = GradCAM(predictor.model, predictor.prep)
    root = run.info.get("data", {}).get("root")
    cells, cam_ok = [], True
    for i in wrong:
        path = pr["paths"][i]
        try:
            image = predictor.load(path)
        except UnreadableImage:
            continue
        expl = None
        if cam_ok:
            try:
                expl = cam.explain(image, int(pred[i]))
            except MedClassifyError as e:  # not a CNN: show the image alone
                reporter.warn(f"No Grad-CAM in the report: {e.message}")
                cam_ok = False
        note = None
        if expl is not None and expl.flat:
            note = f"Grad-CAM: no localised evidence for {run.classes[pred[i]]} in this image."
        png = explanation_figure(path, image, expl, run.classes, prep=predictor.prep, width_px=420)
        cells.append({"png": png, "truth": run.classes[y[i]], "said": run.classes[pred[i]], "p": probs[i, pred[i]],
                      "path": os.path.relpath(path, root) if root and path.startswith(str(root)) else path, "note": note})
    return cells


def _training(run: Run, f: dict) -> dict:
    path = run.path / "history.csv"
    if not path.is_file():
        return {"png": None, "message": "This run has no history.csv, so no training curves."}
    history = figures.read_history(path)
    if not history or not len(history.get("epoch", [])):
        return {"png": None, "message": "history.csv is empty."}
    return {"png": figures.training_curves(history, run.info.get("best_epoch")), "epochs": len(history["epoch"])}


def _configuration(run: Run) -> list[tuple[str, str]]:
    c = run.info.get("config", {})
    p = run.info.get("preprocessing", {})
    items = [("model", str(c.get("model"))),
             ("input", f"{p.get('image_size')} px, {p.get('channels')} channel(s), resize {p.get('resize')}, "
                       f"normalisation {p.get('normalize')}"),
             ("training", f"{run.info.get('epochs_run', '?')} epochs run, best epoch {run.info.get('best_epoch', '?')}, "
                          f"augmentation {c.get('augment')}, imbalance {c.get('imbalance')}, seed {c.get('seed')}"),
             ("data", c.get("data")), ("created", run.info.get("created")), ("run directory", str(run.path)),
             ("medclassify", run.info.get("medclassify_version"))]
    a = run.info.get("adaptation")
    est = (a or {}).get("estimate") or {}
    if a and a.get("applied") is False and est.get("status") == "estimated":
        shift = a.get("shift") or {}
        differ = (f"differ from the training distribution (p = {shift.get('p_value')}), but"
                  if shift.get("status") == "checked" else "were not checked for a shift (no guard), and")
        items.append(("adapted", f"not adapted: {a.get('images')} images of {a.get('images_folder')} {differ} the adapted "
                                 f"model's estimated accuracy on them was not higher ({est.get('source')} -> "
                                 f"{est.get('adapted')}); source run {a.get('source_run')}"))
    elif a and a.get("applied") is False:
        items.append(("adapted", f"not adapted: no shift found between {a.get('images')} images of "
                                 f"{a.get('images_folder')} and the training distribution (p = "
                                 f"{(a.get('shift') or {}).get('p_value')}); source run {a.get('source_run')}"))
    elif a:  # `medclassify adapt`: the same weights, other BatchNorm statistics
        items.append(("adapted", f"BatchNorm statistics re-estimated without labels on {a.get('images')} images of "
                                 f"{a.get('images_folder')} (guard {a.get('guard')}, alpha {a.get('alpha')}); source run "
                                 f"{a.get('source_run')}"))
    return [(k, str(v)) for k, v in items]


def _data_warnings(run: Run) -> list[str]:
    warnings = list(run.info.get("warnings") or [])
    data = run.info.get("data", {})
    if data.get("patients_known") == 0 and "val" in data.get("counts", {}):
        warnings.append("Patient identifiers were not used when splitting (no --patient-pattern): images of one patient "
                        "may be in both training and validation, which makes validation figures (and the threshold and "
                        "calibration chosen on them) look better than they are.")
    return warnings


def text_of(f: dict) -> dict:
    return {"split": split_sentence(f), "calibration": calibration_sentence(f), "weights": weights_sentence(f),
            "tta": tta_sentence(f), "threshold": threshold_sentence(f), "selection": selection_sentence(f)}


def ood_text(run: Run, metrics: dict) -> dict:
    """The out-of-distribution guard and the shift check of these images, in words."""
    g = run.info.get("ood") or {}
    if g.get("status") == "fitted":
        guard = (f"Out-of-distribution guard: {g['method']} on the model's {g.get('features', '?')} penultimate features, "
                 f"threshold set so {g['quantile']:.0%} of {g.get('threshold_on', 'val')} images pass; predict and serve "
                 "abstain (out_of_distribution) on images beyond it.")
    else:
        guard = f"No out-of-distribution guard: {g.get('reason', 'the run predates it (medclassify fit-guard RUN adds one)')}."
    shift = metrics.get("shift")
    return {"ood": guard, "shift": shift_sentence(shift) if shift else ""}


def render_report(run: Run, metrics: dict, reporter: Reporter | None = None, n_wrong: int = 8) -> str:
    """The page for `metrics` (as evaluate returns them) of `run`; facts come from run.info."""
    reporter = reporter or Reporter(quiet=True)
    t0 = time.perf_counter()
    split = metrics["split"]
    classes = metrics["classes"]
    binary = len(classes) == 2
    pos, neg = (classes[1], classes[0]) if binary else ("", "")
    if "warnings" not in metrics:
        metrics["warnings"] = metric_warnings(metrics)
    f = facts(run.info, metrics)
    pr = metrics["predictions"]
    y, probs = np.asarray(pr["labels"]), np.asarray(pr["probabilities"])
    op = metrics.get("operating_point", {}).get(split)
    curves_text = (f"ROC: every possible threshold for calling an image {pos}, trading sensitivity against false alarms; "
                   "the closer to the top-left corner, the better. Precision-recall: of the images called "
                   f"{pos}, the share that truly are, at each sensitivity; it is the more telling curve when the "
                   "finding is rare." if binary else
                   "One curve per class (that class against all others). ROC: closer to the top-left is better. "
                   "Precision-recall: the dotted line is the class's share of the images, the level of guessing.")
    fitted = f["calibration"]["fitted"]
    sel = metrics.get("selective") or selective_from_metrics(metrics, run_abstain_below(run.info), run.info.get("operating_point"))
    return pages.render(
        "report.html",
        title=f"{run.path.name}: {' vs '.join(classes) if len(classes) <= 4 else f'{len(classes)} classes'}",
        subtitle=(f"{run.model_name} classifier · {split} set of {metrics['n']} images · report of "
                  f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"),
        warnings=metrics["warnings"], text={**text_of(f), **ood_text(run, metrics)}, binary=binary, pos=pos, neg=neg, split=split,
        split_kind=f["split"]["kind"], n=metrics["n"], cards=_cards(metrics, binary),
        metric_rows=_metric_rows(metrics, pos, neg), ci_method=metrics.get("ci_method", "bootstrap"),
        op=operating_point_view(metrics), per_class=_per_class(metrics), curves_text=curves_text,
        fig={"confusion": figures.confusion_matrices(metrics["confusion_matrix"], classes),
             "roc": figures.roc_curves(y, probs, classes, op), "pr": figures.pr_curves(y, probs, classes),
             "reliability": figures.reliability_diagram(metrics["reliability"]), "selective": figures.selective_curve(sel)},
        selective_text=selective_sentence(sel), selective_ood="ood" in sel["curves"],
        ece=metrics["ece"], ece_uncalibrated=metrics.get("ece_uncalibrated"), calibration=f["calibration"],
        calibration_worse=fitted and metrics.get("ece_uncalibrated") is not None and metrics["ece"] > metrics["ece_uncalibrated"],
        n_errors=int((probs.argmax(1) != y).sum()), wrong=_wrong_images(run, metrics, n_wrong, reporter) if n_wrong else [],
        training=_training(run, f), data_warnings=_data_warnings(run), configuration=_configuration(run),
        counts=run.info.get("data", {}).get("counts", {}), classes=classes,
        footer=f"medclassify {run.info.get('medclassify_version', '')} · built in {time.perf_counter() - t0:.1f} s",
    )


def report_path(run: Run, out: str | Path | None) -> Path:
    """Where the report goes, checked before any work: RUN/report.html, or a file outside the run."""
    default = run.path / "report.html"
    if out is None or resolved(out) == resolved(default):
        return check_output_file(default)
    return check_output_file(out, protected_dirs=[run.path])


def build_report(run: Run | str | Path, split: str = "test", out: str | Path | None = None,
                 reporter: Reporter | None = None, n_wrong: int = 8, fresh: bool = False) -> Path:
    """Write the run's report (default RUN/report.html) and return its path."""

    reporter = reporter or Reporter(quiet=True)
    run = run if isinstance(run, Run) else load_run(run)
    out = report_path(run, out)
    metrics = None if fresh else saved_metrics(run, split)
    if metrics is None:
        metrics = evaluate(run, split=split, reporter=reporter)
        run = load_run(run.path)  # calibration may have been (re)fitted
    out = Path(out) if out else run.path / "report.html"
    path = write_text(out, render_report(run, metrics, reporter, n_wrong))
    run_tracker(run.info, reporter).log_artifacts(path.parent, (path.name,))
    return path
