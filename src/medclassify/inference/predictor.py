"""The Predictor: one loaded run answering for files or pixel arrays, with exactly the training
preprocessing. Every entry point (predict command, Python API, later the server) goes through it."""

from __future__ import annotations

import csv
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..data.images import UnreadableImage, array_for_model, is_image_file, load_for_model
from ..errors import DataError
from ..reporting import Reporter
from ..run import Run, load_run


@dataclass
class Prediction:
    path: str | None
    label: str | None
    probabilities: dict[str, float]
    error: str | None = None


class Predictor:
    def __init__(self, run: Run | str | Path, batch_size: int = 32):
        self.run = run if isinstance(run, Run) else load_run(run)
        self.prep = self.run.preprocessing
        self.classes = self.run.classes
        self.model = self.run.build_model().to(memory_format=torch.channels_last)
        self.batch_size = batch_size
        self.temperature = float(self.run.info.get("calibration", {}).get("temperature", 1.0))
        with open(self.run.path / "model.safetensors", "rb") as f:
            self.version = hashlib.sha256(f.read()).hexdigest()[:12]

    def load(self, path: str | Path) -> np.ndarray:
        return load_for_model(path, self.prep.image_size, self.prep.resize, self.prep.channels)

    @torch.inference_mode()
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 already preprocessed -> (N, K) probabilities."""
        logits = self.model(self.prep(batch)).float()
        return (logits / self.temperature).softmax(1).numpy()

    def predict_array(self, pixels: np.ndarray) -> Prediction:
        arr = array_for_model(pixels, self.prep.image_size, self.prep.resize, self.prep.channels)
        return self._wrap(None, self.probabilities(arr[None])[0])

    def _wrap(self, path: str | None, p: np.ndarray) -> Prediction:
        return Prediction(path, self.classes[int(p.argmax())], {c: float(v) for c, v in zip(self.classes, p)})

    def predict_paths(self, paths: Sequence[str], on_batch=None) -> list[Prediction]:
        out: list[Prediction] = []
        threads = min(8, os.cpu_count() or 1)

        def load(p):
            try:
                return p, self.load(p), None
            except UnreadableImage as e:
                return p, None, e.reason

        with ThreadPoolExecutor(threads) as pool:
            for start in range(0, len(paths), self.batch_size):
                chunk = list(pool.map(load, paths[start : start + self.batch_size]))
                good = [(p, a) for p, a, e in chunk if e is None]
                probs = self.probabilities(np.stack([a for _, a in good])) if good else np.zeros((0, len(self.classes)))
                it = iter(probs)
                for p, a, e in chunk:
                    out.append(Prediction(p, None, {}, e) if e else self._wrap(p, next(it)))
                if on_batch:
                    on_batch(len(chunk))
        return out


def collect_inputs(inputs: Iterable[str | Path]) -> list[str]:
    """Folders (searched recursively), image files, and CSV/TXT files listing paths."""
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += [str(f) for f in sorted(p.rglob("*")) if f.is_file() and is_image_file(f)]
        elif p.is_file() and p.suffix.lower() in (".csv", ".txt"):
            paths += _list_file(p)
        elif p.is_file():
            paths.append(str(p))
        else:
            raise DataError(f"Input {p} does not exist.", "pass image files, folders of images or a CSV with a path column.")
    if not paths:
        raise DataError(f"No images found in {', '.join(map(str, inputs))}.", "pass image files or folders that contain images.")
    return paths


def _list_file(p: Path) -> list[str]:
    with open(p, newline="") as f:
        if p.suffix.lower() == ".txt":
            names = [line.strip() for line in f if line.strip()]
        else:
            reader = csv.DictReader(f)
            if "path" not in [c.strip().lower() for c in reader.fieldnames or []]:
                raise DataError(f"{p} has no 'path' column.", "add a header row with a path column.")
            names = [row.get("path") or row.get("Path") or "" for row in reader]
    return [str(x if Path(x).is_absolute() else p.parent / x) for x in (Path(n) for n in names if n)]


def predict_files(run: Run | str | Path, inputs: Iterable[str | Path] | str | Path, out: str | Path | None = None,
                  reporter: Reporter | None = None) -> list[Prediction]:
    """Predict every image in `inputs`; write a CSV (path, predicted, prob_<class>..., error) to `out`."""
    reporter = reporter or Reporter(quiet=True)
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    predictor = Predictor(run)
    paths = collect_inputs(inputs)
    with reporter.task("Predicting", len(paths)) as bar:
        preds = predictor.predict_paths(paths, on_batch=bar.advance)
    failed = [p for p in preds if p.error]
    if failed:
        reporter.warn(f"{len(failed)} of {len(preds)} file(s) could not be read (first: {failed[0].path}: {failed[0].error}); "
                      "they are listed with the error in the CSV.")
    if out is not None:
        write_predictions_csv(out, preds, predictor.classes)
    return preds


def write_predictions_csv(out: str | Path, preds: list[Prediction], classes: list[str]) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "predicted", *[f"prob_{c}" for c in classes], "error"])
        for p in preds:
            w.writerow([p.path, p.label or "", *[f"{p.probabilities[c]:.6f}" if p.probabilities else "" for c in classes],
                        p.error or ""])
    os.replace(tmp, out)
