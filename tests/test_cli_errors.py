"""Command-line mistakes through the real console script: Click's usage line and one error line,
exit code 2, never a traceback. Plus the CLI's own handling of --set, Ctrl-C and predict failures."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclassify import __version__
from medclassify.cli import main
from medclassify.config import parse_overrides
from medclassify.errors import ConfigError, MedClassifyError

SCRIPT = Path(sys.executable).parent / "medclassify"
COMMAND = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "medclassify.cli"]


def console(*args, cwd=None):
    env = dict(os.environ, COLUMNS="100")
    proc = subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def assert_usage_error(proc, *fragments):
    """Click's form: 'Usage: ...', a hint, then exactly one 'Error: ...' line, last; exit code 2."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("Usage: medclassify"), proc.stderr
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for f in fragments:
        assert f in errors[0], (f, errors[0])


def assert_one_line(proc_or_err, code=2, *fragments):
    err = proc_or_err if isinstance(proc_or_err, str) else proc_or_err.stderr
    if not isinstance(proc_or_err, str):
        assert proc_or_err.returncode == code, (proc_or_err.returncode, err)
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert "Traceback" not in err and "Fix: " in errors[0]
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


def test_bare_command_shows_help_and_exits_2():
    proc = console()
    assert proc.returncode == 2  # Click's rule (8.2+) for a group called without a command: help, usage exit code
    shown = proc.stdout + proc.stderr  # Typer renders the help with rich, on stdout
    assert "Usage: medclassify" in shown and "train" in shown and "predict" in shown


def test_version():
    proc = console("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"medclassify {__version__}" == "medclassify 0.1.0"


def test_help_exits_0():
    proc = console("train", "--help")
    assert proc.returncode == 0 and "--set" in proc.stdout and "--epochs" in proc.stdout


@pytest.mark.parametrize("args, fragments", [
    (["train", "data", "--out", "run", "--epoch", "2"], ["No such option: --epoch", "--epochs"]),  # typo: the nearest option
    (["train", "data", "--out", "run", "--epochs", "two"], ["Invalid value for '--epochs'"]),
    (["train", "data"], ["Missing option '--out'"]),
    (["trian", "data"], ["No such command 'trian'", "train"]),
    (["train", "data", "--out", "run", "--strict", "true"], ["unexpected extra argument", "true"]),  # --strict is a flag
])
def test_parser_errors(tmp_path, args, fragments):
    assert_usage_error(console(*args, cwd=tmp_path), *fragments)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_set_with_an_unknown_key_names_the_nearest(tmp_path):
    proc = console("train", tmp_path, "--out", tmp_path / "run", "--set", "sead=1")
    assert_one_line(proc, 2, "Unknown setting 'sead'", "--set seed=1")


def test_set_is_accepted_as_the_readme_shows(tmp_path):
    """The README's `--set seed=1` parses; the run then fails on the (missing) dataset, not the flag."""
    proc = console("train", tmp_path / "nowhere", "--out", tmp_path / "run", "--set", "seed=1")
    assert_one_line(proc, 2, "nowhere", "does not exist")
    assert not (tmp_path / "run").exists()


def test_library_error_through_the_console_script(tmp_path):
    assert_one_line(console("predict", tmp_path / "norun", tmp_path), 2, "does not exist")


# In-process: what --set gives TrainConfig, Ctrl-C, predict failures.

@pytest.mark.parametrize("pair, key, value", [
    ("seed=1", "seed", 1), ("lr=1e-3", "lr", 0.001), ("channels=1", "channels", 1), ("channels=auto", "channels", "auto"),
    ("ema=true", "ema", True), ("weights=none", "weights", None), ("augment=none", "augment", "none"),
    ("time_budget=10m", "time_budget", 600.0), ("time-budget=off", "time_budget", None), ("freeze=2", "freeze", 2),
    ("warmup_epochs=1.5", "warmup_epochs", 1.5), ("model=seed_cnn", "model", "seed_cnn"),
])
def test_set_coerces_to_the_field_type(pair, key, value):
    got = parse_overrides([pair])
    assert got == {key: value} and type(got[key]) is type(value)


@pytest.mark.parametrize("pairs, message", [
    (["sead=1"], "did you mean --set seed=1"), (["seed"], "KEY=VALUE"), (["seed=one"], "Invalid --set seed=one"),
    (["channels=2"], "Invalid --set channels=2"), (["data=x"], "Unknown setting 'data'"),
    (["seed=1", "seed=2"], "given twice"),
])
def test_set_mistakes(pairs, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(pairs)


def test_set_reaches_the_training_config(tmp_path, capsys, monkeypatch):
    import medclassify.training.fit as fit

    seen = {}

    def fake_train(config, **kwargs):
        seen["config"] = config
        raise MedClassifyError("stopped here.", "nothing.")

    monkeypatch.setattr(fit, "train", fake_train)
    assert main(["train", tmp_path, "--out", tmp_path / "run", "--set", "seed=7", "--set", "epochs=2", "--lr", "0.01"]) == 2
    c = seen["config"]
    assert (c.seed, c.epochs, c.time_budget, c.lr) == (7, 2, None, 0.01)  # --set epochs, like --epochs, is exact
    capsys.readouterr()
    assert main(["train", tmp_path, "--out", tmp_path / "run", "--epochs", "3", "--set", "epochs=2"]) == 2
    assert_one_line(capsys.readouterr().err, 2, "given twice")
    assert main(["train", tmp_path, "--out", tmp_path / "run", "--set", "image_size=5"]) == 2
    assert_one_line(capsys.readouterr().err, 2, "--image-size")


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    import medclassify.models as models

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "list_models", interrupted)
    assert main(["models"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted (Ctrl-C)"


def test_an_os_error_with_a_path_is_one_line(monkeypatch, capsys):
    """The safety net under the library's own checks: a path the OS refused, named in one line."""
    import medclassify.models as models

    def refused():
        raise PermissionError(13, "Permission denied", "/somewhere/locked")

    monkeypatch.setattr(models, "list_models", refused)
    assert main(["models"]) == 2
    assert_one_line(capsys.readouterr().err, 2, "/somewhere/locked", "Permission denied")


def test_predict_exits_2_when_nothing_could_be_predicted(tiny_run, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "in" / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "preds.csv"
    assert main(["predict", tiny_run, tmp_path / "in", "--out", out, "-q"]) == 2
    assert_one_line(capsys.readouterr().err, 2, "None of the 2 input file(s)", str(out))
    assert "a.png" in out.read_text()  # the CSV lists each file with its error


def test_predict_with_a_list_that_is_not_utf8(tiny_run, tmp_path, capsys):
    listing = tmp_path / "list.csv"
    listing.write_bytes(b"path\n\xff\xfe\xe9t\xe9.png\n")
    assert main(["predict", tiny_run, listing, "--out", tmp_path / "p.csv", "-q"]) == 2
    assert_one_line(capsys.readouterr().err, 2, str(listing), "not UTF-8")
    assert not (tmp_path / "p.csv").exists()


def test_every_dependency_is_pinned_to_the_tested_range():
    """A fresh install cannot silently change behaviour: each requirement has an upper bound, and the
    installed (tested) version is inside it."""
    tomllib = pytest.importorskip("tomllib")
    requirements = pytest.importorskip("packaging.requirements")
    from importlib.metadata import PackageNotFoundError, version

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for text in reqs:
        req = requirements.Requirement(text)
        if req.name == "medclassify":
            continue
        ops = {s.operator for s in req.specifier}
        assert "==" in ops or ops & {"<", "<="}, f"{text}: no upper bound"
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            continue
        assert req.specifier.contains(installed, prereleases=True), f"{text}: installed {installed} is outside"
