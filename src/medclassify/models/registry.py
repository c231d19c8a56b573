"""One registry from model names to builders, after timm's register_model/create_model.

Model modules register themselves with @register_model and models/__init__ imports them (the
registry never imports its builders). Names registered here take precedence; any other name is passed to timm. Every builder takes
(num_classes, in_chans, pretrained) where pretrained is "none", "imagenet" (offline weights
shipped as packages) or "hub" (timm's online hub).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..errors import ConfigError
from .weights import load_local_weights


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    offline_pretrained: bool  # ImageNet weights available without a network
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    min_size: int = 32


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, description: str, offline_pretrained: bool = False, **kw):
    def deco(fn: Callable[..., nn.Module]):
        _REGISTRY[name] = ModelSpec(name, fn, description, offline_pretrained, **kw)
        return fn

    return deco


def list_models(include_timm: bool = False) -> list[str]:
    names = sorted(_REGISTRY)
    if include_timm:
        import timm

        names += [n for n in timm.list_models() if n not in _REGISTRY]
    return names


def get_spec(name: str) -> ModelSpec:
    if name in _REGISTRY:
        return _REGISTRY[name]
    import timm

    if name in timm.list_models():
        return ModelSpec(name, _timm_builder(name), f"timm {name}", offline_pretrained=False, **_timm_norm(name))
    close = difflib.get_close_matches(name, list_models() + timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "run `medclassify models` to list them."
    raise ConfigError(f"Unknown model {name!r}.", hint)


def _timm_norm(name: str) -> dict:
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
        return {"mean": tuple(cfg.mean), "std": tuple(cfg.std)}
    except Exception:
        return {}


def _timm_builder(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_chans: int, pretrained: str = "none", drop_rate: float = 0.0) -> nn.Module:
        import timm

        if pretrained == "imagenet":
            raise ConfigError(
                f"No offline ImageNet weights ship for {name!r}.",
                "use efficientnet_lite0/1/2, pass --weights PATH, or --pretrained hub when online.",
            )
        if pretrained == "hub":
            return hub_model(name, num_classes, in_chans, drop_rate)
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)

    return build


def hub_model(timm_name: str, num_classes: int, in_chans: int, drop_rate: float = 0.0) -> nn.Module:
    import timm

    try:
        return timm.create_model(timm_name, pretrained=True, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    except Exception as e:
        raise ConfigError(
            f"Could not download pretrained weights for {timm_name!r} from the hub ({type(e).__name__}).",
            "this machine may be offline: use --pretrained imagenet (efficientnet_lite*), --weights PATH, or --pretrained none.",
        ) from None


def init_classifier(model: nn.Module) -> None:
    """Small initial logits for the new head. timm's Google-style init draws a Linear head from
    U(+-1/sqrt(out_features)): with 2 classes that is +-0.7 per weight over 1280 features, logits near
    +-15 and a first loss near 7, which wrecks pretrained features before training settles."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: str = "none",
    weights: str | None = None,
    drop_rate: float = 0.0,
) -> nn.Module:
    """Build a model by name; `weights` is a local state-dict file loaded on top (backbone keys that
    match by name and shape; a classifier of another size is left freshly initialised)."""
    if pretrained not in ("none", "imagenet", "hub"):
        raise ConfigError(f"Unknown pretrained source {pretrained!r}.", "use none, imagenet or hub.")
    spec = get_spec(name)
    model = spec.builder(num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, drop_rate=drop_rate)
    init_classifier(model)
    if weights:
        load_local_weights(model, weights)
    return model
