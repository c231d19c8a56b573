"""report.html: one self-contained page (figures embedded as base64 PNG, no scripts, no external
files) that a clinician can read: headline figures with 95% intervals, per-class table, confusion
matrix, ROC/PR curves, calibration, the most confidently wrong images with Grad-CAM, training
curves, and the run's configuration and data warnings."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import os
import time
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np

from ..errors import MedClassifyError
from ..io import check_output_file, resolved, write_text
from ..reporting import Reporter
from ..run import Run, load_run
from . import figures

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


def _e(x) -> str:
    return html.escape(str(x))


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _ci(ci) -> str:
    return "" if not ci else f"{100 * ci[0]:.1f}% – {100 * ci[1]:.1f}%"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _saved_metrics(run: Run, split: str) -> dict | None:
    """Saved metrics that are complete and current (same weights, same calibration) — reused so a
    report right after `evaluate` does not run the model twice."""
    m = run.metrics(split)
    path = run.path / "metrics" / f"{split}.json"
    if not m or "ci" not in m or "logits" not in m.get("predictions", {}):
        return None
    if path.stat().st_mtime < (run.path / "model.safetensors").stat().st_mtime:
        return None
    if abs(m.get("temperature", 1.0) - float(run.info.get("calibration", {}).get("temperature", 1.0))) > 1e-9:
        return None
    return m


def _metric_rows(metrics: dict, pos: str, neg: str) -> str:
    keys = [k for k in NAMES if metrics.get(k) is not None]
    rows = "".join(
        f"<tr><td>{NAMES[k]}</td><td>{_pct(metrics[k]) if k != 'qwk' else f'{metrics[k]:.3f}'}</td>"
        f"<td class='ci'>{_ci(metrics.get('ci', {}).get(k)) if k != 'qwk' else _kappa_ci(metrics)}</td>"
        f"<td class='text'>{_e(_explain(k, pos, neg))}</td></tr>"
        for k in keys)
    rule = ("the class with the highest probability (for two classes: probability ≥ 50%)" if "operating_point" not in metrics
            else "the default rule, probability ≥ 50% (the chosen threshold's figures are in the next table)")
    return (f"<p>Figures when each image is assigned by {rule}.</p>"
            "<table><tr><th>measure</th><th>value</th><th>95% interval</th><th class='text'>what it means</th></tr>" + rows + "</table>"
            f"<p class='sub'>95% intervals: {_e(metrics.get('ci_method', 'bootstrap'))}. With {metrics['n']} test images, "
            "the true value for similar patients is likely to lie in this range; a narrower range needs more test images.</p>")


def _kappa_ci(metrics: dict) -> str:
    ci = metrics.get("ci", {}).get("qwk")
    return "" if not ci else f"{ci[0]:.3f} – {ci[1]:.3f}"


def _cards(metrics: dict, binary: bool) -> str:
    op = metrics.get("operating_point")
    if op:  # the figures a user of the chosen threshold will see
        fig = op[metrics["split"]]
        cards = [(fig[k], fig.get("ci", {}).get(k), f"{NAMES[k]} at threshold {op['threshold']:.3f}")
                 for k in ("sensitivity", "specificity")]
        cards.append((metrics.get("auc"), metrics.get("ci", {}).get("auc"), NAMES["auc"]))
        return "".join(f"<div class='card'><div class='v'>{_pct(v)}</div><div class='l'>{label}"
                       f"{'<br>95%: ' + _ci(ci) if ci else ''}</div></div>" for v, ci, label in cards if v is not None)
    keys = ["sensitivity", "specificity", "auc"] if binary else ["balanced_accuracy", "accuracy", "macro_f1"]
    out = []
    for k in keys:
        if metrics.get(k) is None:
            continue
        ci = metrics.get("ci", {}).get(k)
        out.append(f"<div class='card'><div class='v'>{_pct(metrics[k])}</div><div class='l'>{NAMES[k]}"
                   f"{'<br>95%: ' + _ci(ci) if ci else ''}</div></div>")
    return "".join(out)


def _per_class(metrics: dict) -> str:
    rows = []
    for c, m in metrics["per_class"].items():
        ci = m.get("ci", {})
        rows.append(f"<tr><td>{_e(c)}</td><td>{m['support']}</td>"
                    + "".join(f"<td>{_pct(m[k])}</td><td class='ci'>{_ci(ci.get(k))}</td>" for k in ("recall", "precision", "f1"))
                    + "</tr>")
    return ("<table><tr><th>class</th><th>images</th><th>recall (sensitivity)</th><th>95%</th>"
            "<th>precision (PPV)</th><th>95%</th><th>F1</th><th>95%</th></tr>" + "".join(rows) + "</table>"
            "<p class='sub'>Recall: of the images that truly are this class, the share the model found. "
            "Precision: of the images the model put in this class, the share that truly are.</p>")


def _operating_point(metrics: dict) -> str:
    op = metrics.get("operating_point")
    if not op:
        return ("<p>Figures above use the default rule: the class with the highest probability (for two classes, "
                "probability ≥ 50%). A threshold for a target sensitivity can be chosen with "
                "<code>medclassify evaluate RUN --target-sensitivity 0.95</code>.</p>")
    (name, target), = op["target"].items()
    test = op[metrics["split"]]
    rows = "".join(
        f"<tr><td>{label}</td>" + "".join(
            f"<td>{_pct(fig[k])}{' <span class=ci>(' + _ci(fig.get('ci', {}).get(k)) + ')</span>' if fig.get('ci', {}).get(k) else ''}</td>"
            for k in ("sensitivity", "specificity", "ppv", "npv")) + "</tr>"
        for label, fig in (("validation (threshold chosen here)", op["val"]), (f"{metrics['split']} (independent check)", test)))
    # a validation figure above the whole test interval: the threshold does not carry over
    worse = [k for k in ("sensitivity", "specificity") if test.get("ci", {}).get(k) and op["val"][k] is not None
             and op["val"][k] > test["ci"][k][1]]
    warn = "" if not worse else (
        "<div class='warn'><b>The threshold does not carry over to the test images:</b> "
        + "; ".join(f"{k} {_pct(op['val'][k])} on validation but {_pct(test[k])} (95% {_ci(test['ci'][k])}) on test"
                    for k in worse)
        + ". The test images probably come from another population, scanner or time than the training images. "
          "Check the threshold on local data before relying on it.</div>")
    prevalence = sum(metrics["confusion_matrix"][1]) / max(metrics["n"], 1)
    return (f"<h3>Operating threshold for {name} ≥ {_pct(target)}</h3>"
            f"<p>Call an image <b>{_e(op['positive_class'])}</b> when its probability is at least "
            f"<b>{op['threshold']:.3f}</b>. The threshold was chosen on the validation images and then applied "
            f"unchanged to the {metrics['split']} images, whose figures are the honest estimate.</p>"
            "<table><tr><th></th><th>sensitivity</th><th>specificity</th><th>PPV</th><th>NPV</th></tr>" + rows + "</table>"
            + warn + f"<p class='sub'>PPV (positive predictive value): of the images called {_e(op['positive_class'])}, the "
            f"share that truly are; NPV likewise for the others. Both depend on how common the finding is: "
            f"{_pct(prevalence)} of these test images are {_e(op['positive_class'])}; where it is rarer, PPV is lower "
            "and NPV higher.</p>")


def _wrong_images(run: Run, metrics: dict, n: int, reporter: Reporter) -> tuple[str, int]:
    from PIL import Image

    from ..data.images import UnreadableImage
    from ..explain.gradcam import GradCAM
    from ..explain.overlay import blend, to_rgb
    from ..inference.predictor import Predictor

    pr = metrics["predictions"]
    y = np.asarray(pr["labels"])
    probs = np.asarray(pr["probabilities"])
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:n]
    if not wrong.size:
        return "", 0
    predictor = Predictor(run)
    cam = GradCAM(predictor.model, predictor.prep)
    cells = []
    for i in wrong:
        path = pr["paths"][i]
        root = run.info.get("data", {}).get("root")
        shown = os.path.relpath(path, root) if root and path.startswith(str(root)) else path
        try:
            image = predictor.load(path)
        except UnreadableImage:
            continue
        try:
            overlay = blend(image, cam.explain(image, int(pred[i])).heatmap)
        except MedClassifyError as e:  # not a CNN: show the image alone
            reporter.warn(f"No Grad-CAM in the report: {e.message}")
            overlay = None
        pic = to_rgb(image) if overlay is None else np.concatenate([to_rgb(image), np.full((image.shape[0], 3, 3), 255, np.uint8),
                                                                       overlay], 1)
        buf = io.BytesIO()
        Image.fromarray(pic).save(buf, format="PNG")
        classes = run.classes
        cells.append(f"<figure><img alt='misclassified image' src='data:image/png;base64,{_b64(buf.getvalue())}'>"
                     f"<figcaption>Truth: <b>{_e(classes[y[i]])}</b>. Model said <b>{_e(classes[pred[i]])}</b> "
                     f"with probability {_pct(probs[i, pred[i]])}.<div class='path'>{_e(shown)}</div></figcaption></figure>")
    return "".join(cells), len(wrong)


def _training(run: Run) -> str:
    path = run.path / "history.csv"
    if not path.is_file():
        return "<p>This run has no history.csv, so no training curves.</p>"
    history = figures.read_history(path)
    if not history or not len(history.get("epoch", [])):
        return "<p>history.csv is empty.</p>"
    best = run.info.get("best_epoch")
    return (f"<p>{len(history['epoch'])} epoch(s); the model kept is the one from epoch {best} (dotted line), the best on "
            "validation. A validation loss that rises while the training loss keeps falling means over-fitting.</p>"
            f"<img alt='training curves' src='data:image/png;base64,{_b64(figures.training_curves(history, best))}'>")


def _configuration(run: Run) -> str:
    c = run.info.get("config", {})
    p = run.info.get("preprocessing", {})
    items = [("model", f"{c.get('model')} ({run.info.get('pretrained', 'n/a')} weights)"),
             ("input", f"{p.get('image_size')} px, {p.get('channels')} channel(s), resize {p.get('resize')}, "
                       f"normalisation {p.get('normalize')}"),
             ("training", f"{run.info.get('epochs_run', '?')} epochs run, best epoch {run.info.get('best_epoch', '?')}, "
                          f"augmentation {c.get('augment')}, imbalance {c.get('imbalance')}, seed {c.get('seed')}"),
             ("data", c.get("data")), ("created", run.info.get("created")), ("run directory", str(run.path)),
             ("medclassify", run.info.get("medclassify_version"))]
    cal = run.info.get("calibration")
    if cal:
        items.append(("calibration", f"temperature {cal['temperature']:.3f} fitted on {cal.get('n', '?')} validation images"))
    return "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)


def _data_table(run: Run) -> str:
    counts = run.info.get("data", {}).get("counts", {})
    if not counts:
        return ""
    splits = [s for s in ("train", "val", "test") if s in counts] + [s for s in counts if s not in ("train", "val", "test")]
    rows = "".join(f"<tr><td>{_e(c)}</td>" + "".join(f"<td>{counts[s].get(c, 0)}</td>" for s in splits) + "</tr>"
                   for c in run.classes)
    total = "<tr><th>total</th>" + "".join(f"<th>{sum(counts[s].values())}</th>" for s in splits) + "</tr>"
    return ("<table><tr><th>images per class</th>" + "".join(f"<th>{_e(s)}</th>" for s in splits) + "</tr>"
            + rows + total + "</table>")


def _warnings(run: Run) -> str:
    warnings = list(run.info.get("warnings") or [])
    data = run.info.get("data", {})
    if data.get("patients_known") == 0 and "val" in data.get("counts", {}):
        warnings.append("Patient identifiers were not used when splitting (no --patient-pattern): images of one patient "
                        "may be in both training and validation, which makes validation figures (and the threshold and "
                        "calibration chosen on them) look better than they are.")
    if not warnings:
        return "<p>No data warnings were recorded for this run.</p>"
    return "<p><b>Data warnings:</b></p>" + "".join(f"<div class='warn'>{_e(w)}</div>" for w in warnings)


def _how_to_read(binary: bool, pos: str, neg: str, split: str, n: int) -> str:
    first = (f"The model answers one question: is the image <b>{_e(pos)}</b> (the positive finding) or "
             f"<b>{_e(neg)}</b>? <b>Sensitivity</b> is the share of {_e(pos)} images it catches; <b>specificity</b> "
             f"the share of {_e(neg)} images it correctly leaves alone. "
             if binary else "The model sorts each image into one of the classes below. ")
    return (f"<p>{first}All figures come from {n} <b>{_e(split)}</b> images the model never saw while it was trained "
            "or tuned. Each figure has a <b>95% interval</b>: the range the value would probably fall in on other "
            "patients like these; when two models' intervals overlap a lot, the test set cannot tell them apart. "
            "The <b>probabilities</b> are calibrated on validation images (see the calibration section) but only "
            "describe patients like those in the training data: different scanners, ages or disease mix can change "
            "every number here. The coloured <b>heatmaps</b> show where the model looked, not why; a heatmap on a "
            "label, marker or the image border is a warning sign. This is a research tool, not a certified medical "
            "device.</p>")


def report_path(run: Run, out: str | Path | None) -> Path:
    """Where the report goes, checked before any work: RUN/report.html, or a file outside the run."""
    default = run.path / "report.html"
    if out is None or resolved(out) == resolved(default):
        return check_output_file(default)
    return check_output_file(out, protected_dirs=[run.path])


def build_report(run: Run | str | Path, split: str = "test", out: str | Path | None = None,
                 reporter: Reporter | None = None, n_wrong: int = 8, fresh: bool = False) -> Path:
    """Write the run's report (default RUN/report.html) and return its path."""
    from .evaluate import evaluate

    reporter = reporter or Reporter(quiet=True)
    t0 = time.perf_counter()
    run = run if isinstance(run, Run) else load_run(run)
    out = report_path(run, out)
    metrics = None if fresh else _saved_metrics(run, split)
    if metrics is None:
        metrics = evaluate(run, split=split, reporter=reporter)
        run = load_run(run.path)  # calibration may have been (re)fitted
    classes = metrics["classes"]
    binary = len(classes) == 2
    pos, neg = (classes[1], classes[0]) if binary else ("", "")
    pr = metrics["predictions"]
    y, probs = np.asarray(pr["labels"]), np.asarray(pr["probabilities"])
    op = metrics.get("operating_point", {}).get(split)
    wrong_html, n_wrong_shown = _wrong_images(run, metrics, n_wrong, reporter)
    n_errors = int((probs.argmax(1) != y).sum())
    cal = run.info.get("calibration")
    calibration_text = (
        f"When the model says it is 90% sure, it should be right about 90% of the time. Bars on the dashed line mean "
        f"the stated confidence can be taken at face value; bars below it mean over-confidence. Expected calibration "
        f"error (ECE, the average gap): <b>{metrics['ece']:.3f}</b>"
        + (f" after temperature scaling (temperature {cal['temperature']:.2f}, fitted on {cal['n']} validation images; "
           f"{metrics.get('ece_uncalibrated', float('nan')):.3f} before)." if cal else
           " (no calibration was fitted for this run)."))
    if cal and metrics.get("ece_uncalibrated") is not None and metrics["ece"] > metrics["ece_uncalibrated"]:
        calibration_text += (
            "<div class='warn'><b>Calibration did not carry over to the test images:</b> the temperature fitted on "
            "validation made the test probabilities less reliable, not more. The test images differ from the "
            "training and validation images; read the probabilities as rankings, not as chances.</div>")
    curves_text = (f"ROC: every possible threshold for calling an image {_e(pos)}, trading sensitivity against false alarms; "
                   "the closer to the top-left corner, the better. Precision-recall: of the images called "
                   f"{_e(pos)}, the share that truly are, at each sensitivity; it is the more telling curve when the "
                   "finding is rare." if binary else
                   "One curve per class (that class against all others). ROC: closer to the top-left is better. "
                   "Precision-recall: the dotted line is the class's share of the images, the level of guessing.")
    wrong_text = (f"With the highest-probability rule the model was wrong on {n_errors} of {metrics['n']} images. These "
                  f"{n_wrong_shown} are the ones it was most sure about — the errors that would mislead a reader most. "
                  "Left: the image as the model saw it (resized and padded); right: Grad-CAM, the regions that pushed "
                  "the model towards its wrong answer, from green (some) to red (most). Uncoloured areas had little "
                  "influence. Colour on text, markers or the image edge means the model uses something other than anatomy."
                  if n_errors else "The model made no error on these images.")
    page = Template(resources.files(__package__).joinpath("templates/report.html").read_text()).substitute(
        title=_e(f"{run.path.name}: {' vs '.join(classes) if len(classes) <= 4 else f'{len(classes)} classes'}"),
        subtitle=_e(f"{run.model_name} classifier · {split} set of {metrics['n']} images · report of "
                    f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"),
        how_to_read=_how_to_read(binary, pos, neg, split, metrics["n"]),
        split=_e(split), cards=_cards(metrics, binary), metrics_table=_metric_rows(metrics, pos, neg),
        operating_point=_operating_point(metrics), per_class_table=_per_class(metrics),
        fig_confusion=_b64(figures.confusion_matrices(metrics["confusion_matrix"], classes)),
        curves_text=curves_text, fig_roc=_b64(figures.roc_curves(y, probs, classes, op)),
        fig_pr=_b64(figures.pr_curves(y, probs, classes)),
        calibration_text=calibration_text, fig_reliability=_b64(figures.reliability_diagram(metrics["reliability"])),
        wrong_text=wrong_text, wrong_images=wrong_html, training_section=_training(run), warnings=_warnings(run),
        configuration=_configuration(run), data_table=_data_table(run),
        footer=_e(f"medclassify {run.info.get('medclassify_version', '')} · built in {time.perf_counter() - t0:.1f} s"),
    )
    return write_text(out, page)
