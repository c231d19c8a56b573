"""io.py: atomic writes, stale temporaries, and the output checks that refuse before any work."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medclassify import io
from medclassify.io import OutputError


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if io.PARTIAL in p.name)


def test_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    io.write_json(target, {"x": 1})
    io.write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert _partials(target.parent) == []


def test_failed_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def half_then_fail(tmp: Path):
        tmp.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        io.write_with(target, half_then_fail)
    assert target.read_text() == "old" and _partials(tmp_path) == []


def test_full_disk_is_one_line_output_error_and_leaves_nothing(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", no_space)
    target = tmp_path / "preds.csv"
    with pytest.raises(OutputError) as e:
        io.write_csv(target, ["a"], [["1"]])
    assert "No space left" in str(e.value) and str(target) in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_csv_quotes_commas_quotes_and_newlines(tmp_path):
    import csv

    rows = [['a,"b".png', "reason, with \"quote\"\nand line"]]
    io.write_csv(tmp_path / "s.csv", ["path", "reason"], rows)
    with open(tmp_path / "s.csv", newline="") as f:
        assert list(csv.reader(f)) == [["path", "reason"], *rows]


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyError):
        with io.atomic_dir(target) as tmp:
            (tmp / "a").write_text("x")
            raise KeyError("fail")
    assert not target.exists() and _partials(tmp_path) == []
    with io.atomic_dir(target) as tmp:
        (tmp / "a").write_text("x")
    assert (target / "a").read_text() == "x" and _partials(tmp_path) == []


def test_stale_partials_of_dead_processes_only_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    (tmp_path / f".model.onnx{io.PARTIAL}{dead}").write_text("x")
    (tmp_path / f"key{io.PARTIAL}{dead}").mkdir()  # the old cache naming
    (tmp_path / f".model.onnx{io.PARTIAL}{alive}").write_text("x")
    (tmp_path / f".notes{io.PARTIAL}draft").write_text("x")  # not a PID: not ours
    (tmp_path / "model.onnx").write_text("kept")
    assert io.remove_stale_partials(tmp_path) == 2
    assert _partials(tmp_path) == sorted([f".model.onnx{io.PARTIAL}{alive}", f".notes{io.PARTIAL}draft"])
    assert (tmp_path / "model.onnx").read_text() == "kept"


def test_a_new_write_clears_the_temporary_a_killed_writer_left(tmp_path):
    stale = tmp_path / f".a.txt{io.PARTIAL}{_dead_pid()}"
    stale.write_text("half")
    io.write_text(tmp_path / "a.txt", "whole")
    assert not stale.exists() and (tmp_path / "a.txt").read_text() == "whole"


@pytest.fixture
def dataset(tmp_path):
    data = tmp_path / "user" / "data"
    (data / "a").mkdir(parents=True)
    (data / "a" / "x.png").write_bytes(b"img")
    return data


@pytest.mark.parametrize("where, words", [
    (lambda d: d, "is the dataset"),
    (lambda d: d.parent, "holds the dataset"),
    (lambda d: d / "a", "inside the dataset"),
])
def test_replaceable_dir_never_the_dataset_its_parent_or_inside(dataset, where, words):
    with pytest.raises(OutputError, match=words):
        io.check_replaceable_dir(where(dataset), overwrite=True, protected=[dataset])


def test_replaceable_dir_refuses_a_users_folder_even_with_overwrite(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.docx").write_text("months of work")
    with pytest.raises(OutputError, match="already exists"):
        io.check_replaceable_dir(user, overwrite=False)
    with pytest.raises(OutputError, match="did not write"):
        io.check_replaceable_dir(user, overwrite=True)
    (user / "run.json").write_text("{}")  # a run.json without a format version is not a run
    with pytest.raises(OutputError, match="did not write"):
        io.check_replaceable_dir(user, overwrite=True)


def test_replaceable_dir_accepts_new_empty_and_runs(tmp_path):
    io.check_replaceable_dir(tmp_path / "new", overwrite=False)
    (tmp_path / "empty").mkdir()
    io.check_replaceable_dir(tmp_path / "empty", overwrite=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"format_version": 1}))
    io.check_replaceable_dir(run, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        io.check_replaceable_dir(tmp_path / "file", overwrite=True)


def test_output_file_kinds(tmp_path, dataset):
    image = dataset / "a" / "x.png"
    with pytest.raises(OutputError, match="is a folder"):
        io.check_output_file(tmp_path)
    with pytest.raises(OutputError, match="one of the inputs"):
        io.check_output_file(image, inputs=[image])
    with pytest.raises(OutputError, match="lies inside"):
        io.check_output_file(dataset / "preds.csv", protected_dirs=[dataset])
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        io.check_output_file(tmp_path / "plain" / "preds.csv")
    with pytest.raises(OutputError, match="already exists"):
        io.check_output_file(tmp_path / "plain", overwrite_ok=False)
    assert io.check_output_file(tmp_path / "new" / "deeper" / "p.csv") == tmp_path / "new" / "deeper" / "p.csv"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_output_folder_kinds(tmp_path, dataset):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        io.check_output_folder(tmp_path / "plain")
    with pytest.raises(OutputError, match="lies inside"):
        io.check_output_folder(dataset / "eda", protected_dirs=[dataset])
    image = dataset / "a" / "x.png"
    with pytest.raises(OutputError, match="would overwrite the input"):
        io.check_output_folder(dataset / "a", inputs=[image], files=[image])
    (tmp_path / "out" / "eda.html").mkdir(parents=True)
    with pytest.raises(OutputError, match="it is a folder"):
        io.check_output_folder(tmp_path / "out", files=[tmp_path / "out" / "eda.html"])


def test_unwritable_folder_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            with pytest.raises(OutputError, match="permission denied"):
                io.check_output_file(folder / "p.csv")
        finally:
            folder.chmod(0o755)

    def denied(*a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io.tempfile, "NamedTemporaryFile", denied)  # as root, chmod does not stop writes
    with pytest.raises(OutputError, match="read-only") as e:
        io.check_output_file(folder / "p.csv")
    assert str(folder) in str(e.value) and "\n" not in str(e.value)
