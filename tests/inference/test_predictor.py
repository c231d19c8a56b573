import json
import shutil

import numpy as np
import pytest
import torch

from medclassify.data.cache import build_cache
from medclassify.errors import ConfigError
from medclassify.engine import predict_rows
from medclassify.inference.predictor import Predictor, aggregate_patients, parse_shard, take_shard
from medclassify.run import load_run


def test_predictor_tensors_identical_to_the_evaluation_path(tiny_run, small_dataset):
    """The predictor decodes files into exactly the cache's pixels, builds exactly the evaluation
    tensors, and gives the probabilities predict_rows gives over the cache."""
    run = load_run(tiny_run)
    prep = run.preprocessing
    paths = sorted(str(p) for p in (small_dataset / "test").rglob("*.png"))
    cache = build_cache(paths, prep.image_size, prep.resize, prep.channels, workers=1)
    rows = cache.rows(paths)
    predictor = Predictor(run, backend="torch")
    decoded = np.stack([predictor.load(p) for p in paths])
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, cache.images[rows])
    assert torch.equal(predictor.tensor(decoded), prep(np.asarray(cache.images[rows])))
    eval_probs, _ = predict_rows(run.build_model(), cache.images, rows, prep)
    preds = predictor.predict_paths(paths)
    got = np.array([[p.probabilities[c] for c in run.classes] for p in preds])
    np.testing.assert_allclose(got, eval_probs, atol=1e-6)


def _copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_temperature_from_run_json_scales_the_logits(tiny_run, tmp_path):
    run_dir = _copy_run(tiny_run, tmp_path / "run")
    info = json.loads((run_dir / "run.json").read_text())
    plain = Predictor(run_dir, backend="torch")
    image = plain.load(next(p for r in load_run(run_dir).records("test") for p in [r.path]))[None]
    logits = plain.logits(plain.tensor(image))
    info["calibration"] = {"temperature": 2.5}
    (run_dir / "run.json").write_text(json.dumps(info))
    calibrated = Predictor(run_dir, backend="torch")
    expected = torch.from_numpy(logits / 2.5).softmax(1).numpy()
    np.testing.assert_allclose(calibrated.probabilities(image), expected, atol=1e-6)
    assert calibrated.describe()["temperature"] == 2.5


def test_abstain_flag_follows_the_threshold(tiny_run):
    path = load_run(tiny_run).records("test")[0].path

    def predictor(abstain_below):
        p = Predictor(tiny_run, backend="torch", abstain_below=abstain_below)
        p.guard = None  # the confidence threshold alone (the guard flags ~5% of own images by design)
        return p

    assert predictor(1.01).predict_file(path).abstain
    assert not predictor(0.0).predict_file(path).abstain
    assert not predictor(None).predict_file(path).abstain


def test_stored_operating_threshold_decides_binary_predictions(tiny_run, tmp_path):
    """A threshold chosen on validation (evaluate --target-sensitivity) is what predict and serve
    decide with; argmax only when there is none or the caller turns it off."""
    from medclassify.evaluation.evaluate import evaluate
    from medclassify.reporting import Reporter

    run_dir = _copy_run(tiny_run, tmp_path / "run")
    paths = [r.path for r in load_run(run_dir).records("test")]
    plain = Predictor(run_dir, backend="torch").predict_paths(paths)
    positive = load_run(run_dir).classes[1]
    p_pos = np.array([p.probabilities[positive] for p in plain])
    evaluate(run_dir, reporter=Reporter(quiet=True), target_sensitivity=1.0)
    op = json.loads((run_dir / "run.json").read_text())["operating_point"]
    assert op["positive_class"] == positive
    with_op = Predictor(run_dir, backend="torch")
    assert with_op.describe()["operating_point"]["threshold"] == pytest.approx(op["threshold"])
    labels = [p.label for p in with_op.predict_paths(paths)]
    assert labels == [positive if v >= op["threshold"] else load_run(run_dir).classes[0] for v in p_pos]
    argmax = [p.label for p in Predictor(run_dir, backend="torch", use_operating_point=False).predict_paths(paths)]
    assert argmax == [p.label for p in plain]


def test_tta_averages_the_logits_of_the_image_and_its_mirror(tiny_run):
    p = Predictor(tiny_run, backend="torch", tta=False)
    paths = [r.path for r in load_run(tiny_run).records("test")[:4]]
    batch = np.stack([p.load(x) for x in paths])
    plain = p.logits(p.tensor(batch))
    mirrored = p.logits(p.tensor(np.ascontiguousarray(batch[:, :, ::-1])))
    expected = torch.from_numpy((plain + mirrored) / 2 / p.temperature).softmax(1).numpy()
    p.tta = True
    np.testing.assert_allclose(p.probabilities(batch), expected, atol=1e-6)


def test_version_is_the_weights_hash_and_changes_with_them(tiny_run, tmp_path):
    run_dir = _copy_run(tiny_run, tmp_path / "run")
    v1 = Predictor(run_dir, backend="torch").version
    assert len(v1) == 12 and v1 == Predictor(tiny_run, backend="torch").version
    from safetensors.torch import load_file, save_file

    weights = load_file(str(run_dir / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, str(run_dir / "model.safetensors"))
    assert Predictor(run_dir, backend="torch").version != v1


def test_onnx_backend_refused_without_export(tiny_run):
    with pytest.raises(ConfigError, match="export it first"):
        Predictor(tiny_run, backend="onnx")


def test_unreadable_files_are_reported_not_fatal(tiny_run, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    good = load_run(tiny_run).records("test")[0].path
    preds = Predictor(tiny_run, backend="torch").predict_paths([good, str(bad)])
    assert preds[0].label and preds[0].error is None
    assert preds[1].label is None and preds[1].error and not preds[1].probabilities


def test_shards_partition_the_inputs():
    paths = [f"/d/img{i:03d}.png" for i in range(10)] + ["/d/img000.png"]
    parts = [take_shard(paths, parse_shard(f"{i}/3")) for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(set(paths))
    assert all(parts) and len(set(parts[0]) & set(parts[1])) == 0
    for bad in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_patient_aggregation_mean_and_max():
    from medclassify.inference.predictor import Prediction

    preds = [Prediction("/x/person1_a.png", "a", {"a": 0.9, "b": 0.1}),
             Prediction("/x/person1_b.png", "b", {"a": 0.3, "b": 0.7}),
             Prediction("/x/person2_a.png", "a", {"a": 0.6, "b": 0.4}),
             Prediction("/x/other.png", None, {}, error="unreadable")]
    mean = {p.patient: p for p in aggregate_patients(preds, r"person(?P<patient>\d+)_", "mean")}
    assert set(mean) == {"1", "2"}
    assert mean["1"].images == 2 and mean["1"].probabilities["a"] == pytest.approx(0.6)
    mx = {p.patient: p for p in aggregate_patients(preds, r"person(?P<patient>\d+)_", "max")}
    assert mx["1"].probabilities == pytest.approx({"a": 0.9, "b": 0.7}) and mx["1"].label == "a"
