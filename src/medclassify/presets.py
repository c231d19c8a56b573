"""The named augmentation presets (after torchvision's references/classification/presets.py): a
table of frozen dataclasses, in a base module so config can validate a preset's name; the
augmentation itself is data/transforms.py."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class AugmentPreset:
    name: str
    description: str
    hflip: float = 0.0  # probability
    rotate_deg: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0  # fraction of the side
    brightness: float = 0.0  # +- additive
    contrast: float = 0.0  # +- multiplicative around the image mean
    gamma: float = 0.0  # +- log2 range of the gamma exponent
    noise_std: float = 0.0


PRESETS: dict[str, AugmentPreset] = {
    p.name: p
    for p in (
        AugmentPreset("none", "no augmentation"),
        AugmentPreset("light", "horizontal flip and small shifts", hflip=0.5, translate=0.05),
        AugmentPreset(
            "medical",
            "flip, rotate +-10 deg, scale 0.9-1.1, brightness/contrast +-20%, Gaussian noise",
            hflip=0.5, rotate_deg=10, scale=(0.9, 1.1), translate=0.05, brightness=0.2, contrast=0.2, noise_std=0.02,
        ),
        AugmentPreset(
            "robust",
            "medical plus gamma and stronger contrast changes, for test sets from other scanners",
            hflip=0.5, rotate_deg=10, scale=(0.85, 1.15), translate=0.06, brightness=0.25, contrast=0.35, gamma=0.6,
            noise_std=0.03,
        ),
    )
}


def get_preset(name: str) -> AugmentPreset:
    if name not in PRESETS:
        raise ConfigError(f"Unknown augmentation preset {name!r}.", f"use one of: {', '.join(PRESETS)}.")
    return PRESETS[name]
