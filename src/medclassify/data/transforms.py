"""Augmentation presets applied on the fly to batches of cached images (float tensors in [0, 1],
(N, C, H, W)), with independent random parameters per image. Named presets after torchvision's
references/classification/presets.py."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..presets import PRESETS, AugmentPreset, get_preset  # noqa: F401  (the table lives in a base module: config validates names)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device) * (hi - lo) + lo


def augment(x: torch.Tensor, preset: AugmentPreset, g: torch.Generator) -> torch.Tensor:
    """Apply `preset` to a float batch in [0, 1]; returns a new tensor, clamped to [0, 1]."""
    if preset.name == "none":
        return x
    n = x.shape[0]
    geometric = preset.rotate_deg or preset.scale != (1.0, 1.0) or preset.translate or preset.hflip
    if geometric:
        angle = _uniform(n, -preset.rotate_deg, preset.rotate_deg, g) * (math.pi / 180)
        s = _uniform(n, *preset.scale, g)
        flip = torch.where(torch.rand(n, generator=g, device=g.device) < preset.hflip, -1.0, 1.0)
        tx = _uniform(n, -preset.translate, preset.translate, g) * 2
        ty = _uniform(n, -preset.translate, preset.translate, g) * 2
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x.contiguous(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if preset.contrast or preset.brightness:
        c = _uniform(n, 1 - preset.contrast, 1 + preset.contrast, g).view(n, 1, 1, 1)
        b = _uniform(n, -preset.brightness, preset.brightness, g).view(n, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean + b
    if preset.gamma:
        gam = torch.pow(2.0, _uniform(n, -preset.gamma, preset.gamma, g)).view(n, 1, 1, 1)
        x = x.clamp(1e-4, 1).pow(gam)
    if preset.noise_std:
        x = x + torch.randn(x.shape, generator=g, device=g.device) * preset.noise_std
    return x.clamp_(0, 1).contiguous(memory_format=torch.channels_last)
