"""Intermediate activations, as the VGG16 notebook showed them: for each stage of the network, its
most active feature maps for this image (drawn by overlay.activations_figure)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .base import Explainer, Explanation, forward_hooks, normalise_map


def blocks_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """seed_cnn: each ReLU of `features` (one per conv block). timm CNNs: the stem and each stage of
    `blocks`/`stages`/`layer1..4`. Otherwise: every top-level child."""
    if hasattr(model, "features") and isinstance(model.features, nn.Sequential):
        return [(f"features.{n}", m) for n, m in model.features.named_children() if isinstance(m, nn.ReLU)]
    for container in ("blocks", "stages"):
        seq = getattr(model, container, None)
        if isinstance(seq, nn.Sequential):
            stem = [(n, getattr(model, n)) for n in ("bn1", "stem") if isinstance(getattr(model, n, None), nn.Module)]
            return stem[:1] + [(f"{container}.{n}", m) for n, m in seq.named_children()]
    layers = [(n, getattr(model, n)) for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(model, n)]
    return layers or list(model.named_children())


def stage_labels(names: list[str]) -> list[str]:
    """Readable names of the captured blocks, in network order: 'Stem', then 'Stage 1 of N', ...
    (seed_cnn's conv blocks count as stages)."""
    stages = [n for n in names if n not in ("bn1", "stem")]
    out, k = [], 0
    for n in names:
        if n in ("bn1", "stem"):
            out.append("Stem")
        else:
            k += 1
            out.append(f"Stage {k} of {len(stages)}")
    return out


class Activations(Explainer):
    name = "activations"

    def __init__(self, model, prep, layer=None, maps_per_block: int = 16):
        super().__init__(model, prep, layer)
        self.maps_per_block = maps_per_block

    @torch.no_grad()
    def explain(self, image: np.ndarray, target: int | None = None) -> Explanation:
        blocks = blocks_of(self.model)
        names = {id(m): n for n, m in blocks}
        captured: list[tuple[str, np.ndarray]] = []

        def keep(module, _inp, out):
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                captured.append((names[id(module)], out[0].float().clone().numpy()))

        with forward_hooks([m for _, m in blocks], keep):
            self.model(self.tensor(image))
        probs = self.predict(image)[0]  # as predict gives them (TTA, temperature)
        target = int(probs.argmax()) if target is None else int(target)
        panels = []
        labels = stage_labels([name for name, _ in captured])
        for label, (name, fmap) in zip(labels, captured):
            strongest = np.argsort(fmap.mean((1, 2)))[::-1][: self.maps_per_block]
            maps = np.stack([normalise_map(fmap[i]) for i in strongest])
            # (label, (n, h, w) maps in [0, 1]); the module path stays for whoever passes --layer
            panels.append((f"{label}: {fmap.shape[0]} maps, {fmap.shape[1]}×{fmap.shape[2]} ({name})", maps))
        return Explanation(self.name, image, target, probs, None, panels)
