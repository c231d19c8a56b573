"""--folds K: K complete runs whose validation folds never split a patient, and a summary."""

import json

from medclassify.cli import main
from medclassify.config import TrainConfig
from medclassify.data.synthetic import generate_dataset
from medclassify.training.crossval import fold_records


def test_folds_never_split_a_patient_and_keep_test_out(tmp_path, quiet):
    data = generate_dataset(tmp_path / "d", per_class=24, size=32, splits={"train": 0.75, "test": 0.25}, images_per_patient=3)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "cv"), patient_pattern=r"person(?P<patient>\d+)_")
    folds = fold_records(cfg, 3, quiet)
    assert len(folds) == 3
    test = {r.path for r in folds[0] if r.split == "test"}
    assert test and all({r.path for r in f if r.split == "test"} == test for f in folds)
    val_sets = [{r.path for r in f if r.split == "val"} for f in folds]
    assert not (val_sets[0] & val_sets[1]) and len(set().union(*val_sets)) == 36  # every pool image validated once
    for f in folds:
        sides = {}
        for r in f:
            sides.setdefault(r.patient, set()).add(r.split)
        assert all(len(s) == 1 for s in sides.values())


def test_cross_validation_command(tmp_path):
    data = generate_dataset(tmp_path / "d", per_class=16, size=32, splits={"train": 0.75, "test": 0.25})
    out = tmp_path / "cv"
    assert main(["train", str(data), "--out", str(out), "--model", "seed_cnn", "--image-size", "32", "--epochs", "1",
                 "--folds", "2", "--batch-size", "16", "-q"]) == 0
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["folds"] == 2 and len(summary["per_fold"]) == 2
    for m in ("accuracy", "balanced_accuracy", "macro_f1"):
        values = [p[m] for p in summary["per_fold"]]
        assert abs(summary["mean"][m] - sum(values) / 2) < 1e-3 and summary["std"][m] >= 0
    assert all((out / f"fold_{k}" / "run.json").is_file() for k in range(2))


def test_cross_validation_resume_keeps_finished_folds(tmp_path, monkeypatch):
    """--resume after an interrupted --folds run trains only the folds that did not finish."""
    import shutil

    from medclassify.training import fit

    data = generate_dataset(tmp_path / "d", per_class=12, size=32, splits={"train": 0.75, "test": 0.25})
    out = tmp_path / "cv"
    args = ["train", str(data), "--out", str(out), "--model", "seed_cnn", "--image-size", "32", "--epochs", "1",
            "--folds", "2", "--batch-size", "16", "-q"]
    assert main(args) == 0
    fold0 = (out / "fold_0" / "model.safetensors").read_bytes()
    shutil.rmtree(out / "fold_1")  # as if interrupted before the second fold finished
    (out / "cv_summary.json").unlink()
    assert main(args) == 2  # the folder exists: refused without --resume or --overwrite
    trained = []
    real_train = fit.train
    monkeypatch.setattr(fit, "train", lambda config, **kw: trained.append(config.out) or real_train(config, **kw))
    assert main(args + ["--resume"]) == 0
    assert trained == [str(out / "fold_1")]
    assert (out / "fold_0" / "model.safetensors").read_bytes() == fold0
    assert len(json.loads((out / "cv_summary.json").read_text())["per_fold"]) == 2
