"""Shared base of the explanation methods (after pytorch-grad-cam's BaseCAM): the run's model and
preprocessing, the target class, and hooks that exist only during one call."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..data.preprocessing import Preprocessing
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


def probabilities_of(logits: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        p = logits.sigmoid()
        return torch.cat([1 - p, p], 1)
    return logits.softmax(1)


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
        # A Predictor on ONNX Runtime, when the run has a current export: methods that only need
        # forward passes (LIME, occlusion) run several times faster through it on CPU.
        self.onnx = None

    @classmethod
    def for_run(cls, run, layer: str | None = None) -> "Explainer":
        from ..inference.predictor import Predictor

        predictor = Predictor(run)
        explainer = cls(predictor.model, predictor.prep, layer)
        explainer.onnx = predictor if predictor.backend == "onnx" else None
        return explainer

    def tensor(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, C) or (H, W, C) uint8 -> model input."""
        if images.ndim == 3:
            images = images[None]
        return self.prep(np.require(images, requirements=["C", "W"]))  # decoded images may be read-only

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Uncalibrated probabilities of a batch of model-ready images."""
        def forward(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.onnx.logits(x)) if self.onnx is not None else self.model(x).float()

        out = [probabilities_of(forward(self.tensor(images[i : i + batch_size])))
               for i in range(0, len(images), batch_size)]
        return torch.cat(out).numpy()

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
    from PIL import Image

    return write_with(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))
