"""Evaluating a run on one of its splits or on any labelled folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.cache import ImageCache
from ..data.prepare import load_cache
from ..data.sources import Record, scan_folder
from ..errors import DataError, RunError
from ..inference.cached import predict_rows
from ..reporting import Reporter
from ..run import Run, load_run
from .metrics import compute_metrics


def evaluate_records(run: Run, records: list[Record], cache: ImageCache | None = None, reporter: Reporter | None = None,
                     model: torch.nn.Module | None = None) -> dict:
    reporter = reporter or Reporter(quiet=True)
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
    probs, _ = predict_rows(model, cache.images, cache.rows([r.path for r in readable]), prep)
    y = np.array([index[r.label] for r in readable])
    metrics = compute_metrics(y, probs, run.classes)
    metrics["unreadable"] = len(records) - len(readable)
    metrics["predictions"] = {"paths": [r.path for r in readable], "labels": y.tolist(),
                              "probabilities": np.round(probs, 6).tolist()}
    return metrics


def evaluate(run: Run | str | Path, split: str = "test", data: str | Path | None = None,
             reporter: Reporter | None = None, save: bool = True) -> dict:
    """Metrics of a run on its `split` (default: test), or on the labelled folder/CSV `data`.
    Saved as metrics/<split>.json (metrics/external.json for --data) unless save=False."""
    run = run if isinstance(run, Run) else load_run(run)
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
    metrics = evaluate_records(run, records, reporter=reporter)
    metrics["split"] = name
    metrics["source"] = str(data) if data is not None else str(run.path / "split.csv")
    if save:
        run.save_metrics(name, metrics)
    return metrics
