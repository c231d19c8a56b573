import csv
import json

import numpy as np
import pytest

from medclassify.config import TrainConfig
from medclassify.errors import ConfigError
from medclassify.evaluation.evaluate import evaluate
from medclassify.inference.predictor import predict_files
from medclassify.run import load_run
from medclassify.training.fit import train


def tiny_config(data, out, **kw):
    base = dict(data=str(data), out=str(out), model="seed_cnn", image_size=32, epochs=3, time_budget=None,
                batch_size=16, augment="light", early_stopping=0, normalize="fixed", lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_round_trip_train_evaluate_predict(small_dataset, tmp_path, quiet):
    result = train(tiny_config(small_dataset, tmp_path / "run"), reporter=quiet)
    run_dir = result.run_dir
    for name in ("run.json", "model.safetensors", "last.safetensors", "split.csv", "history.csv", "metrics/val.json"):
        assert (run_dir / name).is_file(), name
    run = load_run(run_dir)
    assert run.classes == ["lesion", "normal"]
    assert run.preprocessing.channels == 1
    history = list(csv.DictReader(open(run_dir / "history.csv")))
    assert [int(h["epoch"]) for h in history] == [1, 2, 3]
    splits = {r.split for r in run.records()}
    assert splits == {"train", "val", "test"}
    metrics = evaluate(run_dir, reporter=quiet)
    assert metrics["n"] == len(run.records("test")) == 12
    assert 0 <= metrics["accuracy"] <= 1
    assert json.loads((run_dir / "metrics" / "test.json").read_text())["n"] == 12
    preds = predict_files(run_dir, [small_dataset / "test"], tmp_path / "p.csv", reporter=quiet)
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == len(preds) == 12
    assert set(rows[0]) == {"path", "predicted", "prob_lesion", "prob_normal", "abstain", "error"}
    for row in rows:
        assert abs(float(row["prob_lesion"]) + float(row["prob_normal"]) - 1) < 1e-4
        assert row["predicted"] in ("lesion", "normal")
    # The predictor's probabilities equal the evaluation path's for the same files.
    by_path = {p.path: p.probabilities["lesion"] for p in preds}
    ev = metrics["predictions"]
    for path, probs in zip(ev["paths"], ev["probabilities"]):
        assert by_path[path] == pytest.approx(probs[0], abs=1e-5)


def test_training_learns_the_synthetic_signal(tmp_path, quiet):
    from medclassify.data.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "d", per_class=60, size=48, seed=3)
    result = train(tiny_config(data, tmp_path / "run", image_size=48, epochs=8), reporter=quiet)
    test = evaluate(result.run_dir, reporter=quiet)
    assert test["accuracy"] >= 0.85, test["accuracy"]


def test_failed_training_leaves_no_run_directory(small_dataset, tmp_path, quiet):
    out = tmp_path / "run"
    with pytest.raises(ConfigError):
        train(tiny_config(small_dataset, out, model="no_such_model_xyz"), reporter=quiet)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]


def test_image_size_the_model_cannot_take(small_dataset, tmp_path, quiet):
    with pytest.raises(ConfigError, match="cannot take 16x16"):
        train(tiny_config(small_dataset, tmp_path / "run", model="seed_cnn", image_size=16), reporter=quiet)
    assert not (tmp_path / "run").exists()


def test_time_budget_sizes_epochs(small_dataset, tmp_path, quiet):
    result = train(tiny_config(small_dataset, tmp_path / "run", epochs=50, time_budget=1.0), reporter=quiet)
    assert 1 <= result.epochs_run < 50


def test_epochs_cut_by_the_time_budget_are_not_exceeded(small_dataset, tmp_path, quiet, monkeypatch):
    """When calibration lowers the epoch count during epoch 1, training stops there (the epoch loop
    was built from the original maximum and used to run on past the budget)."""
    from medclassify.training.fit import Trainer

    monkeypatch.setattr(Trainer, "_fit_budget", lambda self, t, n, s, steps, max_epochs: (1, steps))
    # batch 4: enough steps in epoch 1 for the calibration to run
    result = train(tiny_config(small_dataset, tmp_path / "run", epochs=5, time_budget=3600.0, batch_size=4), reporter=quiet)
    assert result.epochs_run == 1
    assert len(list(csv.DictReader(open(result.run_dir / "history.csv")))) == 1
