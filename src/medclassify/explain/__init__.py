"""Explanations of a trained run's predictions: Grad-CAM, Grad-CAM++, LIME, occlusion sensitivity
and intermediate activations, one module each on the shared base in base.py."""

from __future__ import annotations

from ..errors import ConfigError
from .activations import Activations
from .base import Explainer, Explanation
from .gradcam import GradCAM
from .gradcam_plus_plus import GradCAMPlusPlus
from .lime import Lime
from .occlusion import Occlusion

METHODS: dict[str, type[Explainer]] = {cls.name: cls for cls in (GradCAM, GradCAMPlusPlus, Lime, Occlusion, Activations)}


def get_method(name: str) -> type[Explainer]:
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ConfigError(f"Unknown explanation method {name!r}.", f"use one of: {', '.join(METHODS)}.") from None


__all__ = ["METHODS", "Explainer", "Explanation", "get_method", "GradCAM", "GradCAMPlusPlus", "Lime", "Occlusion",
           "Activations"]
