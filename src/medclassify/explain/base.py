"""Shared base of the explanation methods (after pytorch-grad-cam's BaseCAM): the run's model and
preprocessing, the target class, and hooks that exist only during one call."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ..data.preprocessing import Preprocessing
from ..engine import Net, forward_images
from ..inference.predictor import Predictor
from ..io import write_with


@dataclass
class Explanation:
    method: str
    image: np.ndarray                     # (H, W, C) uint8, as the model saw it
    target: int                           # class explained
    probabilities: np.ndarray             # (K,) model output for the image
    heatmap: np.ndarray | None = None     # (H, W) in [0, 1]: how much each pixel supports `target`
    panels: list[tuple[str, np.ndarray]] = field(default_factory=list)  # method-specific pictures (activations)

    @property
    def flat(self) -> bool:
        """True when the map shows nothing: no pixel stands out (e.g. every Grad-CAM weight negative)."""
        return self.heatmap is not None and is_flat(self.heatmap)

    def message(self, classes: list[str]) -> str | None:
        """What to tell the reader instead of a blank overlay (None when the map has content)."""
        return f"no localised evidence for {classes[self.target]} in this image" if self.flat else None


FLAT_RANGE = 0.05


def is_flat(heatmap: np.ndarray) -> bool:
    """A map whose values span less than FLAT_RANGE (of the [0, 1] scale), or that is all zero after
    normalisation (a constant map normalises to zeros)."""
    h = np.asarray(heatmap, dtype=np.float32)
    return not np.isfinite(h).any() or float(np.nanmax(h) - np.nanmin(h)) < FLAT_RANGE


def class_score(logits: torch.Tensor, target: int) -> torch.Tensor:
    """The logit that supports `target`; a single-logit binary head supports class 1 with +logit
    and class 0 with -logit."""
    if logits.shape[1] == 1:
        return logits[:, 0] if target == 1 else -logits[:, 0]
    return logits[:, target]


def normalise_map(m: np.ndarray) -> np.ndarray:
    m = np.nan_to_num(np.asarray(m, dtype=np.float32))
    m = m - m.min()
    top = m.max()
    return m / top if top > 0 else m


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)


class Explainer:
    """One method; `explain(image, target=None)` takes an (H, W, C) uint8 image already at the
    run's size and channels (Predictor.load gives it) and explains the predicted class by default."""

    name = "base"

    def __init__(self, model: nn.Module, prep: Preprocessing, layer: str | None = None):
        self.model = model.eval()
        self.prep = prep
        self.layer = layer
        # What forward-only passes (LIME, occlusion, the probabilities shown) run through: the model,
        # or the run's ONNX Runtime session when it has a current export (several times faster on CPU).
        self.net = Net(self.model)
        self.onnx: Predictor | None = None  # that session's Predictor
        self.tta, self.temperature = False, 1.0

    @classmethod
    def for_run(cls, run, layer: str | None = None, predictor: Predictor | None = None, **options) -> "Explainer":
        """The method on a run, with the run's TTA choice and temperature, so the probabilities it
        explains are the ones predict gives; through ONNX Runtime when the run is exported."""
        predictor = predictor or Predictor(run)
        explainer = cls(predictor.model, predictor.prep, layer, **options)
        explainer.predictor = predictor
        explainer.onnx = predictor if predictor.session is not None else None
        explainer.net, explainer.tta, explainer.temperature = predictor.net, predictor.tta, predictor.temperature
        return explainer

    def tensor(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, C) or (H, W, C) uint8 -> model input."""
        if images.ndim == 3:
            images = images[None]
        return self.prep(np.require(images, requirements=["C", "W"]))  # decoded images may be read-only

    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities of model-ready images ((N, H, W, C) or one (H, W, C)): the one forward pass
        (engine.py) with this explainer's TTA and temperature."""
        images = images[None] if images.ndim == 3 else images
        return forward_images(self.net, images, self.prep, self.tta, self.temperature, batch_size)[0]

    def explain(self, image: np.ndarray, target: int | None = None) -> Explanation:
        raise NotImplementedError


@contextlib.contextmanager
def forward_hooks(modules: list[nn.Module], hook):
    """Registers `hook` on each module for the duration of the block; always removes them."""
    handles = []
    try:
        for m in modules:
            handles.append(m.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write atomically (medclassify.io)."""
    return write_with(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))
