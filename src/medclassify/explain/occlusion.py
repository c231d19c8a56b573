"""Occlusion sensitivity (Zeiler & Fergus 2014): grey out one square patch at a time and record how
much the target class's probability drops; overlapping patches are averaged."""

from __future__ import annotations

import numpy as np

from .base import Explainer, Explanation, normalise_map


class Occlusion(Explainer):
    name = "occlusion"

    def __init__(self, model, prep, layer=None, patch_fraction: float = 1 / 7, stride_fraction: float = 0.5):
        super().__init__(model, prep, layer)
        self.patch_fraction = patch_fraction
        self.stride_fraction = stride_fraction

    def explain(self, image: np.ndarray, target: int | None = None) -> Explanation:
        h, w = image.shape[:2]
        patch = max(2, int(round(min(h, w) * self.patch_fraction)))
        stride = max(1, int(round(patch * self.stride_fraction)))
        ys = list(range(0, max(h - patch, 0) + 1, stride))
        xs = list(range(0, max(w - patch, 0) + 1, stride))
        if ys[-1] != h - patch:
            ys.append(h - patch)
        if xs[-1] != w - patch:
            xs.append(w - patch)
        fill = np.round(image.reshape(-1, image.shape[2]).mean(0)).astype(np.uint8)
        boxes = [(y, x) for y in ys for x in xs]
        batch = np.repeat(image[None], len(boxes) + 1, axis=0)
        for i, (y, x) in enumerate(boxes, start=1):
            batch[i, y : y + patch, x : x + patch] = fill
        probs = self.predict(batch)
        target = int(probs[0].argmax()) if target is None else int(target)
        drop = probs[0, target] - probs[1:, target]
        heat = np.zeros((h, w), np.float64)
        hits = np.zeros((h, w), np.float64)
        for d, (y, x) in zip(drop, boxes):
            heat[y : y + patch, x : x + patch] += d
            hits[y : y + patch, x : x + patch] += 1
        heat = np.clip(heat / np.maximum(hits, 1), 0, None)
        return Explanation(self.name, image, target, probs[0], normalise_map(heat))
