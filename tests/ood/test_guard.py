"""The out-of-distribution guard: fitted at train time, answered by every entry point, the same on
both backends, absent (never a crash) for older runs; and the shift check through the console script."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medclassify.inference.predictor import Predictor, predict_files
from medclassify.ood import fit_guard, load_guard
from medclassify.run import load_run


def noise(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def test_guard_is_fitted_and_stored_at_train_time(tiny_run):
    run = load_run(tiny_run)
    rec = run.info["ood"]
    assert rec["status"] == "fitted" and rec["method"] in ("knn", "mahalanobis")
    # seed_cnn: the spatial spread of its quarter-resolution map (64 channels), its last feature map
    # averaged (256), then its 64 penultimate features
    assert rec["quantile"] == 0.95 and rec["features"] == 384 and rec["penultimate_features"] == 64 and rec["train_images"] > 0
    assert [(x["name"], x["start"], x["stop"], x["method"]) for x in rec["layers"]] == [
        ("features.7:std", 0, 64, "knn"), ("features", 64, 320, "mahalanobis"), ("penultimate", 320, 384, "mahalanobis")]
    assert rec["layers"][0]["k"] == 1
    assert rec["threshold"] == 1.0 and all(x["threshold"] > 0 for x in rec["layers"])
    assert (tiny_run / "ood.safetensors").is_file()
    assert run.record.ood is not None and run.record.ood.threshold == rec["threshold"]
    assert [x.name for x in run.record.ood.layers] == ["features.7:std", "features", "penultimate"]
    assert run.record.ood.layers[0].method == "knn" and run.record.ood.combine.startswith("max")
    guard, reason = load_guard(run)
    assert guard is not None and reason == "" and guard.reference.shape[1] == 64  # the shift check's penultimate features


def test_predict_gives_every_image_a_score_and_flags_noise(tiny_run, small_dataset, tmp_path):
    preds = predict_files(tiny_run, [small_dataset / "test"], tmp_path / "p.csv")
    assert all(isinstance(p.ood_score, float) and isinstance(p.in_distribution, bool) for p in preds)
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert {"ood_score", "in_distribution", "abstain_reason"} <= set(rows[0])
    assert all(r["in_distribution"] in ("yes", "no") and float(r["ood_score"]) >= 0 for r in rows)
    own_flagged = np.mean([not p.in_distribution for p in preds])
    predictor = Predictor(tiny_run)
    foreign = [predictor.predict_array(noise(s)) for s in range(5)]
    # Random noise is unlike the smooth synthetic shapes however confident the classifier is about it.
    assert all(f.in_distribution is False and f.abstain and f.abstain_reason == "out_of_distribution" for f in foreign)
    assert min(f.ood_score for f in foreign) > max(p.ood_score for p in preds)
    assert own_flagged <= 0.5


def test_onnx_and_torch_give_the_same_ood_score(run_copy, small_dataset):
    pytest.importorskip("onnxruntime")
    from medclassify.inference.export import export_onnx

    meta = export_onnx(run_copy)
    assert meta["outputs"] == ["logits", "features"] and meta["parity"]["max_rel_ood_score_diff"] <= 1e-3
    paths = sorted(str(p) for p in (small_dataset / "test").rglob("*.png"))[:6]
    onnx, torch_ = Predictor(run_copy, backend="onnx"), Predictor(run_copy, backend="torch")
    assert onnx.backend == "onnx" and onnx.guard is not None
    for a, b in zip(onnx.predict_paths(paths) + [onnx.predict_array(noise())],
                    torch_.predict_paths(paths) + [torch_.predict_array(noise())]):
        t = torch_.guard.threshold
        assert a.ood_score == pytest.approx(b.ood_score, rel=1e-3, abs=1e-3 * t)
        if abs(b.ood_score - t) > 1e-3 * t:  # the same decision, except on the threshold itself
            assert a.in_distribution == b.in_distribution


def test_a_run_without_a_guard_predicts_and_says_so(run_copy, small_dataset):
    run = load_run(run_copy)
    run.update(ood=None)
    (run_copy / "ood.safetensors").unlink()
    p = Predictor(run_copy)
    pred = p.predict_array(noise())
    assert pred.ood_score is None and pred.in_distribution is None and pred.abstain_reason in (None, "low_confidence")
    assert p.describe()["ood"]["enabled"] is False and "fit-guard" in p.describe()["ood"]["reason"]
    # fit-guard on the old run brings it back
    rec = fit_guard(load_run(run_copy))
    assert rec["status"] == "fitted" and Predictor(run_copy).predict_array(noise()).in_distribution is False


def test_a_guard_from_other_weights_is_not_used(run_copy):
    run = load_run(run_copy)
    run.update(ood={**run.info["ood"], "weights_version": "0" * 12})
    guard, reason = load_guard(load_run(run_copy))
    assert guard is None and "other weights" in reason
    assert Predictor(run_copy).predict_array(noise()).ood_score is None


def test_serve_and_cascade_return_the_guard_fields(tiny_run, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import io as _io

    from fastapi.testclient import TestClient
    from PIL import Image

    from medclassify.cascade import Cascade
    from medclassify.serve.app import ServeSettings, create_app

    buf = _io.BytesIO()
    Image.fromarray(noise()).save(buf, format="PNG")
    with TestClient(create_app(tiny_run, ServeSettings(max_megapixels=50)), base_url="http://localhost") as c:
        body = c.post("/v1/predict", files={"file": ("x.png", buf.getvalue(), "application/octet-stream")}).json()
        assert c.get("/v1/model").json()["ood"]["enabled"] is True
    assert body["in_distribution"] is False and body["abstain"] and body["abstain_reason"] == "out_of_distribution"
    assert isinstance(body["ood_score"], float)

    spec = tmp_path / "c.yaml"
    spec.write_text(f"start: a\nstages:\n  a:\n    run: {tiny_run}\n    route: {{lesion: b}}\n  b:\n    run: {tiny_run}\n")
    img = tmp_path / "noise.png"
    Image.fromarray(noise(1)).save(img)
    res = Cascade(spec).predict_file(img)
    assert res.in_distribution is False and res.abstain_reason == "out_of_distribution" and res.ood_score is not None
    assert all(s.in_distribution is False for s in res.steps)
    served = create_app(spec, ServeSettings(max_megapixels=50))
    with TestClient(served, base_url="http://localhost") as c:
        body = c.post("/v1/predict", files={"file": ("x.png", buf.getvalue(), "application/octet-stream")}).json()
    assert body["in_distribution"] is False and all("ood_score" in s for s in body["cascade_path"])


def test_evaluate_records_scores_and_the_shift_check(run_copy):
    from medclassify.evaluation.evaluate import evaluate

    m = evaluate(run_copy, n_boot=100)
    assert len(m["predictions"]["ood_scores"]) == m["n"] == len(m["predictions"]["in_distribution"])
    assert m["shift"]["status"] == "checked" and 0 < m["shift"]["p_value"] <= 1 and "_features" not in m
    rows = list(csv.DictReader(open(run_copy / "metrics" / "test-predictions.csv")))
    assert len(rows) == m["n"] and {"ood_score", "in_distribution", "label"} <= set(rows[0])
    assert json.loads((run_copy / "metrics" / "test.json").read_text())["shift"]["name"] == "test"


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "medclassify"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "medclassify.cli"]


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*_cli(), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_shift_command_through_the_console_script(tiny_run, small_dataset, tmp_path):
    ok = _run("shift", tiny_run, small_dataset, "--split", "test", "--json")
    assert ok.returncode == 0, ok.stderr
    check = json.loads(ok.stdout)
    assert check["images"] == 12 and 0 < check["p_value"] <= 1 and check["test"]["seed"] == 0
    # a folder of noise is unlike the training images on both counts
    folder = tmp_path / "foreign"
    folder.mkdir()
    from PIL import Image

    for s in range(24):
        Image.fromarray(noise(s)).save(folder / f"n{s}.png")
    foreign = json.loads(_run("shift", tiny_run, folder, "--json").stdout)
    assert foreign["flagged"] == 1.0 and foreign["shift"] is True and foreign["p_value"] < 0.01

    no_guard = tmp_path / "old"
    import shutil

    shutil.copytree(tiny_run, no_guard)
    load_run(no_guard).update(ood=None)
    for args in ([tiny_run, tmp_path / "missing"], [tiny_run, small_dataset, "--split", "nope"],
                 [tmp_path / "norun", small_dataset], [no_guard, small_dataset]):
        bad = _run("shift", *args)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (args, bad.stderr)
