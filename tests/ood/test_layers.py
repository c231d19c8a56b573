"""The guard reads earlier layers too (Lee et al. 2018): the features the engine returns, how the
layered detector combines them, and an older penultimate-only guard that still scores as before."""

import numpy as np
import pytest
import torch

from medclassify.data.images import array_for_model
from medclassify.data.prepare import load_cache
from medclassify.engine import GuardLayer, forward_features, guard_layers, logits_and_features, pooled
from medclassify.inference.predictor import Predictor
from medclassify.ood import load_guard
from medclassify.ood.detector import Detector, Layered, fit_layered, fit_mahalanobis, load_detector, save_detector
from medclassify.ood.guard import embed, store_guard
from medclassify.reporting import Reporter
from medclassify.run import load_run


def _train_features(run):
    _, f, ok = embed(run, run.records("train"), load_cache(run.records(), run.preprocessing, Reporter(quiet=True)))
    return f, np.array([run.classes.index(r.label) for r in ok])


def test_engine_features_are_the_spread_and_average_of_earlier_maps_then_the_penultimate_features():
    from medclassify.models.seed_cnn import SeedCNN

    torch.manual_seed(0)
    model = SeedCNN(3).eval()
    x = torch.randn(4, 1, 32, 32)
    z, f = logits_and_features(model, x)
    with torch.no_grad():
        quarter = model.features[:8](x)  # after the second max-pool: 8x8 of 32x32
        fmap = model.forward_features(x)
        pen = model.forward_head(fmap, pre_logits=True)
    assert guard_layers(model) == [GuardLayer("features.7", 64, "std"), GuardLayer("features", 256)]
    assert [g.name for g in guard_layers(model)] == ["features.7:std", "features"]
    assert quarter.shape[2:] == (8, 8) and f.shape == (4, 64 + 256 + 64)
    torch.testing.assert_close(f[:, :64], quarter.flatten(2).std(2, unbiased=False))
    torch.testing.assert_close(f[:, 64:320], fmap.mean((2, 3)))
    torch.testing.assert_close(f[:, 320:], pen)
    torch.testing.assert_close(z, model(x))
    assert not model.features._forward_hooks and not model.features[7]._forward_hooks  # the hooks are gone after the pass


def test_timm_models_add_the_spread_at_quarter_resolution_and_their_last_feature_stage():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2, in_chans=1).eval()
    assert guard_layers(model) == [GuardLayer("blocks.1", 24, "std"), GuardLayer("blocks.6", 320, "mean")]
    _, f = logits_and_features(model, torch.randn(2, 1, 64, 64))
    assert f.shape == (2, 24 + 320 + 1280)


def test_pooling_is_the_spatial_mean_or_standard_deviation():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) ** 1.5
    torch.testing.assert_close(pooled(x, "mean"), x.mean((2, 3)))
    torch.testing.assert_close(pooled(x, "std"), x.flatten(2).std(2, unbiased=False))
    assert (pooled(torch.ones(1, 2, 3, 3), "std") == 0).all()
    with pytest.raises(ValueError, match="pooling"):
        pooled(x, "max")


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
    """Stored and loaded through the run: the guard combines its layers, and features that move only
    in one earlier layer's columns (the spread, scored by the nearest training image, or the
    averages, scored by Mahalanobis) are flagged."""
    run = load_run(run_copy)
    f, labels = _train_features(run)
    rng = np.random.default_rng(0)
    f = f + rng.normal(0, 1e-2, f.shape).astype(np.float32)  # a tiny set: keep the covariance well-posed
    rec = store_guard(run, f, labels, None, 0.95, "mahalanobis", layers=[("features.7", 64, "std"), ("features", 256)])
    assert rec["status"] == "fitted"
    assert [(x["name"], x["method"]) for x in rec["layers"]] == [
        ("features.7:std", "knn"), ("features", "mahalanobis"), ("penultimate", "mahalanobis")]
    guard, reason = load_guard(load_run(run_copy))
    assert guard is not None, reason
    spread, average, pen = (det for *_, det in guard.detector.parts)
    assert spread.method == "knn" and spread.k == 1 and spread.tensors["bank"].shape[1] == 64
    for cols, name, det in ((slice(0, 64), "features.7:std", spread), (slice(64, 320), "features", average)):
        odd = f[:8].copy()
        odd[:, cols] = rng.permutation(odd[:, cols].T).T + 10 * f[:, cols].std(0)  # this layer far off, the rest untouched
        per = guard.detector.layer_scores(odd)
        assert all((per[other] == guard.detector.layer_scores(f[:8])[other]).all() for other in per if other != name)
        assert not guard.flags(odd)[1].any()
        assert (per[name] > det.threshold).all() and pen.threshold > 0


def test_an_older_guard_reads_its_own_columns_of_wider_features(run_copy):
    """Guards fitted before a layer was added (the penultimate features alone, or the last stage and the
    penultimate features) score the last columns of today's features as they did their own."""
    run = load_run(run_copy)
    f, labels = _train_features(run)
    assert f.shape[1] == 384
    rec = store_guard(run, f[:, 64:], labels, None, 0.95, "mahalanobis", layers=[("features", 256)])
    guard, _ = load_guard(load_run(run_copy))
    assert rec["features"] == 320 and guard.accepts(384) and not guard.accepts(64)
    np.testing.assert_allclose(guard.score(f), guard.detector.score(f[:, 64:]), rtol=1e-6)

    rec = store_guard(run, f[:, 320:], labels, None, 0.95, "mahalanobis")  # as fitted before the layers
    assert "layers" not in rec and rec["features"] == 64
    guard, _ = load_guard(load_run(run_copy))
    assert isinstance(guard.detector, Detector) and guard.accepts(384) and guard.accepts(64)
    np.testing.assert_allclose(guard.score(f), guard.detector.score(f[:, 320:]), rtol=1e-6)
    p = Predictor(run_copy, backend="torch")
    img = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    pred = p.predict_array(img)
    _, _, feats = forward_features(p.net, p.tensor(array_for_model(img, 32, p.prep.resize, p.prep.channels)[None]))
    assert pred.ood_score == pytest.approx(float(guard.detector.score(feats[:, 320:])[0]), rel=1e-5)
    assert p.describe()["ood"]["layers"] == ["penultimate"]


def test_a_layered_guard_with_a_nearest_neighbour_layer_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    train, labels = _features(rng, 300)
    held = train[:60] + rng.normal(0, 0.05, (60, train.shape[1])).astype(np.float32)
    det, held_scores = fit_layered(train, labels, held, 0.95, [("early:std", 8, "knn")])
    near = det.parts[0][3]
    assert near.method == "knn" and near.k == 1 and det.parts[1][3].method == "mahalanobis"
    # twice the distance within which 95% of held-out images find their nearest training image
    assert near.threshold == pytest.approx(2 * np.quantile(near.score(held[:, :8]), 0.95)) and near.threshold > 1e-5
    save_detector(det, tmp_path / "g.safetensors")
    back, _ = load_detector(tmp_path / "g.safetensors")
    assert [(n, a, b, d.method, d.k) for n, a, b, d in back.parts] == [(n, a, b, d.method, d.k) for n, a, b, d in det.parts]
    np.testing.assert_allclose(back.score(train[:20]), det.score(train[:20]), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown OOD method"):
        fit_layered(train, labels, train[:60], 0.95, [("early", 8, "mean")])
