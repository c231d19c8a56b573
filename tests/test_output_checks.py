"""No verb writes onto its inputs or into a run's own files, and every output location is checked
before the work: one line naming the path, exit 2, no traceback, and the tree unchanged."""

import hashlib
import shutil
from pathlib import Path

import pytest

from medclassify.cli import main


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def world(tiny_run, small_dataset, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    image = sorted((data / "test").rglob("*.png"))[0]
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("a file in the way")
    (tmp_path / "list.txt").write_text(f"{image}\n")
    return {"run": run, "data": data, "image": image, "tmp": tmp_path}


CASES = {
    # verb: (argv, the path the message must name)
    "predict onto an input image": lambda w: (["predict", w["run"], w["image"], "--out", w["image"]], w["image"]),
    "predict onto the input list": lambda w: (["predict", w["run"], w["tmp"] / "list.txt", "--out", w["tmp"] / "list.txt"],
                                              w["tmp"] / "list.txt"),
    "predict onto a listed image": lambda w: (["predict", w["run"], w["tmp"] / "list.txt", "--out", w["image"]], w["image"]),
    "predict onto run.json": lambda w: (["predict", w["run"], w["image"], "--out", w["run"] / "run.json"], w["run"] / "run.json"),
    "predict into the run": lambda w: (["predict", w["run"], w["image"], "--out", w["run"] / "preds.csv"], w["run"] / "preds.csv"),
    "predict into the predicted folder": lambda w: (["predict", w["run"], w["data"] / "test", "--out", w["data"] / "test" / "p.csv"],
                                                    w["data"] / "test" / "p.csv"),
    "predict onto a folder": lambda w: (["predict", w["run"], w["image"], "--out", w["tmp"] / "folder"], w["tmp"] / "folder"),
    "predict under a file": lambda w: (["predict", w["run"], w["image"], "--out", w["tmp"] / "plain" / "p.csv"], w["tmp"] / "plain"),
    "predict patients onto an input": lambda w: (["predict", w["run"], w["tmp"] / "list.txt", "--out", w["tmp"] / "p.csv",
                                                  "--patient-pattern", "kermany", "--patients-out", w["tmp"] / "list.txt"],
                                                 w["tmp"] / "list.txt"),
    "report onto run.json": lambda w: (["report", w["run"], "--out", w["run"] / "run.json"], w["run"] / "run.json"),
    "report onto a folder": lambda w: (["report", w["run"], "--out", w["tmp"] / "folder"], w["tmp"] / "folder"),
    "report under a file": lambda w: (["report", w["run"], "--out", w["tmp"] / "plain" / "r.html"], w["tmp"] / "plain"),
    "explain onto its image": lambda w: (["explain", w["run"], w["image"], "--out", w["image"]], w["image"]),
    "explain onto run files": lambda w: (["explain", w["run"], w["image"], "--out", w["run"] / "x.png"], w["run"] / "x.png"),
    "explain a folder into a file": lambda w: (["explain", w["run"], w["data"] / "test", "--out", w["tmp"] / "plain"], w["tmp"] / "plain"),
    "eda into the dataset": lambda w: (["eda", w["data"], "--out", w["data"] / "eda"], w["data"] / "eda"),
    "eda onto a file": lambda w: (["eda", w["data"], "--out", w["tmp"] / "plain"], w["tmp"] / "plain"),
    "audit into the dataset": lambda w: (["audit", w["data"], "--out", w["data"]], w["data"]),
    "audit onto a file": lambda w: (["audit", w["data"], "--out", w["tmp"] / "plain"], w["tmp"] / "plain"),
    "compare onto a folder": lambda w: (["compare", w["run"], w["run"], "--out", w["tmp"] / "folder"], w["tmp"] / "folder"),
    "compare into a run": lambda w: (["compare", w["run"], w["run"], "--out", w["run"] / "c.html"], w["run"] / "c.html"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_output_is_refused_before_the_work(world, case, capsys):
    argv, named = CASES[case](world)
    before = _tree(world["tmp"])
    capsys.readouterr()
    assert main([str(a) for a in argv] + ["-q"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), captured.err
    assert str(named) in err[0] and "Traceback" not in captured.err + captured.out
    assert _tree(world["tmp"]) == before


@pytest.mark.parametrize("blocked", ["metrics/test.json", "model.onnx", "export.json"])
def test_verbs_writing_into_the_run_check_their_files_first(world, blocked, capsys):
    """A folder where evaluate's or export's declared output file goes: refused before any work."""
    target = world["run"] / blocked
    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    target.mkdir(parents=True)
    before = _tree(world["tmp"])
    verb = ["evaluate", world["run"], "--bootstrap", "100"] if blocked.startswith("metrics") else ["export", world["run"]]
    capsys.readouterr()
    assert main([str(a) for a in verb] + ["-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0]
    assert _tree(world["tmp"]) == before


def test_predict_to_a_folder_leaves_no_temporary_and_a_good_out_works(world):
    assert main(["predict", str(world["run"]), str(world["image"]), "--out", str(world["tmp"] / "folder"), "-q"]) == 2
    assert not list(world["tmp"].glob("folder*.tmp")) and not list(world["tmp"].glob(".folder*"))
    assert main(["predict", str(world["run"]), str(world["data"] / "test"), "--out", str(world["tmp"] / "folder" / "p.csv"),
                 "-q"]) == 0
    assert (world["tmp"] / "folder" / "p.csv").is_file()


def test_full_disk_during_predict_is_one_line_and_leaves_no_temporary(world, monkeypatch, capsys):
    import errno

    from medclassify import io

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", no_space)
    out = world["tmp"] / "out" / "preds.csv"
    assert main(["predict", str(world["run"]), str(world["image"]), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left" in err[0] and str(out) in err[0]
    assert list((world["tmp"] / "out").iterdir()) == []
