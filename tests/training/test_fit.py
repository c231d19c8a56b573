import csv
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    assert set(rows[0]) == {"path", "predicted", "prob_lesion", "prob_normal", "abstain", "abstain_reason", "ood_score",
                            "in_distribution", "error"}
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
    """When the budget has no room for another epoch, training stops there (the epoch loop was
    built from the original maximum and used to run on past the budget)."""
    from medclassify.training import fit

    monkeypatch.setattr(fit, "epochs_within_budget", lambda elapsed, done, budget, max_epochs: done)
    result = train(tiny_config(small_dataset, tmp_path / "run", epochs=5, time_budget=3600.0, batch_size=4), reporter=quiet)
    assert result.epochs_run == 1
    assert len(list(csv.DictReader(open(result.run_dir / "history.csv")))) == 1


def test_replanning_fills_but_never_overruns_the_budget():
    from medclassify.training.fit import epochs_within_budget

    assert epochs_within_budget(100.0, 1, 900.0, 30) == 9
    assert epochs_within_budget(100.0, 1, 900.0, 4) == 4  # the epoch cap wins
    assert epochs_within_budget(850.0, 8, 900.0, 30) == 8  # 106 s per epoch, 50 s left: stop
    assert epochs_within_budget(950.0, 3, 900.0, 30) == 3  # already over: never fewer than done


@given(elapsed=st.floats(1.0, 5000.0), done=st.integers(1, 40), budget=st.floats(1.0, 5000.0), cap=st.integers(1, 60))
def test_replanned_runs_end_within_the_budget(elapsed, done, budget, cap):
    from medclassify.training.fit import epochs_within_budget

    total = epochs_within_budget(elapsed, done, budget, max(cap, done))
    assert done <= total <= max(cap, done)
    if total > done:
        assert elapsed + (total - done) * elapsed / done <= budget + 1e-6


def test_freezing_holds_early_stages_fixed(small_dataset, tmp_path, quiet):
    """Frozen stages keep their starting weights (and batch-norm statistics) through training;
    later stages learn."""
    import timm
    import torch

    from safetensors.torch import load_file

    start = timm.create_model("resnet10t", num_classes=2, in_chans=1)
    torch.save(start.state_dict(), tmp_path / "start.pt")
    result = train(tiny_config(small_dataset, tmp_path / "run", model="resnet10t", weights=str(tmp_path / "start.pt"),
                               freeze=2, epochs=2), reporter=quiet)
    trained = load_file(str(result.run_dir / "last.safetensors"))
    before = start.state_dict()
    assert torch.equal(trained["conv1.0.weight"], before["conv1.0.weight"])
    assert torch.equal(trained["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])
    assert torch.equal(trained["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])
    assert not torch.equal(trained["layer2.0.conv1.weight"], before["layer2.0.conv1.weight"])
    assert json.loads((result.run_dir / "run.json").read_text())["config"]["freeze"] == 2


def test_freezing_needs_pretrained_weights_and_a_staged_model(small_dataset, tmp_path, quiet):
    with pytest.raises(ConfigError, match="random weights"):
        train(tiny_config(small_dataset, tmp_path / "a", model="resnet10t", freeze=1), reporter=quiet)
    with pytest.raises(ConfigError, match="would freeze all"):
        from medclassify.training.freeze import freeze_stages
        import timm

        freeze_stages(timm.create_model("resnet10t", num_classes=2), 5, "resnet10t")
    assert not (tmp_path / "a").exists()


def test_sigterm_during_training_keeps_a_resumable_checkpoint(tmp_path):
    """`kill` (SIGTERM) unwinds like Ctrl-C: the process exits with 128 + 15, no run appears where
    the user asked for one, and the hidden partial folder keeps the last completed epoch's
    checkpoint, marked interrupted and unlocked, for --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from medclassify.data.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "d", per_class=40, size=32, seed=1)
    out = tmp_path / "runs" / "r"
    partial = out.parent / ".r.partial"
    code = ("from medclassify.training.fit import train; from medclassify.reporting import Reporter; "
            f"train(data={str(data)!r}, out={str(out)!r}, model='seed_cnn', image_size=32, epochs=10000, "
            "time_budget=None, batch_size=4, early_stopping=0, workers=2, reporter=Reporter(quiet=True))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ((partial / "checkpoint.json").is_file() or proc.poll() is not None):
        assert time.monotonic() < deadline, "training did not reach its first epoch"
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-500:]
    assert (partial / "lock.json").is_file()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not out.exists()
    assert json.loads((partial / "checkpoint.json").read_text())["epoch"] >= 1
    assert json.loads((partial / "run.json").read_text())["interrupted"] is True
    assert not (partial / "lock.json").exists()
    assert not list(out.parent.glob(".r.partial-*"))


def test_weight_average_follows_the_weights():
    import torch

    from medclassify.training.callbacks import WeightAverage

    model = torch.nn.Linear(3, 2)
    avg = WeightAverage(model, horizon_steps=10)
    with torch.no_grad():
        model.weight.fill_(1.0)
    avg.update(model)  # first update: decay min(0.9, 1 - 1/2) = 0.5
    start = avg.module.weight.clone()
    assert not torch.equal(start, model.weight)
    for _ in range(200):
        avg.update(model)
    assert torch.allclose(avg.module.weight, model.weight, atol=1e-6)
    assert not avg.module.weight.requires_grad


def test_ema_training_ships_the_average(small_dataset, tmp_path, quiet):
    result = train(tiny_config(small_dataset, tmp_path / "run", ema=True, epochs=2), reporter=quiet)
    assert json.loads((result.run_dir / "run.json").read_text())["config"]["ema"] is True
    assert evaluate(result.run_dir, reporter=quiet)["n"] == 12


def test_decay_reaches_the_floor_at_the_planned_end_not_the_budget(small_dataset, tmp_path, quiet, monkeypatch):
    """When the budget's tail cannot hold another epoch, the run still ends near the floor learning
    rate: the decay aims at the last epoch that fits, not at the budget."""
    from medclassify.training import fit

    monkeypatch.setattr(fit, "epochs_within_budget", lambda elapsed, done, budget, max_epochs: 2)
    result = train(tiny_config(small_dataset, tmp_path / "run", epochs=5, time_budget=3600.0, batch_size=4), reporter=quiet)
    history = list(csv.DictReader(open(result.run_dir / "history.csv")))
    assert len(history) == 2
    lrs = [float(h["lr"]) for h in history]
    assert lrs[0] > 0.5 * 3e-3  # epoch 1: early in the decay
    assert lrs[-1] < 0.3 * 3e-3, lrs  # the old budget-based clock left it near 3e-3 (2 s of 3600 spent)
