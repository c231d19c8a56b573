"""Freezing the first feature stages of a pretrained backbone.

Early stages hold generic edge and texture filters that ImageNet already taught; holding them
fixed regularises fine-tuning on a few thousand images and, because autograd stops at the first
trainable layer, skips the most expensive part of the backward pass (the high-resolution stages)."""

from __future__ import annotations

import torch.nn as nn

from ..errors import ConfigError


def stage_modules(model: nn.Module) -> list[str]:
    """Names of the modules that end each feature stage, shallow to deep (timm's feature_info)."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    entries = info if isinstance(info, list) else getattr(info, "info", [])
    return [e["module"] for e in entries]


def freeze_stages(model: nn.Module, n: int, model_name: str = "model") -> list[nn.Module]:
    """Freeze everything up to the end of the n-th feature stage as timm counts them (the stem is
    always frozen with the first; for a ResNet the stem is the first stage, for an EfficientNet
    blocks.0 is). Returns the frozen modules (keep them in eval mode with `keep_frozen_eval`)."""
    if n <= 0:
        return []
    stages = stage_modules(model)
    if not stages:
        raise ConfigError(f"Model {model_name} does not describe its feature stages, so none can be frozen.",
                          "use --freeze 0 or a timm architecture.")
    if n >= len(stages):
        raise ConfigError(f"Model {model_name} has {len(stages)} feature stages; --freeze {n} would freeze all of them.",
                          f"use --freeze between 0 and {len(stages) - 1}.")
    target = stages[n - 1]
    names = [name for name, _ in model.named_modules()]
    inside = [i for i, name in enumerate(names) if name == target or name.startswith(target + ".")]
    ancestors = {name for name in names if target.startswith(name + ".") or name == ""}
    frozen = []
    modules = dict(model.named_modules())
    for name in names[: max(inside) + 1]:
        if name in ancestors:
            continue
        module = modules[name]
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
        frozen.append(module)
    return frozen


def keep_frozen_eval(frozen: list[nn.Module]) -> None:
    """After model.train(): frozen batch norms keep their ImageNet running statistics."""
    for m in frozen:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
