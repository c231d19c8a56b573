"""Never lose an epoch: a killed or interrupted training resumes from its last completed epoch with
the same final weights as an uninterrupted one, and --overwrite never deletes what medclassify did
not write."""

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medclassify.cli import main
from medclassify.data.synthetic import generate_dataset

SRC = Path(__file__).resolve().parents[2] / "src"
PARITY_TOL = 1e-6  # same machine, same thread count: the resumed run is expected to be bit-identical (0.0)


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "medclassify"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "medclassify.cli"]


def train_args(data: Path, out: Path, epochs: int = 5) -> list[str]:
    return ["train", str(data), "--out", str(out), "--epochs", str(epochs), "--seed", "0", "--model", "seed_cnn",
            "--pretrained", "none", "--image-size", "32", "--batch-size", "8", "--threads", "1", "--precision", "fp32", "--quiet"]


def max_weight_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def test_sigkill_in_epoch_3_then_resume_gives_the_uninterrupted_weights(tmp_path):
    data = generate_dataset(tmp_path / "d", per_class=80, size=32, seed=2)
    env = dict(os.environ, PYTHONPATH=str(SRC), MEDCLASSIFY_CACHE=str(tmp_path / "cache"))
    cmd = cli_command()
    straight = subprocess.Popen(cmd + train_args(data, tmp_path / "straight"), env=env, stderr=subprocess.PIPE)
    killed = subprocess.Popen(cmd + train_args(data, tmp_path / "r"), env=env, stderr=subprocess.PIPE)
    ckpt = tmp_path / ".r.partial" / "checkpoint.json"
    deadline = time.monotonic() + 120
    while True:
        assert killed.poll() is None, killed.stderr.read().decode()[-800:]
        assert time.monotonic() < deadline, "training never checkpointed epoch 2"
        try:
            if json.loads(ckpt.read_text())["epoch"] >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    time.sleep(0.1)  # into epoch 3
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    at_kill = json.loads(ckpt.read_text())["epoch"]
    assert 2 <= at_kill < 5, at_kill  # killed part-way; 2 unless this machine stalled the poller for a whole epoch
    assert not (tmp_path / "r").exists()

    # A fresh run must not silently throw the checkpoint away.
    assert main(train_args(data, tmp_path / "r")) == 2
    assert json.loads(ckpt.read_text())["epoch"] == at_kill

    threads = torch.get_num_threads()
    try:  # in this process (one interpreter start less); --threads 1 as in the runs it is compared with
        assert main(train_args(data, tmp_path / "r") + ["--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert straight.wait(timeout=120) == 0, straight.stderr.read().decode()[-800:]
    run, ref = tmp_path / "r", tmp_path / "straight"
    diffs = {name: max_weight_diff(run / name, ref / name) for name in ("model.safetensors", "last.safetensors")}
    print(f"resume parity (killed after epoch {at_kill}): max abs weight difference {diffs}")
    assert max(diffs.values()) <= PARITY_TOL, diffs
    assert (run / "history.csv").read_text().count("\n") == 6
    info = json.loads((run / "run.json").read_text())
    assert [r["after_epoch"] for r in info["resumed"]] == [at_kill] and "interrupted" not in info
    assert info["epochs_run"] == 5 and info["best_epoch"] == json.loads((ref / "run.json").read_text())["best_epoch"]
    assert not [p for p in run.iterdir() if p.name.startswith(("checkpoint", "lock"))]
    assert not (tmp_path / ".r.partial").exists()


def _interrupt_at_epoch(monkeypatch, n: int):
    from medclassify.training import fit

    calls = {"n": 0}
    order = fit.epoch_order

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return order(*args, **kwargs)

    monkeypatch.setattr(fit, "epoch_order", interrupted)


@pytest.fixture
def tiny_data(tmp_path):
    return generate_dataset(tmp_path / "d", per_class=16, size=32)


def test_ctrl_c_keeps_a_resumable_checkpoint_and_exits_130(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "r"
    partial = tmp_path / ".r.partial"
    _interrupt_at_epoch(monkeypatch, 2)
    assert main(train_args(tiny_data, out, epochs=3)) == 130
    monkeypatch.undo()
    assert not out.exists()
    assert json.loads((partial / "run.json").read_text())["interrupted"] is True
    assert json.loads((partial / "checkpoint.json").read_text())["epoch"] == 1
    assert not (partial / "lock.json").exists()

    assert main(train_args(tiny_data, out, epochs=3)) == 2  # refuses: the checkpoint is not ours to drop silently
    assert main(train_args(tiny_data, out, epochs=4) + ["--resume"]) == 2  # different settings: refused, kept
    extra = tiny_data / "normal" / "added_later.png"
    extra.write_bytes(next((tiny_data / "normal").glob("*.png")).read_bytes())
    assert main(train_args(tiny_data, out, epochs=3) + ["--resume"]) == 2  # the dataset changed: refused, kept
    extra.unlink()
    assert (partial / "checkpoint.json").is_file()
    assert main(train_args(tiny_data, out, epochs=3) + ["--overwrite"]) == 0  # starts again, deleting it
    assert [r["epoch"] for r in csv.DictReader(open(out / "history.csv"))] == ["1", "2", "3"]
    assert "resumed" not in json.loads((out / "run.json").read_text())
    assert not partial.exists()


def test_a_time_budget_resume_continues_the_saved_plan(tiny_data, tmp_path, monkeypatch, quiet):
    from medclassify.config import TrainConfig
    from medclassify.training.fit import train

    config = TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), model="seed_cnn", pretrained="none", image_size=32,
                         epochs=3, time_budget=3600.0, batch_size=8, threads=1)
    _interrupt_at_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(config, reporter=quiet)
    monkeypatch.undo()
    saved = json.loads((tmp_path / ".r.partial" / "checkpoint.json").read_text())
    assert saved["epoch"] == 2 and saved["loop"]["epochs"] == 3
    result = train(config, reporter=quiet, resume=True)
    rows = list(csv.DictReader(open(result.run_dir / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [float(r["train_loss"]) for r in rows[:2]] == [h["train_loss"] for h in saved["history"]]


def test_resume_with_nothing_to_resume_trains_from_the_start(tiny_data, tmp_path):
    assert main(train_args(tiny_data, tmp_path / "r", epochs=1) + ["--resume"]) == 0
    assert (tmp_path / "r" / "model.safetensors").is_file()


def test_overwrite_never_deletes_a_user_folder_or_the_dataset(tiny_data, tmp_path):
    user = tmp_path / "mine"
    (user / "notes").mkdir(parents=True)
    (user / "notes" / "labels.txt").write_text("months of work")
    labels = tmp_path / "labels.csv"  # a labels CSV whose images live in another folder
    images = tmp_path / "elsewhere"
    fake_run = images  # ... which also looks like a medclassify run
    (images / "img").mkdir(parents=True)
    rows = ["path,label"]
    for i, src in enumerate(sorted(tiny_data.rglob("*.png"))):
        dst = images / "img" / f"{i}.png"
        dst.write_bytes(src.read_bytes())
        rows.append(f"{dst},{src.parent.name}")
    labels.write_text("\n".join(rows) + "\n")
    (fake_run / "run.json").write_text(json.dumps({"format_version": 1}))
    before = {p: tree_hash(p) for p in (user, tiny_data, images)}
    before_csv = labels.read_bytes()
    for data, out in [(tiny_data, user), (tiny_data, tiny_data), (tiny_data, tiny_data.parent), (tiny_data, tiny_data / "normal"),
                      (labels, tmp_path), (labels, labels), (labels, images)]:
        code = main(train_args(data, out, epochs=1) + ["--overwrite"])
        assert code == 2, (data, out)
    assert {p: tree_hash(p) for p in before} == before
    assert labels.read_bytes() == before_csv
    assert not list(tmp_path.glob(".*.partial*"))


def test_a_live_training_holds_its_partial_folder_and_a_dead_one_does_not(tmp_path):
    from medclassify.io import OutputError
    from medclassify.run import RunWriter

    w = RunWriter(tmp_path / "r")
    with pytest.raises(OutputError, match=f"Another training \\(pid {os.getpid()}\\)"):
        RunWriter(tmp_path / "r", resume=True)
    lock = json.loads((w.path / "lock.json").read_text())
    for pid, start in [(2**22 + 12345, lock["start"]), (os.getppid(), "another-boot:1")]:  # gone; PID reused
        (w.path / "lock.json").write_text(json.dumps({**lock, "pid": pid, "start": start}))
        (w.path / "history.csv").write_text("epoch\n")  # no checkpoint: nothing to resume
        w2 = RunWriter(tmp_path / "r", resume=True)
        assert not w2.resuming and not (w.path / "history.csv").exists()
        assert json.loads((w.path / "lock.json").read_text())["pid"] == os.getpid()
    w2.abort()
    assert not w2.path.exists()


def test_a_run_goes_into_an_empty_folder_and_never_into_a_stranger_partial(tmp_path):
    from medclassify.io import OutputError
    from medclassify.run import RunWriter

    (tmp_path / "r").mkdir()
    w = RunWriter(tmp_path / "r")
    (w.path / "run.json").write_text("{}")
    assert w.commit() == tmp_path / "r" and (tmp_path / "r" / "run.json").is_file()
    assert not (tmp_path / "r" / "lock.json").exists()
    stranger = tmp_path / ".s.partial"
    stranger.mkdir()
    (stranger / "thesis.docx").write_text("not ours")
    with pytest.raises(OutputError, match="did not write"):
        RunWriter(tmp_path / "s", overwrite=True)
    assert (stranger / "thesis.docx").is_file()


def test_interrupted_after_the_last_epoch_resumes_straight_to_the_finished_run(tiny_data, tmp_path, monkeypatch):
    """A kill between the last epoch's checkpoint and the run's commit loses nothing: --resume only
    finishes the run, from the checkpointed weights."""
    from medclassify.training import fit

    real = fit.choose_tta
    monkeypatch.setattr(fit, "choose_tta", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(train_args(tiny_data, tmp_path / "r", epochs=2)) == 130
    saved = json.loads((tmp_path / ".r.partial" / "checkpoint.json").read_text())
    assert saved["epoch"] == 2 and saved["loop"]["finished"] is True
    weights = load_file(str(tmp_path / ".r.partial" / "last.safetensors"))
    monkeypatch.setattr(fit, "choose_tta", real)
    monkeypatch.setattr("medclassify.training.fit.epoch_order", lambda *a, **k: pytest.fail("an epoch was trained again"))
    assert main(train_args(tiny_data, tmp_path / "r", epochs=2) + ["--resume"]) == 0
    resumed = load_file(str(tmp_path / "r" / "last.safetensors"))
    assert all(bool((weights[k] == resumed[k]).all()) for k in weights)
