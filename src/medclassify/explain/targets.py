"""Automatic choice of the layer Grad-CAM looks at: the last convolutional feature map before the
global pooling, for seed_cnn and timm CNNs alike. It is found by tracing one forward pass and taking
the last module with a spatial (N, C, H, W) output; a trailing pooling layer is skipped, because the
map before it has twice the resolution and the same information (seed_cnn's last max-pool)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError

_POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def spatial_modules(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module, tuple]]:
    """Leaf modules in execution order with the shape of their 4-D outputs (spatial > 1x1)."""
    seen: list[tuple[str, nn.Module, tuple]] = []
    names = {m: n for n, m in model.named_modules()}
    handles = []

    def hook(module, _inp, out):
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1:
            seen.append((names[module], module, tuple(out.shape)))

    try:
        for m in model.modules():
            if not list(m.children()):
                handles.append(m.register_forward_hook(hook))
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return seen


def find_target_layer(model: nn.Module, example: torch.Tensor) -> tuple[str, nn.Module]:
    seen = spatial_modules(model, example)
    if not seen:
        raise ConfigError("This model has no convolutional feature map to explain (not a CNN).",
                          "use --method lime or --method occlusion, which work with any model.")
    i = len(seen) - 1
    while i > 0 and isinstance(seen[i][1], _POOLING):
        i -= 1
    return seen[i][0], seen[i][1]


def named_layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"The model has no layer {name!r}.",
                          "leave --layer out for the automatic choice, or pass a name from model.named_modules().") from None
