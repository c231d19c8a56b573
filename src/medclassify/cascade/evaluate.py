"""evaluate-cascade: end-to-end metrics over the final labels, and each stage's accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import PredictOptions
from ..data.sources import scan_folder
from ..errors import ConfigError
from ..io import check_output_file, write_json
from ..reporting import Reporter
from ..training.metrics import compute_metrics
from .runtime import Cascade
from .spec import _err, stage_relabel

def evaluate_cascade(path: str | Path, data: str | Path | None = None, split: str = "test",
                     reporter: Reporter | None = None, backend: str = "auto") -> dict:
    """End-to-end metrics over the final labels on the `split` of the cascade's dataset spec (or of
    `data`), plus each stage's accuracy on the images that belong to it."""
    reporter = reporter or Reporter(quiet=True)
    cascade = Cascade(path, PredictOptions(backend=backend, abstain_below=None))
    source = Path(data) if data else cascade.spec.data
    if source is None:
        raise _err(cascade.spec.path, "no dataset to evaluate on.", "pass --data or add data: to the cascade file.")
    index = scan_folder(source)
    records = [r for r in index.records if r.split == split] if any(r.split for r in index.records) else index.records
    if not records:
        raise ConfigError(f"{source} has no {split!r} images.", "pass --split or a dataset with a test split.")
    unknown = sorted({r.label for r in records} - set(cascade.labels))
    if unknown:
        raise ConfigError(f"{source} has labels the cascade never outputs: {', '.join(unknown)} "
                          f"(its final labels: {', '.join(cascade.labels)}).", "map them in the dataset spec.")
    extra: dict[str, list[str]] = {}
    for s in cascade.spec.stages.values():
        if s.classes is not None:
            relabel = stage_relabel(cascade.spec, s, sorted({r.label for r in records}))
            extra[s.name] = [r.path for r in records if relabel.get(r.label)]
    paths = [r.path for r in records]
    reporter.info(f"Evaluating the cascade on {len(paths)} {split} images of {source}.")
    results, by_stage = cascade.predict_paths(paths, extra, on_stage=lambda n, k: reporter.info(f"  stage {n}: {k} image(s)"))
    ok = [(r, res) for r, res in zip(records, results) if not res.error]
    labels = cascade.labels
    idx = {c: i for i, c in enumerate(labels)}
    y = np.array([idx[r.label] for r, _ in ok])
    onehot = np.eye(len(labels))[[idx[res.label] for _, res in ok]]
    metrics = compute_metrics(y, onehot, labels)
    metrics["auc"] = metrics["log_loss"] = None  # a routed cascade gives one label, not a distribution
    metrics["unreadable"] = len(records) - len(ok)
    metrics["split"], metrics["source"] = split, str(source)
    metrics["stages"] = {}
    for s in cascade.spec.stages.values():
        if s.classes is None:
            continue
        relabel = stage_relabel(cascade.spec, s, sorted({r.label for r in records}))
        mine = [(relabel[r.label], by_stage[s.name][r.path]) for r in records if relabel.get(r.label)]
        mine = [(t, p) for t, p in mine if not p.error]
        metrics["stages"][s.name] = {"n": len(mine), "accuracy": float(np.mean([p.label == t for t, p in mine])) if mine else None,
                                     "version": cascade.predictors[s.name].version}
    metrics["version"] = cascade.version
    return metrics


def cascade_metrics_path(path: str | Path) -> Path:
    """Where evaluate-cascade saves its metrics (checked before the evaluation starts)."""
    out = Path(path).with_suffix(".metrics.json")
    return check_output_file(out, inputs=[path], what="cascade metrics file")


def save_cascade_metrics(path: Path, metrics: dict) -> Path:
    return write_json(cascade_metrics_path(path), metrics)


def cascade_summary(metrics: dict) -> str:
    stages = ", ".join(f"{n} {m['accuracy']:.1%} (n={m['n']})" for n, m in metrics["stages"].items() if m["accuracy"] is not None)
    return (f"cascade accuracy {metrics['accuracy']:.1%}, balanced {metrics['balanced_accuracy']:.1%} on {metrics['n']} images; "
            f"stages: {stages}")

