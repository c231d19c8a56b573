"""Small generated datasets for the demo and the tests: grey 'scans' with a smooth background and
noise, where class k shows k bright blobs at random positions (class 0 shows none)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def synthetic_image(rng: np.random.Generator, size: int, n_blobs: int, blob_radius: float = 0.12,
                    centres: list | None = None) -> np.ndarray:
    """One grey image; when a list is passed as `centres`, each blob's (row, column) centre in pixels
    is appended to it (ground truth for explanation checks)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    img = 0.35 + 0.15 * (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5))
    img = img + 0.08 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.1)
    for _ in range(n_blobs):
        cx, cy = rng.uniform(0.2, 0.8, 2)
        r = blob_radius * rng.uniform(0.8, 1.2)
        if centres is not None:
            centres.append((cy * size, cx * size))
        img = img + 0.45 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (r / 2) ** 2))
    img = img + rng.normal(0, 0.04, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def generate_dataset(
    root: str | Path,
    classes: Sequence[str] = ("normal", "lesion"),
    per_class: int = 40,
    size: int = 64,
    splits: dict[str, float] | None = None,
    colour: str = "grey",  # grey | grey-as-rgb | rgb
    ext: str = "png",
    images_per_patient: int = 1,
    seed: int = 0,
) -> Path:
    """Write class-per-folder images under root (root/<split>/<class>/ when `splits` is given,
    e.g. {"train": 0.8, "test": 0.2}). File names carry patient ids: person<P>_<class>_<k>.<ext>."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    patient = 0
    for k, cls in enumerate(classes):
        names = []
        for i in range(per_class):
            if i % images_per_patient == 0:
                patient += 1
            names.append((patient, i))
        if splits:
            bounds = np.cumsum([0] + [round(f * per_class) for f in splits.values()])
            bounds[-1] = per_class
            assignment = {}
            for s, (a, b) in zip(splits, zip(bounds[:-1], bounds[1:])):
                for i in range(a, b):
                    assignment[i] = s
        for patient_id, i in names:
            arr = synthetic_image(rng, size, k)
            if colour == "grey-as-rgb":
                arr = np.repeat(arr[..., None], 3, axis=2)
            elif colour == "rgb":
                tint = rng.uniform(0.6, 1.0, 3)
                arr = (np.repeat(arr[..., None], 3, axis=2) * tint).astype(np.uint8)
            folder = root / assignment[i] / cls if splits else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            safe = cls.replace(" ", "-").replace("(", "").replace(")", "")
            Image.fromarray(arr).save(folder / f"person{patient_id}_{safe}_{i}.{ext}")
    return root


def texture_image(seed: int, size: int = 96) -> np.ndarray:
    """A distinct smooth grey image (low-pass filtered noise); different seeds never look alike."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (6, 6)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def augmented_copy(arr: np.ndarray, angle: float = 8.0, scale: float = 1.15, brightness: float = 0.85,
                   flip: bool = True, quality: int = 70) -> np.ndarray:
    """The copies that inflate scores when they cross a split: resized, rotated (black corners),
    brightened, mirrored and re-encoded as JPEG."""
    import io

    from PIL import ImageEnhance

    img = Image.fromarray(arr)
    img = img.resize((max(8, round(img.width * scale)), max(8, round(img.height * scale))), Image.BILINEAR)
    img = img.rotate(angle, resample=Image.BILINEAR)
    img = ImageEnhance.Brightness(img).enhance(brightness)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))
