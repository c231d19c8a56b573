import json

import numpy as np
import pytest

from medclassify.evaluation.calibration import (expected_calibration_error, fit_temperature, reliability,
                                                save_temperature, softmax)


def _overconfident(n=2000, seed=0):
    """Logits drawn from a well-calibrated model with temperature 1, then multiplied by 3."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 3))
    p = softmax(logits)
    y = np.array([rng.choice(3, p=row) for row in p])
    return 3 * logits, y


def test_temperature_recovers_the_overconfidence():
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(y, softmax(logits))
    after = expected_calibration_error(y, softmax(logits, t))
    assert after < before / 2


def test_reliability_bins_count_every_image_and_ece_is_zero_when_confidence_matches():
    y = np.array([0] * 8 + [1] * 2)
    probs = np.tile([0.8, 0.2], (10, 1))  # 80% sure of class 0, right 8 times out of 10
    rel = reliability(y, probs, n_bins=10)
    assert sum(rel["count"]) == 10
    assert rel["ece"] == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(y, np.tile([0.99, 0.01], (10, 1))) == pytest.approx(0.19)


def test_temperature_is_stored_atomically_and_used_by_predict(run_copy):
    from medclassify.inference.predictor import Predictor
    from medclassify.run import load_run

    run = load_run(run_copy)
    before = sorted(p.name for p in run_copy.iterdir())
    save_temperature(run, 2.5, "val", 100, 0.2, 0.05)
    info = json.loads((run_copy / "run.json").read_text())
    assert info["calibration"]["temperature"] == 2.5
    assert sorted(p.name for p in run_copy.iterdir()) == before  # no temporary left, whatever its name
    assert Predictor(run_copy).temperature == 2.5
