"""Grad-CAM++ (Chattopadhyay et al. 2018): like Grad-CAM, but each location's positive gradient is
weighted by alpha = g^2 / (2 g^2 + sum(A) g^3), which credits several instances of a class better."""

from __future__ import annotations

import torch

from .gradcam import GradCAM


class GradCAMPlusPlus(GradCAM):
    name = "gradcam++"

    @staticmethod
    def channel_weights(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        g2, g3 = grads.pow(2), grads.pow(3)
        sum_a = activations.sum(dim=(2, 3), keepdim=True)
        denom = 2 * g2 + sum_a * g3
        alpha = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g2))
        return (alpha * grads.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
