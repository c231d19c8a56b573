"""Pictures of explanations: a heatmap blended over the image (jet colormap), side by side with the
image, with a caption; or the activation grids of each block stacked."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .base import Explanation


def to_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def colorize(values: np.ndarray, cmap: str = "jet") -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[cmap](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)


def blend(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Heatmap over the image. Below 30% of the maximum it is fully see-through and it fades in up to
    70%, so only the regions that matter are coloured and the anatomy stays readable elsewhere."""
    rgb = to_rgb(image).astype(np.float32)
    heat = colorize(heatmap).astype(np.float32)
    a = alpha * np.clip((heatmap - 0.3) / 0.4, 0, 1)[..., None]
    return (rgb * (1 - a) + heat * a).astype(np.uint8)


def _caption(width: int, text: str) -> np.ndarray:
    strip = Image.new("RGB", (width, 18), "white")
    ImageDraw.Draw(strip).text((4, 3), text, fill="black")
    return np.asarray(strip)


def render(expl: Explanation, classes: list[str], min_side: int = 224) -> np.ndarray:
    """One RGB picture: the image and its overlay side by side (or activation grids), captioned."""
    p = float(expl.probabilities[expl.target])
    title = f"{expl.method}: evidence for {classes[expl.target]} (p={p:.2f})"
    if expl.heatmap is not None:
        scale = max(1, int(np.ceil(min_side / expl.image.shape[0])))
        left = to_rgb(expl.image)
        right = blend(expl.image, expl.heatmap)
        pair = np.concatenate([left, np.full((left.shape[0], 4, 3), 255, np.uint8), right], 1)
        pair = np.asarray(Image.fromarray(pair).resize((pair.shape[1] * scale, pair.shape[0] * scale), Image.NEAREST))
        return np.concatenate([_caption(pair.shape[1], title), pair], 0)
    rows = []
    width = max(512, max(panel.shape[1] for _, panel in expl.panels) * 2)
    for name, panel in expl.panels:
        pic = colorize(panel, "viridis")
        scale = max(1, width // pic.shape[1])
        pic = np.asarray(Image.fromarray(pic).resize((pic.shape[1] * scale, pic.shape[0] * scale), Image.NEAREST))
        pad = np.full((pic.shape[0], width - pic.shape[1], 3), 255, np.uint8) if pic.shape[1] < width else None
        pic = pic[:, :width] if pad is None else np.concatenate([pic, pad], 1)
        rows += [_caption(width, name), pic]
    return np.concatenate([_caption(width, title)] + rows, 0)
