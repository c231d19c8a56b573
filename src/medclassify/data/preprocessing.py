"""What turns cached uint8 pixels into the model's input tensor. Stored in every run, and the one
code path used by training, evaluation and prediction."""

from __future__ import annotations

import random
from typing import Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel

from .images import probe


class Preprocessing(BaseModel):
    image_size: int
    resize: Literal["pad", "squash"] = "pad"
    channels: Literal[1, 3] = 1
    mean: list[float]
    std: list[float]
    # "fixed": (x - mean) / std with the values above; "per-image": each image standardised by its
    # own mean and std, which removes scanner-to-scanner brightness and contrast differences;
    # "equalize": each image's histogram equalised (any monotonic change of brightness, contrast or
    # gamma gives the same input), then the fixed mean and std.
    normalize: Literal["fixed", "per-image", "equalize"] = "fixed"

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
        if self.normalize == "equalize":
            x = equalize(x)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        return self.normalise(self.to_tensor(batch))


def equalize(x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Histogram equalisation of each image of a float [0, 1] (N, C, H, W) batch over all its
    channels, as OpenCV's equalizeHist: level v -> (cdf(v) - cdf(darkest)) / (n - cdf(darkest)), so
    the darkest level present (background, padding) stays 0 however much of the image it covers."""
    n = x.shape[0]
    q = (x.clamp(0, 1) * (levels - 1)).round().long().reshape(n, -1)
    hist = torch.zeros(n, levels, dtype=torch.float32, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    cdf = hist.cumsum(1)
    darkest = cdf.gather(1, (hist > 0).float().argmax(1, keepdim=True))
    lut = ((cdf - darkest) / (cdf[:, -1:] - darkest).clamp_min(1)).clamp_min(0)
    return lut.gather(1, q).reshape(x.shape).to(x.dtype).contiguous(memory_format=torch.channels_last)


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
        except Exception:  # any per-file failure (UnreadableImage or other): the cache lists it, the sample goes on
            continue
        if info.gray_content:
            grey += 1
        else:
            colour += 1
    # A couple of colour files among grey X-rays (scanner overlays) do not make the task colour.
    channels = 3 if colour > max(2, 0.02 * (grey + colour)) else 1
    return channels, grey, colour
