"""Loading a local weights file: a state dict (.pt/.pth/.bin, loaded weights_only) or safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ConfigError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"Weights file {path} does not exist.", "check the path given to --weights.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"Cannot read weights file {path} ({type(e).__name__}).",
            "pass a PyTorch state dict (.pt/.pth, saved with torch.save(model.state_dict())) or a .safetensors file.",
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"{path} is not a state dict of tensors.", "save it with torch.save(model.state_dict(), PATH).")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_local_weights(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load tensors whose names and shapes match; refuse a file that matches almost nothing
    (the wrong architecture), since silently training from scratch would be worse."""
    sd = read_state_dict(path)
    own = model.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if len(usable) < 0.5 * len(own):
        raise ConfigError(
            f"Weights file {path} matches only {len(usable)} of the model's {len(own)} tensors.",
            "it was saved from another architecture: pick the matching --model.",
        )
    model.load_state_dict(usable, strict=False)
    return {"loaded": sorted(usable), "skipped": sorted(set(own) - set(usable))}
