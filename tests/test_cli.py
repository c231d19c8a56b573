"""The CLI as a user runs it: one-line errors with exit code 2, never a traceback."""

import subprocess
import sys

import numpy as np
from PIL import Image

from medclassify.cli import main


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in errors[0], (f, errors[0])


def make_two_class(root, n=6, size=24):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((size, size), 60 if c == "a" else 180, np.uint8)).save(root / c / f"{i}.png")
    return root


def test_missing_folder(tmp_path, capsys):
    code, _, err = run_cli(["train", tmp_path / "nowhere", "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "does not exist", "Fix:")
    assert not (tmp_path / "run").exists()


def test_one_class(tmp_path, capsys):
    (tmp_path / "d" / "a").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "d" / "a" / "1.png")
    code, _, err = run_cli(["train", tmp_path / "d", "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "only one class")


def test_empty_class(tmp_path, capsys):
    make_two_class(tmp_path / "d")
    (tmp_path / "d" / "c").mkdir()
    code, _, err = run_cli(["train", tmp_path / "d", "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "hold no images", "c")


def test_unknown_model(tmp_path, capsys):
    make_two_class(tmp_path / "d")
    code, _, err = run_cli(["train", tmp_path / "d", "--out", tmp_path / "run", "--model", "resnet5000"], capsys)
    assert_one_line_error(code, err, "Unknown model 'resnet5000'")
    assert not (tmp_path / "run").exists()


def test_bad_flag_values(tmp_path, capsys):
    make_two_class(tmp_path / "d")
    code, _, err = run_cli(["train", tmp_path / "d", "--out", tmp_path / "r", "--augment", "wild"], capsys)
    assert_one_line_error(code, err, "unknown augmentation preset")
    code, _, err = run_cli(["train", tmp_path / "d", "--out", tmp_path / "r", "--image-size", "5"], capsys)
    assert_one_line_error(code, err, "--image-size")
    code, _, err = run_cli(["train", tmp_path / "d", "--out", tmp_path / "r", "--time-budget", "soon"], capsys)
    assert_one_line_error(code, err, "time budget")


def test_image_size_model_cannot_take(tmp_path, capsys):
    make_two_class(tmp_path / "d")
    code, _, err = run_cli(["train", tmp_path / "d", "--out", tmp_path / "run", "--model", "seed_cnn",
                            "--image-size", "16", "--epochs", "1"], capsys)
    assert_one_line_error(code, err, "cannot take 16x16", "--image-size")
    assert not (tmp_path / "run").exists()


def test_corrupt_and_non_image_files_are_counted_and_listed(tmp_path, capsys):
    data = make_two_class(tmp_path / "d", n=8)
    (data / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (data / "b" / "readme.txt").write_text("not an image")
    code, out, err = run_cli(["train", data, "--out", tmp_path / "run", "--model", "seed_cnn", "--image-size", "32",
                              "--epochs", "1", "--normalize", "fixed"], capsys)
    assert code == 0, err
    assert "1 unreadable file(s) skipped" in err
    assert "1 non-image file(s)" in err
    skipped = (tmp_path / "run" / "skipped.csv").read_text()
    assert "broken.jpg" in skipped and "corrupt" in skipped


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    data = make_two_class(tmp_path / "d")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    code, _, err = run_cli(["train", data, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_evaluate_and_predict_bad_input(tmp_path, capsys):
    code, _, err = run_cli(["evaluate", tmp_path / "norun"], capsys)
    assert_one_line_error(code, err, "does not exist")
    (tmp_path / "notrun").mkdir()
    code, _, err = run_cli(["predict", tmp_path / "notrun", tmp_path], capsys)
    assert_one_line_error(code, err, "not a medclassify run directory")


def test_console_script_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medclassify.cli", "train", str(tmp_path / "x"), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_demo_runs_end_to_end(tmp_path, capsys):
    code, out, err = run_cli(["demo", "--out", tmp_path / "demo", "--quiet"], capsys)
    assert code == 0, err
    assert "Demo finished: test accuracy" in out
    acc = float(out.split("test accuracy ")[1].split(",")[0])
    assert acc >= 0.8
    assert (tmp_path / "demo" / "predictions.csv").is_file()
