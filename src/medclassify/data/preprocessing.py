"""What turns cached uint8 pixels into the model's input tensor. Stored in every run, and the one
code path used by training, evaluation and prediction."""

from __future__ import annotations

import random
from typing import Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel

from .images import UnreadableImage, probe


class Preprocessing(BaseModel):
    image_size: int
    resize: Literal["pad", "squash"] = "pad"
    channels: Literal[1, 3] = 1
    mean: list[float]
    std: list[float]
    # "fixed": (x - mean) / std with the values above; "per-image": each image standardised by its
    # own mean and std, which removes scanner-to-scanner brightness and contrast differences.
    normalize: Literal["fixed", "per-image"] = "fixed"

    def to_tensor(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [0, 1], channels_last memory."""
        if isinstance(batch, np.ndarray):
            batch = np.ascontiguousarray(batch)
            if not batch.flags.writeable:  # Pillow and memmap views; torch warns on read-only memory
                batch = batch.copy()
            t = torch.from_numpy(batch)
        else:
            t = batch
        return t.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float [0, 1] (N, C, H, W) -> model input."""
        if self.normalize == "per-image":
            mu = x.mean(dim=(1, 2, 3), keepdim=True)
            sd = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
            return (x - mu) / sd
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        return self.normalise(self.to_tensor(batch))


def channel_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[list[float], list[float]]:
    """A 1-channel model uses the mean of the RGB statistics."""
    if channels == 1:
        return [float(np.mean(mean))], [float(np.mean(std))]
    return [float(m) for m in mean], [float(s) for s in std]


def detect_channels(paths: Sequence[str], sample: int = 200, seed: int = 0) -> tuple[int, int, int]:
    """1 when every sampled image is single-channel content (including grey stored as RGB), else 3.
    Returns (channels, grey_count, colour_count) over the sample."""
    paths = list(paths)
    rng = random.Random(seed)
    picked = paths if len(paths) <= sample else rng.sample(paths, sample)
    grey = colour = 0
    for p in picked:
        try:
            info = probe(p, max_side=128)
        except UnreadableImage:
            continue
        if info.gray_content:
            grey += 1
        else:
            colour += 1
    # A couple of colour files among grey X-rays (scanner overlays) do not make the task colour.
    channels = 3 if colour > max(2, 0.02 * (grey + colour)) else 1
    return channels, grey, colour
