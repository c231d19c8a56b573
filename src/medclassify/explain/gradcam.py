"""Grad-CAM (Selvaraju et al. 2017): the target layer's feature maps weighted by the spatial mean of
the class score's gradient, rectified and upsampled to the image."""

from __future__ import annotations

import numpy as np
import torch

from .base import Explainer, Explanation, class_score, forward_hooks, normalise_map, upsample
from .targets import find_target_layer, named_layer


class GradCAM(Explainer):
    name = "gradcam"

    def target_module(self, x: torch.Tensor) -> torch.nn.Module:
        if self.layer:
            return named_layer(self.model, self.layer)
        if not hasattr(self, "_auto_layer") or self._auto_layer[0] != tuple(x.shape[1:]):
            self._auto_layer = (tuple(x.shape[1:]), find_target_layer(self.model, x)[1])
        return self._auto_layer[1]

    @staticmethod
    def channel_weights(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3), keepdim=True)

    def explain(self, image: np.ndarray, target: int | None = None) -> Explanation:
        probs = self.predict(image)[0]  # as predict gives them (TTA, temperature); before the hooks
        x = self.tensor(image)
        module = self.target_module(x)
        captured: list[torch.Tensor] = []
        with forward_hooks([module], lambda _m, _i, out: captured.append(out)), torch.enable_grad():
            logits = self.model(x).float()
            target = int(probs.argmax()) if target is None else int(target)
            activations = captured[-1]
            (grads,) = torch.autograd.grad(class_score(logits, target).sum(), activations)
        with torch.no_grad():
            a, g = activations.detach().float(), grads.float()
            cam = (self.channel_weights(a, g) * a).sum(1, keepdim=True).clamp_min(0)
            cam = upsample(cam, image.shape[:2])[0, 0].numpy()
        return Explanation(self.name, image, target, probs, normalise_map(cam))
