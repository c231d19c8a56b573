"""Group k-fold cross-validation: K runs whose validation folds never split a patient or a group of
duplicate images; the test split (official, or carved once) stays out of every fold.

Each fold's split is written as a labels CSV (OUT/folds/fold_<k>.csv) and trained like any dataset,
so every fold is a complete, reproducible run directory (OUT/fold_<k>); OUT/cv_summary.json holds
each fold's validation metrics and their mean and standard deviation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..data.audit import find_duplicates, fingerprint_index
from ..data.sources import Record, attach_patients, scan_folder
from ..data.splits import carve, group_kfold
from ..reporting import Reporter
from ..run import write_split_csv
from ..io import check_replaceable_dir, is_medclassify_dir, write_json
from ..run import load_run
from ..errors import ConfigError
from . import fit  # called as fit.train, which tests replace
from .distributed import under_torchrun

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc")


def fold_records(config: TrainConfig, k: int, reporter: Reporter) -> list[list[Record]]:
    """k record lists: fold f's pool images as val, the rest of the pool as train, test unchanged."""
    index = attach_patients(scan_folder(config.data, config.splits), config.patient_pattern)
    linked = find_duplicates(fingerprint_index(index, reporter, config.workers)).linked()
    records = index.records
    if not any(r.split == "test" for r in records):
        records = carve([replace(r, split="train") for r in records], config.test_fraction, config.seed, "test", linked)
    test = [r for r in records if r.split == "test"]
    pool = [r for r in records if r.split != "test"]
    folds = group_kfold(pool, k, config.seed, linked)
    out = []
    for f in folds:
        val = set(f)
        out.append([replace(r, split="val" if i in val else "train") for i, r in enumerate(pool)] + test)
    return out


def cross_validate(config: TrainConfig, k: int, reporter: Reporter | None = None, overwrite: bool = False,
                   resume: bool = False) -> dict:
    reporter = reporter or Reporter()
    if under_torchrun():  # every rank would write the folds' files; each fold's training is DDP-ready, the loop is not
        raise ConfigError("--folds does not run under torchrun yet.",
                          "run the cross-validation without torchrun, or train each fold's labels CSV under torchrun.")
    out = Path(config.out)
    if not (resume and out.is_dir() and is_medclassify_dir(out)):
        check_replaceable_dir(out, overwrite, protected=[config.data])
    write_json(out / ".medclassify", {"schema": "medclassify-crossval", "folds": k})  # marks the folder as ours
    (out / "folds").mkdir(parents=True, exist_ok=True)
    per_fold = []
    for f, records in enumerate(fold_records(config, k, reporter)):
        csv_path = out / "folds" / f"fold_{f}.csv"
        write_split_csv(csv_path, records)
        fold_out = out / f"fold_{f}"
        if resume and (fold_out / "run.json").is_file() and "best_epoch" in (done := load_run(fold_out)).info:
            reporter.info(f"Fold {f + 1}/{k}: already trained in {fold_out}.")
            per_fold.append({"fold": f, "run": str(fold_out), "best_epoch": done.info["best_epoch"],
                             **{m: (done.metrics("val") or {}).get(m) for m in SUMMARY_METRICS}})
            continue
        reporter.info(f"Fold {f + 1}/{k}: {sum(r.split == 'train' for r in records)} train, "
                      f"{sum(r.split == 'val' for r in records)} validation images.")
        result = fit.train(config.model_copy(update={"data": str(csv_path), "out": str(fold_out)}),
                       reporter=reporter, overwrite=overwrite, resume=resume)
        per_fold.append({"fold": f, "run": str(result.run_dir), "best_epoch": result.best_epoch,
                         **{m: result.val_metrics.get(m) for m in SUMMARY_METRICS}})
    summary = {"folds": k, "data": config.data, "per_fold": per_fold, "mean": {}, "std": {}}
    for m in SUMMARY_METRICS:
        values = np.array([p[m] for p in per_fold if p[m] is not None], float)
        if len(values):
            summary["mean"][m] = round(float(values.mean()), 4)
            summary["std"][m] = round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 4)
    write_json(out / "cv_summary.json", summary)
    return summary


def summary_lines(summary: dict) -> list[str]:
    lines = [f"{summary['folds']}-fold cross-validation (validation folds never split a patient or a duplicate group):"]
    lines += [f"  {m:18s} {summary['mean'][m]:.4f} ± {summary['std'][m]:.4f}" for m in summary["mean"]]
    lines.append(f"Runs in {Path(summary['per_fold'][0]['run']).parent}; summary in cv_summary.json there.")
    return lines
