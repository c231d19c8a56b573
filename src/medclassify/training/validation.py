"""A run's model scored on labelled records through the one forward pass (engine.py), and the choice
of flip test-time augmentation made once on the validation split at the end of training. Evaluation
builds on both (evaluation/evaluate.py)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.cache import ImageCache
from ..data.prepare import load_cache
from ..data.sources import Record
from ..engine import has_feature_head, predict_rows, softmax
from ..ood import load_guard
from ..errors import DataError
from ..reporting import Reporter
from ..run import Run
from .metrics import compute_metrics


def score_records(run: Run, records: list[Record], cache: ImageCache | None = None, reporter: Reporter | None = None,
                  model: torch.nn.Module | None = None, tta: bool | None = None, features: bool = False) -> dict:
    """Metrics of the run on `records`; `tta` None means the run's own choice (see choose_tta).
    With the run's out-of-distribution guard, the predictions carry each image's ood_score and
    in_distribution flag; `features` keeps the penultimate features under "_features" (not saved)."""
    reporter = reporter or Reporter(quiet=True)
    tta = run.tta if tta is None else tta
    if not records:
        raise DataError("There are no images to evaluate.", "pass a split that has images, or --data FOLDER.")
    index = {c: i for i, c in enumerate(run.classes)}
    unknown = sorted({r.label for r in records} - set(index))
    if unknown:
        raise DataError(f"Labels {', '.join(unknown)} are not classes of run {run.path} ({', '.join(run.classes)}).",
                        "evaluate on data with the run's classes (folder names must match).")
    prep = run.preprocessing
    cache = cache or load_cache(records, prep, reporter)
    readable = [r for r in records if r.path not in cache.errors]
    if len(readable) < len(records):
        reporter.warn(f"{len(records) - len(readable)} unreadable image(s) left out of the evaluation.")
    model = model or run.build_model()
    # Probabilities as predict gives them: with the run's calibration temperature (1 until fitted).
    temperature = run.temperature
    guard, _ = load_guard(run) if tta == run.tta else (None, "")
    with_features = (features or guard is not None) and has_feature_head(model)
    out = predict_rows(model, cache.reader(), cache.rows([r.path for r in readable]), prep, tta=tta, features=with_features)
    logits = out[1]
    probs = softmax(logits, temperature)
    y = np.array([index[r.label] for r in readable])
    metrics = compute_metrics(y, probs, run.classes)
    metrics["unreadable"] = len(records) - len(readable)
    metrics["temperature"] = temperature
    metrics["tta"] = tta
    metrics["predictions"] = {"paths": [r.path for r in readable], "labels": y.tolist(),
                              "probabilities": np.round(probs, 6).tolist(), "logits": np.round(logits, 5).tolist()}
    if guard is not None and with_features:
        scores, inside = guard.flags(out[2])
        metrics["predictions"].update(ood_scores=np.round(scores, 6).tolist(), in_distribution=inside.tolist())
    if features and with_features:
        metrics["_features"] = out[2]
    return metrics


def choose_tta(run: Run, reporter: Reporter | None = None, cache: ImageCache | None = None) -> dict:
    """Decide once, on the validation split, whether flip test-time augmentation helps this run:
    on when it raises validation balanced accuracy. Stored in run.json ("tta") for evaluate, predict,
    serve and cascades; the validation metrics of the chosen variant are saved as metrics/val.json."""
    if run.info.get("tta", {}).get("chosen_on"):
        return run.info["tta"]
    records = run.records("val")
    if not records:
        choice = {"enabled": False, "chosen_on": "none", "reason": "no validation split"}
    else:
        cache = cache or load_cache(records, run.preprocessing, reporter or Reporter(quiet=True))
        model = run.build_model()
        without, with_tta = (score_records(run, records, cache, reporter, model, tta=t) for t in (False, True))
        enabled = with_tta["balanced_accuracy"] > without["balanced_accuracy"]
        choice = {"enabled": enabled, "chosen_on": "val", "images": without["n"], "method": "horizontal flip, mean logits",
                  "balanced_accuracy": {"without": without["balanced_accuracy"], "with": with_tta["balanced_accuracy"]}}
        kept = with_tta if enabled else without
        kept["split"] = "val"
        run.save_metrics("val", kept)
        (reporter or Reporter(quiet=True)).info(
            f"Test-time augmentation (flip) {'on' if enabled else 'off'}: validation balanced accuracy "
            f"{without['balanced_accuracy']:.3f} without, {with_tta['balanced_accuracy']:.3f} with.")
    run.update(tta=choice)
    return choice
