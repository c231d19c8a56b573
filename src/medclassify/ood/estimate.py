"""Accuracy on unlabelled images, estimated from the model's confidence (ATC: Average Thresholded
Confidence, Garg et al. 2022): on labelled validation images, find the confidence threshold above
which the share of images equals the validation accuracy; on new images, the estimated accuracy is
the share whose confidence clears it.

`adapt` uses it to compare the source and the adapted model on the new site's own images with one
threshold, the source model's: adaptation keeps the classifier and the temperature, so the same
confidence should mean the same chance of being right. Measured on 18 official test halves of the
three shared datasets (benchmarks/adapt_estimate.py, seeds 0-2): this rule adapted 9 times and never
where AdaBN lowered accuracy; the adapted model's own validation threshold (plain ATC) adapted 5
times and missed 6 gains, since the adapted statistics do not suit the source's validation images."""

from __future__ import annotations

import numpy as np


def confidence(probs: np.ndarray) -> np.ndarray:
    return np.asarray(probs, dtype=np.float64).max(1)


def confidence_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The confidence below which the share of validation images is the validation error rate."""
    probs = np.asarray(probs)
    if len(probs) == 0 or len(probs) != len(labels):
        raise ValueError("the threshold needs one label per validation image, and at least one image")
    error = float(np.mean(probs.argmax(1) != np.asarray(labels)))
    return float(np.quantile(confidence(probs), error))


def estimated_accuracy(probs: np.ndarray, threshold: float) -> float:
    """The share of images whose confidence reaches `threshold`."""
    return float(np.mean(confidence(probs) >= threshold)) if len(probs) else float("nan")
