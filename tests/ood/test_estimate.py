"""The accuracy estimate from confidence (ATC) that adapt uses to keep or drop an adaptation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclassify.ood.estimate import confidence_threshold, estimated_accuracy


def _probs(rng, n, k=3, sharp=2.0):
    z = rng.normal(0, sharp, (n, k))
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(20, 400))
def test_on_the_validation_images_themselves_the_estimate_is_their_accuracy(seed, n):
    rng = np.random.default_rng(seed)
    probs = _probs(rng, n)
    labels = np.where(rng.uniform(size=n) < 0.7, probs.argmax(1), rng.integers(0, 3, n))
    t = confidence_threshold(probs, labels)
    accuracy = float(np.mean(probs.argmax(1) == labels))
    # continuous confidences: the share at or above the threshold is the accuracy, up to one image
    assert abs(estimated_accuracy(probs, t) - accuracy) <= 1 / n + 1e-12


def test_less_confident_images_get_a_lower_estimate():
    rng = np.random.default_rng(0)
    val = _probs(rng, 300)
    labels = val.argmax(1)
    labels[:60] = (labels[:60] + 1) % 3  # 80% right
    t = confidence_threshold(val, labels)
    assert estimated_accuracy(_probs(rng, 300, sharp=0.5), t) < estimated_accuracy(_probs(rng, 300, sharp=2.0), t)
    assert estimated_accuracy(val, t) == pytest.approx(0.8, abs=1 / 300)
    assert confidence_threshold(val, val.argmax(1)) == pytest.approx(val.max(1).min())  # all right: the least confident


def test_bad_arguments():
    with pytest.raises(ValueError, match="one label per"):
        confidence_threshold(np.ones((3, 2)) / 2, np.zeros(2))
    assert np.isnan(estimated_accuracy(np.zeros((0, 2)), 0.5))
