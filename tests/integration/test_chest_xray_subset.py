"""The whole path on a small subset of the real chest X-ray set (skipped when ../shared is absent)."""

import os

import pytest

from medclassify.evaluation.evaluate import evaluate
from medclassify.run import load_run
from medclassify.training.fit import train
from medclassify.config import TrainConfig
from tests.conftest import shared_dataset

pytestmark = pytest.mark.integration


def link_subset(src, dst, per_class):
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            files = sorted(os.listdir(src / split / cls))
            # Spread over the listing so several patients are represented.
            chosen = files[:: max(1, len(files) // per_class[split])][: per_class[split]]
            (dst / split / cls).mkdir(parents=True)
            for name in chosen:
                os.symlink(src / split / cls / name, dst / split / cls / name)
    return dst


def test_chest_xray_subset_end_to_end(tmp_path, quiet):
    src = shared_dataset("chest_xray")
    data = link_subset(src, tmp_path / "cxr", {"train": 60, "test": 20})
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), model="seed_cnn", image_size=64, epochs=2,
                         time_budget=None, patient_pattern="kermany", early_stopping=0)
    result = train(config, reporter=quiet)
    run = load_run(result.run_dir)
    info = run.info
    assert info["preprocessing"]["channels"] == 1  # grey X-rays stored as RGB JPEGs
    assert info["data"]["counts"]["test"] == {"NORMAL": 20, "PNEUMONIA": 20}
    # The validation split is carved from train by patient: no patient on both sides.
    val_patients = {r.patient for r in run.records("val") if r.patient}
    train_patients = {r.patient for r in run.records("train") if r.patient}
    assert val_patients and not (val_patients & train_patients)
    metrics = evaluate(result.run_dir, reporter=quiet)
    assert metrics["n"] == 40
    assert metrics["auc"] is not None
