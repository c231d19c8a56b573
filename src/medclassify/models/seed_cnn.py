"""The Sequential CNN of the Keras notebooks medclassify replaces, as a baseline:
Conv 32-64-64-128-256 (3x3, ReLU, 2x2 max-pool), Flatten, Dense 128, Dense 64, output, dropout.

The notebooks flatten the last feature map; that ties the model to one input size, so the
flatten is preceded by an adaptive pool to 4x4, which is the same at 128 px and lets any size >= 32 work."""

from __future__ import annotations

import torch.nn as nn

from .registry import register_model
from ..errors import ConfigError


class SeedCNN(nn.Module):
    def __init__(self, num_classes: int, in_chans: int = 1, widths=(32, 64, 64, 128, 256), drop_rate: float = 0.3):
        super().__init__()
        layers, c = [], in_chans
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(drop_rate),
            nn.Linear(c * 16, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(128, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )
        self.num_classes = num_classes
        # engine.guard_layers: the spread of the quarter-resolution map (after the second pool), the
        # average of the last one
        self.guard_layers = [("features.7", widths[1], "std"), ("features", c)]

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x, pre_logits: bool = False):
        """timm's interface: `pre_logits` gives the 64 features the output layer reads."""
        x = self.head[:-1](self.pool(x))
        return x if pre_logits else self.head[-1](x)

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model("seed_cnn", "Keras-notebook Sequential CNN (Conv 32-64-64-128-256, Dense 128-64)",
                mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
def seed_cnn(num_classes: int, in_chans: int = 1, pretrained: str = "none", drop_rate: float = 0.0) -> nn.Module:
    if pretrained != "none":
        raise ConfigError("seed_cnn has no pretrained weights.", "use --pretrained none, or a backbone such as efficientnet_lite0.")
    return SeedCNN(num_classes, in_chans, drop_rate=drop_rate or 0.3)
