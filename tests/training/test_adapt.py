"""medclassify adapt: AdaBN on a new site's unlabelled images, with the class-share guard."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from medclassify.data.preprocessing import Preprocessing
from medclassify.ood import load_guard
from medclassify.run import load_run
from medclassify.training.adapt import adapt_batchnorm, adapt_run, class_weights, resample
from tests.conftest import copy_run, train_tiny

BN_STATS = ("running_mean", "running_var")


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "medclassify"
    return [str(script)] if script.exists() else [sys.executable, "-m", "medclassify.cli"]


@pytest.fixture(scope="module")
def new_site(small_dataset, tmp_path_factory):
    """The dataset's images as another scanner would give them (darker, lower contrast), in class
    folders whose names adapt must not read."""
    out = tmp_path_factory.mktemp("site") / "images"
    for src in sorted(Path(small_dataset).rglob("*.png")):
        dest = out / src.parent.name / f"{src.parent.parent.name}-{src.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(src)).astype(np.float64)
        Image.fromarray((pixels * 0.4 + 10).astype(np.uint8)).save(dest)
    return out


@pytest.fixture(scope="module")
def estimable_run(small_dataset, tmp_path_factory):
    """The tiny run's recipe with 45% of its training images held out for validation: enough (at
    least MIN_VALIDATION) for adapt's accuracy estimate, which the tiny run's 4 cannot give."""
    from medclassify.training.adapt import MIN_VALIDATION

    run = train_tiny(small_dataset, tmp_path_factory.mktemp("runs") / "estimable", val_fraction=0.45)
    assert len(load_run(run).records("val")) >= MIN_VALIDATION
    return run


@pytest.fixture
def estimable_copy(estimable_run, tmp_path):
    return copy_run(estimable_run, tmp_path / "run")


def test_adapt_changes_the_batchnorm_statistics_and_nothing_else(run_copy, new_site, tmp_path):
    (run_copy / "model.onnx").write_bytes(b"stale")  # an export of the old weights
    (run_copy / "export.json").write_text("{}")
    out = tmp_path / "adapted"
    result = adapt_run(run_copy, new_site, out)
    before = load_run(run_copy).build_model().state_dict()
    after = load_run(out).build_model().state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.endswith(BN_STATS) for k in changed)
    assert {k.rsplit(".", 1)[0] for k in changed} == {k.rsplit(".", 1)[0] for k in before if k.endswith("running_mean")}
    # provenance, in the typed run record
    run = load_run(out)
    record = run.record.adaptation
    n = len(list(new_site.rglob("*.png")))
    assert record.images == n == result.images and record.method == "adabn" and record.guard == "reweight"
    assert Path(record.images_folder) == new_site.resolve() and Path(record.source_run) == run_copy.resolve()
    assert record.fingerprint and run.info["adaptation"]["bn_layers"] == 5
    assert record.applied and run.info["adaptation"]["shift"]["shift"] is True  # darker, flatter images: a shift
    # too few validation images (4) for the accuracy estimate: adapted, and the record says why
    assert record.estimate.status == "unavailable" and "validation images" in run.info["adaptation"]["estimate"]["reason"]
    assert not (out / "model.onnx").exists() and not (out / "export.json").exists() and not (out / "metrics").exists()
    assert len((out / "adaptation.csv").read_text().splitlines()) == n + 1
    # the source's guard described the source features: the adapted run has its own, fitted again
    assert load_run(run_copy).info["ood"]["status"] == "fitted"
    guard, reason = load_guard(run)
    assert guard is not None, reason
    assert run.info["ood"]["sha256"] != load_run(run_copy).info["ood"]["sha256"]
    # a complete run: it predicts
    from medclassify.inference.predictor import Predictor

    pred = Predictor(out).predict_file(next(new_site.rglob("*.png")))
    assert pred.label in run.classes


def test_guard_makes_a_skewed_site_count_with_the_training_class_shares():
    """A model whose class is the image's brightness: plain AdaBN on a site with 90% bright images
    moves the BatchNorm mean to the bright side; the guard weighs the images back to the training
    split's 50/50 and puts it halfway."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(0.5)
        model[1].running_var.fill_(0.01)
        model[4].weight.copy_(torch.tensor([[-1.0], [1.0]]))
        model[4].bias.zero_()
    prep = Preprocessing(image_size=4, channels=1, mean=[0.0], std=[1.0])
    bright, dark = 204, 51  # 0.8 and 0.2 after scaling to [0, 1]
    images = np.full((100, 4, 4, 1), bright, np.uint8)
    images[90:] = dark
    shares = np.array([0.5, 0.5])

    plain = pickle_copy(model)
    adapt_batchnorm(plain, images, prep, shares, guard="none")
    assert plain[1].running_mean.item() == pytest.approx(0.9 * 0.8 + 0.1 * 0.2, abs=1e-4)
    guarded = pickle_copy(model)
    info = adapt_batchnorm(guarded, images, prep, shares, guard="reweight")
    assert info["predicted_shares"] == [0.1, 0.9]
    assert guarded[1].running_mean.item() == pytest.approx(0.5, abs=0.01)
    half = pickle_copy(model)
    adapt_batchnorm(half, images, prep, shares, guard="none", alpha=0.5)
    assert half[1].running_mean.item() == pytest.approx((0.5 + 0.74) / 2, abs=1e-4)


def pickle_copy(model):
    import copy

    return copy.deepcopy(model)


def test_class_weights_and_the_draw_restore_the_training_shares():
    probs = np.zeros((50, 3))
    pred = np.array([0] * 40 + [1] * 10)  # class 2 never predicted
    probs[np.arange(50), pred] = 1
    w = class_weights(probs, np.array([0.25, 0.25, 0.5]))
    assert w.mean() == pytest.approx(1)
    assert w[pred == 0].sum() == pytest.approx(w[pred == 1].sum())  # 0.25 : 0.25, renormalised without class 2
    drawn = pred[resample(w, seed=3)]
    assert abs((drawn == 0).sum() - 25) <= 1 and len(drawn) == 50
    assert sorted(resample(np.ones(20), seed=1)) == list(range(20))  # equal weights: every image once


def _run_cli(*args, cwd=None):
    env = {**os.environ}
    p = subprocess.run([*_cli(), "adapt", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    return p.returncode, p.stdout + p.stderr


def test_bad_input_is_one_line_and_exit_2(run_copy, new_site, tmp_path, capsys):
    from medclassify.models import create_model
    from medclassify.run import save_weights

    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no images here")
    few = tmp_path / "few"
    few.mkdir()
    for src in sorted(new_site.rglob("*.png"))[:3]:
        shutil.copy(src, few / src.name)
    no_bn = tmp_path / "vit"
    shutil.copytree(run_copy, no_bn)
    info = json.loads((no_bn / "run.json").read_text())
    info["config"]["model"] = "test_vit"
    (no_bn / "run.json").write_text(json.dumps(info))
    save_weights(create_model("test_vit", 2, 1, pretrained="none"), no_bn / "model.safetensors")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("not a run")
    # through the real console script (a subprocess): one case of each kind
    cases = [((run_copy, empty), "holds no image files"), ((new_site, new_site), "not a medclassify run"),
             ((no_bn, new_site), "no BatchNorm layer"), ((run_copy, new_site, "--overwrite"), "medclassify did not write")]
    for args, expected in cases:
        out = taken if args[-1] == "--overwrite" else tmp_path / "out"
        code, text = _run_cli(*args, "--out", out)
        assert code == 2, (args, text)
        assert text.startswith("error: ") and len(text.strip().splitlines()) == 1 and expected in text, (args, text)
    # the others through the same entry point, in this process
    from medclassify.cli import main

    for args, expected in [((run_copy, notes), "holds no image files"), ((run_copy, tmp_path / "missing"), "does not exist"),
                           ((run_copy, few), "needs at least"), ((run_copy, new_site, "--guard", "magic"), "Unknown --guard"),
                           ((run_copy, new_site, "--when", "sometimes"), "Unknown --when")]:
        assert main(["adapt", *map(str, args), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and expected in err, (args, err)
    assert not (tmp_path / "out").exists() and (taken / "mine.txt").is_file()


def test_no_shift_keeps_the_source_weights_unless_always(run_copy, tmp_path):
    """Images of the training distribution (the run's own validation split): the shift check finds no
    shift, so the new run holds the source's weights and guard byte for byte and says why; --when
    always adapts them anyway."""
    same_site = tmp_path / "same"
    for r in load_run(run_copy).records("val") + load_run(run_copy).records("test"):
        dest = same_site / Path(r.path).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(r.path, dest)
    code, text = _run_cli(run_copy, same_site, "--out", tmp_path / "kept")
    assert code == 0 and "no shift found" in text, text
    kept = load_run(tmp_path / "kept")
    a = kept.info["adaptation"]
    assert a["applied"] is False and a["method"] == "none" and a["shift"]["shift"] is False and a["shift"]["p_value"] >= 0.01
    assert (tmp_path / "kept" / "model.safetensors").read_bytes() == (run_copy / "model.safetensors").read_bytes()
    guard, reason = load_guard(kept)
    assert guard is not None, reason
    from medclassify.reports.report import _configuration

    assert "not adapted: no shift found" in dict(_configuration(kept))["adapted"]
    forced = adapt_run(run_copy, same_site, tmp_path / "forced", when="always")
    assert forced.record["applied"] is True and forced.record["shift"]["shift"] is False
    assert (tmp_path / "forced" / "model.safetensors").read_bytes() != (run_copy / "model.safetensors").read_bytes()


def test_adapted_run_evaluates_with_the_source_temperature(run_copy, new_site, tmp_path):
    from medclassify.evaluation.evaluate import evaluate

    load_run(run_copy).update(calibration={"temperature": 1.7, "fitted_on": "val", "n": 80})
    out = adapt_run(run_copy, new_site, tmp_path / "adapted", guard="none").run_dir
    metrics = evaluate(out, n_boot=100)
    run = load_run(out)
    assert run.temperature == 1.7 and run.info["calibration"]["fitted_on"] == "val, before adaptation"
    assert metrics["temperature"] == 1.7 and run.info["adaptation"]["guard"] == "none"
    assert (out / "metrics" / "test.json").is_file() and "selective" in metrics
    from medclassify.reports.report import _configuration

    assert "re-estimated without labels" in dict(_configuration(run))["adapted"]


def test_the_estimate_compares_both_models_on_the_site_images(estimable_copy, new_site, tmp_path):
    from medclassify.data.cache import build_cache
    from medclassify.engine import forward_images
    from medclassify.ood.estimate import confidence_threshold, estimated_accuracy

    result = adapt_run(estimable_copy, new_site, tmp_path / "adapted")
    a = result.record
    assert a["shift"]["shift"] is True and a["estimate"]["status"] == "estimated"
    assert a["applied"] is a["estimate"]["gain"] is (a["estimate"]["adapted"] > a["estimate"]["source"])
    # the same figures, recomputed: the source model's validation threshold on both models' probabilities
    run = load_run(estimable_copy)
    prep = run.preprocessing
    val = run.records("val")
    vc = build_cache([r.path for r in val], prep.image_size, prep.resize, prep.channels)
    vp = forward_images(run.build_model(), np.asarray(vc.images[vc.rows([r.path for r in val])]), prep, tta=run.tta,
                        temperature=run.temperature)[0]
    t = confidence_threshold(vp, np.array([run.classes.index(r.label) for r in val]))
    assert a["estimate"]["threshold"] == pytest.approx(t, abs=1e-6) and a["estimate"]["validation_images"] == len(val)
    paths = sorted(str(p) for p in new_site.rglob("*.png"))
    sc = build_cache(paths, prep.image_size, prep.resize, prep.channels)
    site = np.asarray(sc.images[sc.rows(paths)])
    source = estimated_accuracy(forward_images(run.build_model(), site, prep, tta=run.tta, temperature=run.temperature)[0], t)
    assert a["estimate"]["source"] == pytest.approx(source, abs=1e-4)
    if a["applied"]:
        adapted = load_run(result.run_dir).build_model()
        assert a["estimate"]["adapted"] == pytest.approx(
            estimated_accuracy(forward_images(adapted, site, prep, tta=run.tta, temperature=run.temperature)[0], t), abs=1e-4)


def test_a_shift_without_an_estimated_gain_keeps_the_source_weights(estimable_copy, new_site, tmp_path, monkeypatch):
    """The shift check finds the site differs, but the adapted model is not estimated to be more
    accurate on its images (here: a confidence threshold no image reaches, so both estimates are 0):
    the new run holds the source weights and guard, says why, and --when always still adapts."""
    import medclassify.training.adapt as adapt_module

    run_copy = estimable_copy
    monkeypatch.setattr(adapt_module, "confidence_threshold", lambda probs, labels: 1.5)
    code, text = _run_cli_in_process(run_copy, new_site, tmp_path / "kept")
    assert code == 0 and "would not raise the estimated accuracy (0.0% -> 0.0%)" in text, text
    kept = load_run(tmp_path / "kept")
    a = kept.info["adaptation"]
    assert a["applied"] is False and a["shift"]["shift"] is True and a["bn_layers"] == 0
    assert a["estimate"] == {**a["estimate"], "status": "estimated", "source": 0.0, "adapted": 0.0, "gain": False}
    assert a["estimate"]["validation_images"] == len(load_run(run_copy).records("val"))
    assert (tmp_path / "kept" / "model.safetensors").read_bytes() == (run_copy / "model.safetensors").read_bytes()
    assert load_guard(kept)[0] is not None
    from medclassify.reports.report import _configuration

    assert "estimated accuracy on them was not higher" in dict(_configuration(kept))["adapted"]
    forced = adapt_run(run_copy, new_site, tmp_path / "forced", when="always")
    assert forced.record["applied"] is True and "estimate" not in forced.record


def test_without_a_guard_the_estimate_still_decides(estimable_copy, new_site, tmp_path, monkeypatch):
    """No guard: no shift check, so adapt goes on to the estimate, which can still keep the source."""
    import medclassify.training.adapt as adapt_module
    from medclassify.reports.report import _configuration

    load_run(estimable_copy).update(ood=None)
    monkeypatch.setattr(adapt_module, "confidence_threshold", lambda probs, labels: 1.5)
    code, text = _run_cli_in_process(estimable_copy, new_site, tmp_path / "kept")
    assert code == 0 and "No shift check before adapting" in text and "Without a shift check" in text, text
    a = load_run(tmp_path / "kept").info["adaptation"]
    assert a["applied"] is False and a["shift"]["status"] == "unavailable" and a["estimate"]["gain"] is False
    assert "were not checked for a shift" in dict(_configuration(load_run(tmp_path / "kept")))["adapted"]


def _run_cli_in_process(run, images, out) -> tuple[int, str]:
    """The adapt command in this process (so a monkeypatch reaches it), with its printed output."""
    import contextlib
    import io

    from medclassify.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(["adapt", str(run), str(images), "--out", str(out)])
    return code, buf.getvalue()
