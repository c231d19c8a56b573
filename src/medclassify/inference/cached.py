"""Batched forward passes over rows of a decoded-image cache (validation, evaluation)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn as nn

from ..data.preprocessing import Preprocessing


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def predict_rows(
    model: nn.Module,
    images: np.ndarray,
    rows: np.ndarray,
    prep: Preprocessing,
    batch_size: int = 64,
    device: torch.device = torch.device("cpu"),
    amp_dtype: torch.dtype | None = None,
    tta: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (probabilities, logits) as float32 arrays of shape (len(rows), num_classes). With
    `tta`, the logits are the mean of the image's and its horizontal mirror's (as the Predictor's)."""
    model.eval()
    probs, logits = [], []
    order = np.argsort(rows, kind="stable")  # sequential memmap reads, results put back in order
    for start in range(0, len(rows), batch_size):
        idx = order[start : start + batch_size]
        x = prep(images[rows[idx]]).to(device, non_blocking=True)
        with autocast_context(device, amp_dtype):
            out = model(x).float()
            if tta:
                out = (out + model(x.flip(3)).float()) / 2
        logits.append(out.cpu())
        probs.append(out.softmax(1).cpu())
    if not rows.size:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    p = torch.cat(probs).numpy()
    lg = torch.cat(logits).numpy()
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    return p[inv], lg[inv]
