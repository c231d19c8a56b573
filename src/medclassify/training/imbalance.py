"""Class-imbalance handling. Full inverse-frequency weights collapse a pretrained model onto rare
classes (shared/notes/baselines.md: 9% accuracy on alzheimer_mri), so the default is tempered."""

from __future__ import annotations

import numpy as np
import torch

SAMPLER_CAP = 5.0  # the balanced sampler oversamples a class at most 5x its natural frequency


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
    if mode not in ("weights", "sqrt-weights"):
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    counts[counts == 0] = 1
    w = counts.sum() / (num_classes * counts)
    if mode == "sqrt-weights":
        w = np.sqrt(w)
    w = w / (w * counts).sum() * counts.sum()  # keep the average loss scale of an unweighted loss
    return torch.tensor(w, dtype=torch.float32)


def epoch_order(labels: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Indices into the training set for one epoch: a permutation, or a class-balanced draw with
    replacement (capped oversampling) for mode='sampler'."""
    n = len(labels)
    if mode != "sampler":
        return rng.permutation(n)
    counts = np.bincount(labels).astype(np.float64)
    natural = counts / n
    target = np.where(counts > 0, 1.0 / np.count_nonzero(counts), 0.0)
    target = np.minimum(target, natural * SAMPLER_CAP)
    target /= target.sum()
    per_sample = target[labels] / counts[labels]
    return rng.choice(n, size=n, replace=True, p=per_sample / per_sample.sum())
