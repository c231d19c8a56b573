"""run.json is validated once against a typed schema; damaged or hand-edited run directories give
one line naming the file and the fix (exit 2), never a traceback, and are left as they were."""

import hashlib
import json
import pickle

import pytest
import torch

import medclassify.inference.predictor as predictor_module
from medclassify.cli import main
from medclassify.errors import RunError
from medclassify.inference.predictor import Predictor
from medclassify.run import FORMAT_VERSION, RunRecord, load_run


def tree_hash(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def one_line_error(capsys, argv, *fragments):
    assert main([str(a) for a in argv]) == 2
    captured = capsys.readouterr()
    err = captured.err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert "Traceback" not in err + captured.out and "Fix: " in errors[0]
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


def edit_info(run, change):
    info = json.loads((run / "run.json").read_text())
    change(info)
    (run / "run.json").write_text(json.dumps(info))


@pytest.fixture
def image(tiny_run):
    return load_run(tiny_run).records("test")[0].path


def test_a_trained_run_matches_the_schema(tiny_run):
    run = load_run(tiny_run)
    assert isinstance(run.record, RunRecord) and run.record.format_version == FORMAT_VERSION
    assert run.record.classes == run.classes and run.record.preprocessing == run.preprocessing
    assert isinstance(run.info, dict) and run.info["config"]["model"] == "seed_cnn"  # the raw dict for existing callers


def test_unknown_keys_are_kept(run_copy):
    edit_info(run_copy, lambda i: i.update(added_by_a_newer_version={"x": 1}))
    run = load_run(run_copy)
    assert run.info["added_by_a_newer_version"] == {"x": 1}
    assert run.record.model_extra["added_by_a_newer_version"] == {"x": 1}


def _delete(key):
    return lambda i: i.pop(key)


def _set(*path_value):
    *path, value = path_value

    def change(info):
        d = info
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = value

    return change


@pytest.mark.parametrize("content, fragments", [
    (b"[]", ["holds a JSON list"]),
    (b"\x00\x01\x02\xff\xfe binary", ["not a readable"]),
    ('{"classes": ["caf\u00e9"]}'.encode("latin-1"), ["not a readable", "UnicodeDecodeError"]),
    (b"", ["not a readable"]),
    (b'{"format_version": 1, "classes": ', ["not a readable"]),
])
def test_unreadable_run_json(run_copy, image, capsys, tmp_path, content, fragments):
    (run_copy / "run.json").write_bytes(content)
    before = tree_hash(run_copy)
    one_line_error(capsys, ["predict", run_copy, image, "--out", tmp_path / "p.csv"], str(run_copy / "run.json"), *fragments)
    assert tree_hash(run_copy) == before and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("change, fragments", [
    (_delete("classes"), ["has no 'classes'"]),
    (_delete("preprocessing"), ["has no 'preprocessing'"]),
    (_delete("config"), ["has no 'config'"]),
    (_set("preprocessing", "image_size", "big"), ["preprocessing.image_size", "'big'"]),
    (_set("preprocessing", "image_size", 0), ["image_size"]),
    (_set("preprocessing", "channels", 2), ["preprocessing.channels"]),
    (_set("preprocessing", "mean", [0.5, 0.5, 0.5]), ["one per channel"]),
    (_set("classes", "lesion,normal"), ["classes", "valid list"]),
    (_set("classes", [1, 2]), ["classes.0"]),
    (_set("classes", ["a", "a"]), ["unique"]),
    (_set("classes", ["a"]), ["classes"]),
    (_set("config", []), ["config"]),
    (_set("config", "model", 5), ["config.model"]),
    (_set("format_version", "one"), ["format_version"]),
    (_set("format_version", 99), ["format version 99", "newer than this medclassify"]),
    (_set("calibration", "temperature", 0), ["calibration.temperature", "greater than 0"]),
    (_set("calibration", "temperature", -1.5), ["calibration.temperature"]),
    (_set("calibration", "temperature", float("nan")), ["calibration.temperature", "finite"]),
    (_set("calibration", "temperature", "hot"), ["calibration.temperature"]),
    (_set("operating_point", {"threshold": 2, "positive_class": "normal"}), ["operating_point.threshold"]),
    (_set("tta", "enabled", "perhaps"), ["tta.enabled"]),
])
def test_hand_edited_run_json(run_copy, image, capsys, tmp_path, change, fragments):
    edit_info(run_copy, change)
    before = tree_hash(run_copy)
    one_line_error(capsys, ["predict", run_copy, image, "--out", tmp_path / "p.csv"], str(run_copy), *fragments)
    with pytest.raises(RunError):
        load_run(run_copy)
    assert tree_hash(run_copy) == before


def _pickle_bytes():
    return pickle.dumps({"features.0.weight": torch.zeros(3)})


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "pickle", "torch.save"])
def test_damaged_weights(run_copy, image, capsys, tmp_path, damage):
    weights = run_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "random": bytes(range(256)) * 40,
                         "pickle": _pickle_bytes(), "torch.save": b""}[damage])
    if damage == "torch.save":
        torch.save({"features.0.weight": torch.zeros(3)}, weights)
    one_line_error(capsys, ["predict", run_copy, image, "--out", tmp_path / "p.csv", "--backend", "torch"],
                   str(weights), "safetensors")


def test_class_count_differing_from_the_weights(run_copy, image, capsys, tmp_path):
    edit_info(run_copy, lambda i: i.update(classes=i["classes"] + ["extra"]))
    message = one_line_error(capsys, ["predict", run_copy, image, "--out", tmp_path / "p.csv"],
                             str(run_copy / "model.safetensors"), "does not fit run.json", "3 classes")
    assert "size mismatch" in message


def test_deleted_split_csv(run_copy, capsys):
    (run_copy / "split.csv").unlink()
    (run_copy / "metrics" / "test.json").unlink(missing_ok=True)
    one_line_error(capsys, ["evaluate", run_copy, "-q"], str(run_copy / "split.csv"), "missing")


def test_split_csv_without_its_columns(run_copy, capsys):
    (run_copy / "split.csv").write_text("file,class\na.png,x\n")
    (run_copy / "metrics" / "test.json").unlink(missing_ok=True)
    one_line_error(capsys, ["evaluate", run_copy, "-q"], str(run_copy / "split.csv"), "column")


def test_garbage_model_onnx(run_copy, image, capsys, tmp_path, monkeypatch):
    """A model.onnx that ONNX Runtime cannot load (even one export.json vouches for): named in one line
    when asked for explicitly; the auto backend falls back to PyTorch with a warning."""
    pytest.importorskip("onnxruntime")
    (run_copy / "model.onnx").write_bytes(b"\x08\x07garbage" * 50)
    monkeypatch.setattr(predictor_module, "onnx_is_current", lambda run, version: True)
    with pytest.raises(RunError, match="model.onnx cannot be loaded"):
        Predictor(run_copy, backend="onnx")
    one_line_error(capsys, ["predict", run_copy, image, "--out", tmp_path / "p.csv", "--backend", "onnx"],
                   str(run_copy / "model.onnx"), "export it again")
    p = Predictor(run_copy, backend="auto")
    assert p.backend == "torch" and "model.onnx" in p.fallback
    assert main(["predict", str(run_copy), image, "--out", str(tmp_path / "auto.csv")]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "Using PyTorch instead" in captured.err and "Traceback" not in captured.err
    assert (tmp_path / "auto.csv").read_text().count("\n") == 2


def test_unreadable_metrics_file(run_copy, capsys):
    (run_copy / "metrics" / "test.json").write_bytes(b"\xff\x00")
    with pytest.raises(RunError, match="test.json"):
        load_run(run_copy).metrics("test")
