"""A run's out-of-distribution guard: fitted on its training images' features (the one forward pass,
engine.py, with the run's TTA choice: the pooled outputs of engine.guard_layers, then the
penultimate features), thresholded on its validation images, stored as ood.safetensors with its
facts in run.json ("ood": "layers" says which columns are which layer, which detector scores them,
and how they combine). It holds the validation images' penultimate features too: the reference of
the shift check (evaluation/shift.py). A guard fitted on fewer layers (the penultimate features
alone, or without the newest layer) reads the last columns of the features, which is where its own
still are: engine.guard_layers puts newer layers first.

A guard belongs to one set of weights: run.json records their version and the file's SHA-256, and a
guard that no longer matches (weights changed, file edited) is reported absent, never used."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.cache import ImageCache
from ..data.prepare import load_cache
from ..data.sources import Record
from ..engine import GuardLayer, Net, guard_layers, has_feature_head, predict_rows
from ..io import file_sha256
from ..reporting import Reporter
from ..run import Run
from .detector import Detector, Layered, fit_detector, fit_layered, load_detector, save_detector, set_threshold

GUARD_FILE = "ood.safetensors"
DEFAULT_METHOD = "mahalanobis"  # measured against knn in benchmarks/ood.py (README, "Knowing when not to answer")
DEFAULT_QUANTILE = 0.95
MAX_FIT_IMAGES = 20000  # training images embedded for the fit (a random subset beyond)
MAX_REFERENCE = 1000  # held-out images kept as the shift check's reference
LAYER_METHOD = {"mean": "mahalanobis", "std": "knn"}  # how each pooling of an earlier layer is scored


def layer_specs(layers) -> list[tuple[str, int, str]]:
    """(part name, width, detector) of engine.guard_layers' layers (GuardLayer or (module, channels[, pool]))."""
    return [(g.name, g.channels, LAYER_METHOD[g.pool]) for g in (GuardLayer(*layer) for layer in layers)]


def weights_version(run_path: Path) -> str:
    return file_sha256(Path(run_path) / "model.safetensors")[:12]


def embed(run: Run, records: list[Record], cache: ImageCache, model: torch.nn.Module | Net | None = None,
          tta: bool | None = None, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, list[Record]]:
    """(probabilities, features, the readable records) of `records` through the run's model."""
    readable = [r for r in records if r.path not in cache.errors and r.path in cache.row_of]
    if not readable:
        return np.zeros((0, len(run.classes)), np.float32), np.zeros((0, 0), np.float32), []
    model = model if model is not None else run.build_model()
    p, _, f = predict_rows(model, cache.images, cache.rows([r.path for r in readable]), run.preprocessing,
                           batch_size=batch_size, tta=run.tta if tta is None else tta, temperature=run.temperature,
                           features=True)
    return p, f, readable


@dataclass
class Guard:
    detector: Detector | Layered
    reference: np.ndarray | None  # held-out penultimate features, the shift check's reference
    info: dict

    @property
    def threshold(self) -> float:
        return self.detector.threshold

    @property
    def penultimate_dim(self) -> int:
        if isinstance(self.detector, Layered):
            _, a, b, _ = self.detector.parts[-1]
            return b - a
        return self.detector.dim

    def accepts(self, width: int) -> bool:
        """Whether features `width` wide (a network's features output) can be scored."""
        return width >= self.detector.dim

    def _own(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features)
        if f.ndim != 2 or f.shape[1] <= self.detector.dim:
            return f
        return f[:, -self.detector.dim :]  # a guard fitted on fewer layers: the last columns

    def penultimate(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features)
        return f[:, -self.penultimate_dim :] if f.ndim == 2 and f.shape[1] > self.penultimate_dim else f

    def score(self, features: np.ndarray) -> np.ndarray:
        return self.detector.score(self._own(features))

    def flags(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.detector.flags(self._own(features))


def fit_guard(run: Run, reporter: Reporter | None = None, cache: ImageCache | None = None,
              quantile: float | None = None, method: str | None = None, seed: int = 0,
              model: torch.nn.Module | None = None) -> dict:
    """Fit, threshold and store the guard of `run`; returns its run.json record ("ood")."""
    t0 = time.perf_counter()
    reporter = reporter or Reporter(quiet=True)
    quantile = DEFAULT_QUANTILE if quantile is None else quantile
    method = method or DEFAULT_METHOD
    model = model if model is not None else run.build_model()
    if not has_feature_head(model):
        reason = f"{run.model_name} does not expose its penultimate features"
        run.update(ood={"status": "unavailable", "reason": reason})
        reporter.warn(f"No out-of-distribution guard: {reason}.")
        return run.info["ood"]
    cache = cache or load_cache(run.records(), run.preprocessing, reporter)
    rng = np.random.default_rng(seed)
    train = run.records("train")
    if len(train) > MAX_FIT_IMAGES:
        train = [train[i] for i in np.sort(rng.choice(len(train), MAX_FIT_IMAGES, replace=False))]
    _, f_train, train_ok = embed(run, train, cache, model)
    if len(train_ok) < 10:
        reason = f"only {len(train_ok)} of the run's {len(train)} training images can be read (the guard needs 10)"
        run.update(ood={"status": "unavailable", "reason": reason})
        reporter.warn(f"No out-of-distribution guard: {reason}.")
        return run.info["ood"]
    labels = np.array([run.classes.index(r.label) for r in train_ok])
    held = run.records("val")
    f_held = embed(run, held, cache, model)[1] if held else None
    return store_guard(run, f_train, labels, f_held, quantile, method, seed, reporter, t0, layers=guard_layers(model))


def store_guard(run: Run, f_train: np.ndarray, labels: np.ndarray, f_held: np.ndarray | None, quantile: float,
                method: str, seed: int = 0, reporter: Reporter | None = None, t0: float | None = None,
                layers: list[tuple[str, int]] | None = None) -> dict:
    """Fit the detector on training features, threshold it on the held-out (validation) features and
    store it in the run; returns its run.json record. fit_guard computes the features; `layers`
    (engine.guard_layers) names their first columns, the penultimate features are the rest.
    The default ("mahalanobis") reads every layer (detector.Layered, each layer scored as LAYER_METHOD
    says); "knn" the penultimate features alone."""
    layers = layer_specs(layers or [])
    t0 = time.perf_counter() if t0 is None else t0
    rng = np.random.default_rng(seed)
    held_split = "val"
    if f_held is None or len(f_held) < 20:  # no usable validation split: hold out a tenth of the training images
        order = rng.permutation(len(f_train))
        cut = max(1, len(order) // 10)
        f_held, f_train, labels = f_train[order[:cut]], f_train[order[cut:]], labels[order[cut:]]
        held_split = "train (a held-out tenth)"
    skip = sum(w for _, w, _ in layers)
    if layers and method == "mahalanobis":
        detector, held_scores = fit_layered(f_train, labels, f_held, quantile, layers)
        finite = all(np.isfinite(det.threshold) for *_, det in detector.parts)
    else:
        detector = fit_detector(method, f_train[:, skip:], labels, seed=seed)
        held_scores = set_threshold(detector, f_held[:, skip:], quantile)
        finite = np.isfinite(detector.threshold)
    if not finite:
        reason = "the training images' features are degenerate (the detector's threshold is not finite)"
        run.update(ood={"status": "unavailable", "reason": reason})
        (reporter or Reporter(quiet=True)).warn(f"No out-of-distribution guard: {reason}.")
        return run.info["ood"]
    reference = f_held if len(f_held) <= MAX_REFERENCE else f_held[np.sort(rng.choice(len(f_held), MAX_REFERENCE, replace=False))]
    reference = reference[:, skip:]
    path = run.path / GUARD_FILE
    save_detector(detector, path, {"reference": reference.astype(np.float32)})
    record = {"status": "fitted", "method": detector.method, "file": GUARD_FILE, "sha256": file_sha256(path),
              "weights_version": weights_version(run.path), "tta": run.tta, "features": detector.dim,
              "threshold": detector.threshold, "quantile": quantile, "threshold_on": held_split,
              "train_images": int(len(f_train)), "held_out_images": int(len(f_held)),
              "held_out_flagged": float((held_scores > detector.threshold).mean()),
              "reference_images": int(len(reference)), "fit_s": round(time.perf_counter() - t0, 2)}
    if isinstance(detector, Layered):
        record.update(layers=detector.describe(), combine=detector.combine, penultimate_features=int(f_train.shape[1] - skip))
    if method == "knn":
        record["k"] = detector.k
    run.update(ood=record)
    (reporter or Reporter(quiet=True)).info(
        f"Out-of-distribution guard ({method}{' on ' + ', '.join(n for n, *_ in detector.parts) if isinstance(detector, Layered) else ''}, "
        f"{detector.dim} features) fitted on {len(f_train)} training images; "
        f"threshold {detector.threshold:.4g} passes {quantile:.0%} of {held_split} images ({record['fit_s']:.1f} s).")
    return record


def load_guard(run: Run) -> tuple[Guard | None, str]:
    """The run's guard, or None and the reason it is absent (old run, unavailable, stale, damaged)."""
    from safetensors import SafetensorError

    rec = run.info.get("ood")
    if not isinstance(rec, dict):
        return None, f"the run has no out-of-distribution guard (fit one: medclassify fit-guard {run.path})"
    if rec.get("status") != "fitted":
        return None, str(rec.get("reason", "the guard is not fitted"))
    path = run.path / rec.get("file", GUARD_FILE)
    try:
        if file_sha256(path) != rec.get("sha256"):
            return None, f"{path.name} does not match run.json (edited or damaged): fit the guard again"
        if rec.get("weights_version") != weights_version(run.path):
            return None, "the guard was fitted on other weights: fit the guard again"
        detector, extra = load_detector(path)
    except (OSError, KeyError, ValueError, SafetensorError) as e:
        return None, f"{path.name} cannot be read ({type(e).__name__}): fit the guard again"
    return Guard(detector, extra.get("reference"), rec), ""
