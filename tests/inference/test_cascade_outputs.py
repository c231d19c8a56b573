"""Cascades' outputs are checked before any stage trains or any image is evaluated."""

import hashlib

import pytest

from medclassify.cli import main
from medclassify.data.synthetic import generate_dataset

from .test_cascade import STAGES


def _tree(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def cascade(tmp_path):
    generate_dataset(tmp_path / "src_a", classes=("none", "one", "two", "three"), per_class=3, size=16)
    (tmp_path / "data.yaml").write_text("sources:\n  - path: src_a\n    classes: {none: healthy}\n")
    path = tmp_path / "cascade.yaml"
    path.write_text("data: data.yaml\n" + STAGES)
    return path


def _refused(argv, named, root, capsys):
    before = _tree(root)
    capsys.readouterr()
    assert main([str(a) for a in argv] + ["-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(named) in err[0]
    assert _tree(root) == before


def test_a_stage_run_that_is_a_users_folder_is_refused_before_any_training(cascade, capsys):
    user = cascade.parent / "runs" / "kind"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    _refused(["train-cascade", cascade, "--overwrite"], "runs/kind", cascade.parent, capsys)


def test_a_stage_run_pointing_at_the_dataset_is_refused(cascade, capsys):
    cascade.write_text(cascade.read_text().replace("run: runs/count", "run: src_a"))
    _refused(["train-cascade", cascade], "src_a", cascade.parent, capsys)


def test_evaluate_cascade_checks_its_metrics_file_first(cascade, capsys):
    (cascade.parent / "cascade.metrics.json").mkdir()
    _refused(["evaluate-cascade", cascade], cascade.parent / "cascade.metrics.json", cascade.parent, capsys)
