"""Pictures of explanations. A heatmap is computed on the model's input (a square of the run's
size, padded or squashed); here it is mapped back onto the original image at the original's own
resolution, blended over it, and drawn with matplotlib next to the plain image, with a colour bar
and the class and probability as the title. A flat map is said to be flat, never shown as a silent
copy of the image. Activations are drawn as one labelled row of feature maps per stage."""

from __future__ import annotations

import io

import numpy as np

from .base import Explanation
from ..data.images import UnreadableImage, decode

MAX_SIDE = 1600  # the original is drawn at its own resolution up to this many pixels on its long side


def to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def colorize(values: np.ndarray, cmap: str = "jet") -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[cmap](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)


def blend(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Heatmap over the image (same height and width). Below 30% of the maximum it is fully
    see-through and it fades in up to 70%, so only the regions that matter are coloured and the
    anatomy stays readable elsewhere."""
    rgb = to_rgb(image).astype(np.float32)
    heat = colorize(heatmap).astype(np.float32)
    a = alpha * np.clip((heatmap - 0.3) / 0.4, 0, 1)[..., None]
    return (rgb * (1 - a) + heat * a).astype(np.uint8)


def heatmap_on_original(heatmap: np.ndarray, shape: tuple[int, int], resize_mode: str = "pad") -> np.ndarray:
    """The (S, S) model-input heatmap as an (H, W) map over an original image of `shape`: the padding
    is cut off (resize 'pad') and the rest upsampled bilinearly."""
    from PIL import Image

    h, w = shape
    s = heatmap.shape[0]
    m = np.asarray(heatmap, dtype=np.float32)
    if resize_mode == "pad" and h != w:
        scale = s / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        top, left = (s - nh) // 2, (s - nw) // 2
        m = m[top : top + nh, left : left + nw]
    out = np.asarray(Image.fromarray(m, mode="F").resize((w, h), Image.BILINEAR))
    return np.clip(out, 0, 1)


def original_pixels(source, fallback: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """The original image (HxWx3 uint8) from a path, or the model's input when there is none or it
    cannot be read; shrunk to `max_side` on its long side."""
    from PIL import Image

    image = fallback
    if source is not None and not isinstance(source, np.ndarray):
        try:
            image = decode(source)
        except (UnreadableImage, OSError):
            image = fallback
    elif isinstance(source, np.ndarray):
        image = source
    rgb = to_rgb(np.asarray(image))
    h, w = rgb.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        rgb = np.asarray(Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR))
    return rgb


def overlay_on_original(source, expl: Explanation, resize_mode: str = "pad", max_side: int = MAX_SIDE) -> np.ndarray:
    """RGB overlay at the original's resolution (for the web page, which scales it for display).
    A flat map gives the plain image: check expl.flat / expl.message() to say so."""
    rgb = original_pixels(source, expl.image, max_side)
    if expl.heatmap is None or expl.flat:
        return rgb
    return blend(rgb, heatmap_on_original(expl.heatmap, rgb.shape[:2], resize_mode))


def _figure(w_in: float, h_in: float, dpi: int):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(w_in, h_in), dpi=dpi, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def title_of(expl: Explanation, classes: list[str]) -> str:
    names = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "lime": "LIME", "occlusion": "Occlusion",
             "activations": "Activations"}
    p = float(expl.probabilities[expl.target])
    return f"{names.get(expl.method, expl.method)}: evidence for {classes[expl.target]} (probability {p:.2f})"


def explanation_figure(source, image: np.ndarray, expl: Explanation | None, classes: list[str], prep=None,
                       width_px: int | None = None, max_side: int = MAX_SIDE) -> bytes:
    """PNG: the original image and, beside it, the heatmap over it with a colour bar and a title
    naming the class and its probability. `source` is the image's path (or original pixels);
    `image` the model input, used when the original is unavailable. Without an explanation, the
    image alone. `width_px` sets the figure's width (default: the original's, twice)."""
    rgb = original_pixels(source, image, max_side)
    h, w = rgb.shape[:2]
    panels = 1 if expl is None else 2
    dpi = 100
    target_w = width_px or min(2 * w + 160, 2 * max_side)
    panel_w = (target_w - (90 if panels == 2 else 0)) / panels
    scale = panel_w / w
    small = target_w < 700
    font = 9 if small else max(11, round(target_w / 140))  # legible when the figure is shown scaled to a screen
    fig = _figure(target_w / dpi, (h * scale + 5 * font + 20) / dpi, dpi)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    axes[0].imshow(rgb, interpolation="antialiased")
    axes[0].set_title("image" if expl is None else "original", fontsize=font)
    if expl is not None:
        mode = getattr(prep, "resize", "pad") if prep is not None else "pad"
        ax = axes[1]
        ax.imshow(rgb, interpolation="antialiased")
        if expl.heatmap is not None and not expl.flat:
            heat = heatmap_on_original(expl.heatmap, (h, w), mode)
            alpha = 0.55 * np.clip((heat - 0.3) / 0.4, 0, 1)
            shown = ax.imshow(heat, cmap="jet", vmin=0, vmax=1, alpha=alpha, interpolation="bilinear")
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
            bar.solids.set_alpha(1)
            bar.set_ticks([0, 0.5, 1], labels=["weak", "", "strong"])
            bar.set_label("evidence", fontsize=font)
            bar.ax.tick_params(labelsize=font)
        elif expl.flat:
            ax.text(0.5, 0.5, f"no localised evidence\nfor {classes[expl.target]}\nin this image", ha="center",
                    va="center", transform=ax.transAxes, fontsize=font + 2, color="white",
                    bbox={"facecolor": "black", "alpha": 0.6, "boxstyle": "round"})
        method, _, claim = title_of(expl, classes).partition(": ")
        ax.set_title(method, fontsize=font)
        fig.suptitle(claim[:1].upper() + claim[1:], fontsize=font + 2)
    for ax in axes:
        ax.set_axis_off()
    return _png(fig)


def activations_figure(expl: Explanation, classes: list[str]) -> bytes:
    """One row per stage: its most active feature maps, each its own tile (no painted separators),
    the stage labelled by name, depth and size."""
    rows = len(expl.panels)
    cols = max(len(maps) for _, maps in expl.panels) if rows else 1
    fig = _figure(1.3 * cols + 0.6, 1.45 * rows + 0.7, 100)
    grid = fig.subplots(max(rows, 1), cols, squeeze=False)
    for r, (label, maps) in enumerate(expl.panels):
        for c in range(cols):
            ax = grid[r][c]
            ax.set_axis_off()
            if c < len(maps):
                ax.imshow(maps[c], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        grid[r][0].set_title(label, loc="left", fontsize=10)
    fig.suptitle(title_of(expl, classes).replace("evidence for", "prediction"), fontsize=12)
    return _png(fig)


def render_png(expl: Explanation, classes: list[str], source=None, prep=None) -> bytes:
    """The PNG the explain command writes for one image."""
    if expl.heatmap is None and expl.panels:
        return activations_figure(expl, classes)
    return explanation_figure(source, expl.image, expl, classes, prep=prep)
