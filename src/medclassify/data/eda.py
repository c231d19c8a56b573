"""Exploratory plots of a dataset: class distribution per split, a sample grid per class, image size
and intensity distributions. PNGs (matplotlib, Agg) plus one self-contained eda.html page that
embeds them (templates/eda.html in the shared HTML kit).
Sizes and intensities come from the audit's cached fingerprints, so a second run decodes only the
sample images."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from .. import pages
from ..io import check_output_folder, write_text, write_with
from .audit import fingerprint_index
from .fingerprints import HIST_BINS
from .images import decode
from .sources import attach_patients, scan_folder

SAMPLES_PER_CLASS = 8


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png"))
    _plt().close(fig)
    return path


def class_distribution(index, out: Path) -> Path:
    plt = _plt()
    counts = index.counts()
    splits, classes = list(counts), index.classes
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(classes) * max(1, len(splits))), 4))
    width = 0.8 / len(splits)
    for k, split in enumerate(splits):
        values = [counts[split].get(c, 0) for c in classes]
        bars = ax.bar(np.arange(len(classes)) + k * width, values, width, label=split)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(np.arange(len(classes)) + width * (len(splits) - 1) / 2, classes, rotation=20, ha="right")
    ax.set_ylabel("images")
    ax.set_title("Images per class and split")
    ax.legend()
    return _save(fig, out / "class_distribution.png")


def sample_grid(index, out: Path, seed: int = 0) -> Path:
    plt = _plt()
    rng = random.Random(seed)
    classes = index.classes
    fig, axes = plt.subplots(len(classes), SAMPLES_PER_CLASS, figsize=(1.6 * SAMPLES_PER_CLASS, 1.7 * len(classes)), squeeze=False)
    for row, c in enumerate(classes):
        paths = sorted(r.path for r in index.records if r.label == c)
        picks = rng.sample(paths, min(SAMPLES_PER_CLASS, len(paths)))
        for col in range(SAMPLES_PER_CLASS):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(picks):
                try:
                    arr = decode(picks[col], draft_size=128)
                    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255)
                except Exception:  # per file: UnreadableImage, or anything else one bad file raises
                    ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=8)
            if col == 0:
                ax.set_title(c, loc="left", fontsize=10)
    fig.suptitle("Random samples per class")
    return _save(fig, out / "samples.png")


def size_distribution(index, fp, out: Path) -> Path:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for c in index.classes:
        rows = fp.rows([r.path for r in index.records if r.label == c])
        rows = rows[fp.readable[rows]]
        jitter = np.random.default_rng(0).uniform(-0.5, 0.5, (2, len(rows)))
        a1.scatter(fp.width[rows] + jitter[0], fp.height[rows] + jitter[1], s=6, alpha=0.5, label=c)
        a2.hist(fp.width[rows] / np.maximum(fp.height[rows], 1), bins=30, alpha=0.5, label=c)
    a1.set_xlabel("width (px)")
    a1.set_ylabel("height (px)")
    a1.set_title("Image sizes")
    a1.legend(fontsize=8)
    a2.set_xlabel("width / height")
    a2.set_title("Aspect ratios")
    return _save(fig, out / "image_sizes.png")


def intensity_distribution(index, fp, out: Path) -> Path:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    centres = (np.arange(HIST_BINS) + 0.5) * 256 / HIST_BINS
    for c in index.classes:
        rows = fp.rows([r.path for r in index.records if r.label == c])
        rows = rows[fp.readable[rows]]
        a1.hist(fp.mean[rows], bins=40, range=(0, 255), alpha=0.5, label=c)
        a2.plot(centres, fp.hist[rows].mean(axis=0) if len(rows) else np.zeros(HIST_BINS), marker="o", label=c)
    a1.set_xlabel("mean grey level of an image")
    a1.set_title("Image brightness")
    a1.legend(fontsize=8)
    a2.set_xlabel("grey level")
    a2.set_ylabel("fraction of pixels")
    a2.set_title("Pixel intensity distribution (class average)")
    return _save(fig, out / "intensity.png")


EDA_FILES = ("class_distribution.png", "samples.png", "image_sizes.png", "intensity.png", "eda.html")


def check_eda_out(data: str | Path, out: str | Path) -> Path:
    """Before any image is read: `out` can take the EDA's files and is neither in nor over the dataset."""
    out = Path(out)
    data = Path(data)
    return check_output_folder(out, inputs=[data], protected_dirs=[data] if data.is_dir() else [],
                               files=[out / f for f in EDA_FILES])


def run_eda(data: str | Path, out: str | Path, patient_pattern: str | None = None, reporter=None,
            workers: int | None = None) -> Path:
    """Write the plots and eda.html into `out`; returns the page's path."""
    out = check_eda_out(data, out)
    index = attach_patients(scan_folder(data), patient_pattern)
    fp = fingerprint_index(index, reporter, workers)
    pngs = [class_distribution(index, out), sample_grid(index, out), size_distribution(index, fp, out),
            intensity_distribution(index, fp, out)]
    captions = {"class_distribution": "How many images each class has in each split.",
                "samples": "Random images of each class, as stored (before resizing).",
                "image_sizes": "Width against height of every image, and the aspect ratios, per class.",
                "intensity": "Brightness per image and the average grey-level histogram, per class: a class that "
                             "differs here can be told apart by exposure rather than anatomy."}
    figures = [{"title": p.stem.replace("_", " ").capitalize(), "png": p.read_bytes(), "caption": captions.get(p.stem)}
               for p in pngs]
    page = pages.render("eda.html", title=f"Exploratory analysis of {index.root}", subtitle=None,
                        n_images=len(index.records), classes=index.classes, layout=index.layout,
                        n_unreadable=len(fp.errors), counts=index.counts(), figures=figures,
                        footer="Generated by medclassify eda; the PNGs are also saved next to this page.")
    return write_text(out / "eda.html", page)
