"""The guard reads earlier layers too (Lee et al. 2018): the features the engine returns, how the
layered detector combines them, and an older penultimate-only guard that still scores as before."""

import numpy as np
import pytest
import torch

from medclassify.data.images import array_for_model
from medclassify.data.prepare import load_cache
from medclassify.engine import forward_features, guard_layers, logits_and_features
from medclassify.inference.predictor import Predictor
from medclassify.ood import load_guard
from medclassify.ood.detector import Detector, Layered, fit_layered, fit_mahalanobis, load_detector, save_detector
from medclassify.ood.guard import embed, store_guard
from medclassify.reporting import Reporter
from medclassify.run import load_run


def _train_features(run):
    _, f, ok = embed(run, run.records("train"), load_cache(run.records(), run.preprocessing, Reporter(quiet=True)))
    return f, np.array([run.classes.index(r.label) for r in ok])


def test_engine_features_are_the_pooled_last_stage_then_the_penultimate_features():
    from medclassify.models.seed_cnn import SeedCNN

    torch.manual_seed(0)
    model = SeedCNN(3).eval()
    x = torch.randn(4, 1, 32, 32)
    z, f = logits_and_features(model, x)
    with torch.no_grad():
        fmap = model.forward_features(x)
        pen = model.forward_head(fmap, pre_logits=True)
    assert guard_layers(model) == [("features", 256)] and f.shape == (4, 256 + 64)
    torch.testing.assert_close(f[:, :256], fmap.mean((2, 3)))
    torch.testing.assert_close(f[:, 256:], pen)
    torch.testing.assert_close(z, model(x))
    assert not model.features._forward_hooks  # the hooks are gone after the pass


def test_timm_models_add_their_last_feature_stage():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2, in_chans=1).eval()
    assert guard_layers(model) == [("blocks.6", 320)]
    _, f = logits_and_features(model, torch.randn(2, 1, 64, 64))
    assert f.shape == (2, 320 + 1280)


def _features(rng, n, shift_early=0.0, scale_early=1.0):
    """8 'early-layer' columns and 16 'penultimate' columns (two classes apart)."""
    labels = np.arange(n) % 2
    early = rng.normal(shift_early, scale_early, (n, 8))
    pen = rng.normal(0, 1, (n, 16)) + 4.0 * labels[:, None] * np.eye(16)[0]
    return np.concatenate([early, pen], 1).astype(np.float32), labels


def test_layered_detector_flags_images_whose_early_statistics_are_off():
    rng = np.random.default_rng(0)
    train, labels = _features(rng, 600)
    held, _ = _features(rng, 200)
    det, held_scores = fit_layered(train, labels, held, 0.95, [("early", 8)])
    assert [(n, a, b) for n, a, b, _ in det.parts] == [("early", 0, 8), ("penultimate", 8, 24)]
    assert det.threshold == 1.0 and np.mean(held_scores > 1.0) == pytest.approx(0.05, abs=0.011)
    # the early layer's threshold is above every held-out image: it flags none of them
    assert (det.layer_scores(held)["early"] <= det.parts[0][3].threshold).all()
    odd, _ = _features(rng, 100, shift_early=3.0)  # penultimate features in-distribution, early ones not
    penultimate_only = fit_mahalanobis(train[:, 8:], labels)
    penultimate_only.threshold = float(np.quantile(penultimate_only.score(held[:, 8:]), 0.95, method="higher"))
    assert np.mean(~penultimate_only.flags(odd[:, 8:])[1]) < 0.2
    assert np.mean(~det.flags(odd)[1]) > 0.95
    fresh, _ = _features(rng, 400)
    assert np.mean(~det.flags(fresh)[1]) < 0.12


def test_layered_detector_round_trips_through_safetensors(tmp_path):
    rng = np.random.default_rng(1)
    train, labels = _features(rng, 300)
    det, _ = fit_layered(train, labels, train[:50], 0.95, [("early", 8)])
    save_detector(det, tmp_path / "g.safetensors", {"reference": train[:5, 8:]})
    back, extra = load_detector(tmp_path / "g.safetensors")
    assert isinstance(back, Layered) and [p[:3] for p in back.parts] == [p[:3] for p in det.parts]
    np.testing.assert_allclose(back.score(train[:20]), det.score(train[:20]), rtol=1e-6)
    assert extra["reference"].shape == (5, 16)
    with pytest.raises(ValueError, match="do not fit"):
        back.score(train[:3, 8:])


def test_a_guard_flags_an_image_off_in_an_early_layer_only(run_copy):
    """Stored and loaded through the run: the guard combines its layers, and the features that move
    only in the early-layer columns are flagged."""
    run = load_run(run_copy)
    f, labels = _train_features(run)
    rng = np.random.default_rng(0)
    f = f + rng.normal(0, 1e-2, f.shape).astype(np.float32)  # a tiny set: keep the covariance well-posed
    rec = store_guard(run, f, labels, None, 0.95, "mahalanobis", layers=[("features", 256)])
    assert rec["status"] == "fitted" and [x["name"] for x in rec["layers"]] == ["features", "penultimate"]
    guard, reason = load_guard(load_run(run_copy))
    assert guard is not None, reason
    odd = f[:8].copy()
    odd[:, :256] += 10 * f[:, :256].std(0)  # early-layer statistics far off, penultimate features untouched
    per = guard.detector.layer_scores(odd)
    pen = guard.detector.parts[-1][3]
    assert (per["penultimate"] == guard.detector.layer_scores(f[:8])["penultimate"]).all()
    assert not guard.flags(odd)[1].any()
    assert (per["features"] > guard.detector.parts[0][3].threshold).all() and pen.threshold > 0


def test_an_older_penultimate_only_guard_still_scores_as_before(run_copy):
    run = load_run(run_copy)
    f, labels = _train_features(run)
    rec = store_guard(run, f[:, 256:], labels, None, 0.95, "mahalanobis")  # as fitted before the layers
    assert "layers" not in rec and rec["features"] == 64
    guard, _ = load_guard(load_run(run_copy))
    assert isinstance(guard.detector, Detector) and guard.accepts(320) and guard.accepts(64)
    np.testing.assert_allclose(guard.score(f), guard.detector.score(f[:, 256:]), rtol=1e-6)
    p = Predictor(run_copy, backend="torch")
    img = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    pred = p.predict_array(img)
    _, _, feats = forward_features(p.net, p.tensor(array_for_model(img, 32, p.prep.resize, p.prep.channels)[None]))
    assert pred.ood_score == pytest.approx(float(guard.detector.score(feats[:, 256:])[0]), rel=1e-5)
    assert p.describe()["ood"]["layers"] == ["penultimate"]
