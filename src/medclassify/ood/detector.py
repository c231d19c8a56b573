"""Feature-space out-of-distribution detectors, fitted on a run's training features.

    mahalanobis  distance to the nearest class mean under one shared (Ledoit-Wolf shrunk) covariance
                 (Lee et al. 2018), computed in the whitened space: min_k |W^T (f - c) - m_k|^2 / D
    knn          cosine distance to the k-th nearest training image (Sun et al. 2022), on
                 L2-normalised features

Higher scores are less like the training images. The threshold is a quantile of the scores of
held-out validation images, so that share of in-distribution images passes. Stored as plain
tensors in safetensors (no pickle), with the method, threshold and k in its metadata.

Layered (Lee et al. 2018, feature ensemble): one detector per slice of the features (earlier
layers' pooled activations, then the penultimate features), Mahalanobis unless the layer asks for
the distance to the nearest training image (`knn` with k = 1: the spatial-spread features, whose
training images form no class clusters); the score is the largest ratio of a slice's score to that
slice's own threshold, flagged above 1. The penultimate slice's threshold is the held-out quantile;
an earlier Mahalanobis slice's is the largest held-out score, or their mean + 4 standard deviations
where that is higher (a few held-out images: their largest score is a low quantile), so it flags no
held-out image; an earlier kNN slice's is twice the held-out scores' 95th percentile (it may flag the
odd held-out image: run.json records the held-out share the whole guard flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

METHODS = ("mahalanobis", "knn")
KNN_K = 10
EARLY_SPREAD = 4.0  # an earlier layer's threshold: at least its held-out mean + 4 standard deviations
MAX_BANK = 10000  # training images kept for kNN: scoring one image stays well under a millisecond
_TENSORS = {"mahalanobis": ("center", "whiten", "means"), "knn": ("bank",)}


@dataclass
class Detector:
    method: str
    tensors: dict[str, np.ndarray]
    threshold: float = float("inf")
    k: int = KNN_K
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.tensors["center"].shape[0]) if self.method == "mahalanobis" else int(self.tensors["bank"].shape[1])

    def _torch(self) -> dict:
        if not hasattr(self, "_t"):
            self._t = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in self.tensors.items()}
        return self._t

    def score(self, features: np.ndarray) -> np.ndarray:
        # In PyTorch, on its threads: right after a forward pass, NumPy's BLAS took ~9 ms to wake its own
        # thread pool for one image on 2 busy cores; the same product in PyTorch took ~1 ms.
        f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features of shape {tuple(f.shape)} do not fit this detector ({self.dim} features)")
        t = self._torch()
        with torch.inference_mode():
            if self.method == "mahalanobis":
                g = (f - t["center"]) @ t["whiten"]
                d = (g * g).sum(1, keepdim=True) - 2 * g @ t["means"].T + (t["means"] * t["means"]).sum(1)[None, :]
                return (d.min(1).values.clamp_min(0) / self.dim).double().numpy()
            sims = torch.nn.functional.normalize(f, dim=1) @ t["bank"].T
            k = min(self.k, sims.shape[1])
            return (1.0 - sims.topk(k, dim=1).values[:, k - 1]).double().numpy()

    def flags(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, in_distribution) of a batch of features."""
        s = self.score(features)
        return s, s <= self.threshold


@dataclass
class Layered:
    """Detectors on slices [start, stop) of the features; `parts` are (name, start, stop, detector)."""

    parts: list[tuple[str, int, int, Detector]]
    threshold: float = 1.0
    meta: dict[str, str] = field(default_factory=dict)
    method: str = "mahalanobis"
    combine: str = "max of score / layer threshold"

    @property
    def dim(self) -> int:
        return self.parts[-1][2]

    def layer_scores(self, features: np.ndarray) -> dict[str, np.ndarray]:
        f = np.asarray(features)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features of shape {tuple(f.shape)} do not fit this detector ({self.dim} features)")
        return {name: det.score(f[:, a:b]) for name, a, b, det in self.parts}

    def score(self, features: np.ndarray) -> np.ndarray:
        per = self.layer_scores(features)
        return np.max(np.stack([per[name] / max(det.threshold, 1e-12) for name, _, _, det in self.parts]), 0)

    def flags(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.score(features)
        return s, s <= self.threshold

    def describe(self) -> list[dict]:
        return [{"name": name, "start": a, "stop": b, "threshold": det.threshold, "method": det.method,
                 **({"k": det.k} if det.method == "knn" else {})} for name, a, b, det in self.parts]


LAYER_KNN_K = 1  # an earlier layer's kNN: the nearest training image
# ...thresholded at twice the distance within which 95% of held-out images find a training image: the
# largest held-out distance rests on one image (one outlier in brain_tumor_mri's validation split put
# it at the median Alzheimer slice's distance), a margin over a quantile does not.
KNN_QUANTILE, KNN_MARGIN = 0.95, 2.0
KNN_FLOOR = 1e-5  # float32 cosine distances of near-duplicates are noise below this


def fit_layered(features: np.ndarray, labels: np.ndarray, held_out: np.ndarray, quantile: float,
                layers: list[tuple]) -> tuple[Layered, np.ndarray]:
    """A detector on each of `layers` ((name, width) or (name, width, method), method "mahalanobis"
    by default or "knn"; the penultimate slice, Mahalanobis on the rest of the columns, comes last)
    and the held-out scores of the result."""
    parts, start = [], 0
    specs = [(layer[0], int(layer[1]), layer[2] if len(layer) > 2 else "mahalanobis") for layer in layers]
    total = features.shape[1]
    for name, width, method in [*specs, ("penultimate", total - sum(w for _, w, _ in specs), "mahalanobis")]:
        if method not in METHODS:
            raise ValueError(f"unknown OOD method {method!r} for layer {name!r} (one of {', '.join(METHODS)})")
        det = (fit_mahalanobis(features[:, start : start + width], labels) if method == "mahalanobis"
               else fit_knn(features[:, start : start + width], k=LAYER_KNN_K))
        scores = det.score(held_out[:, start : start + width])
        det.threshold = float(np.quantile(scores, quantile, method="higher") if name == "penultimate"
                              else max(KNN_MARGIN * np.quantile(scores, KNN_QUANTILE), KNN_FLOOR) if method == "knn"
                              else max(scores.max(), scores.mean() + EARLY_SPREAD * scores.std()))
        parts.append((name, start, start + width, det))
        start += width
    layered = Layered(parts)
    return layered, layered.score(held_out)


def _normalised(f: np.ndarray) -> np.ndarray:
    return (f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray) -> Detector:
    from sklearn.covariance import LedoitWolf

    f = np.asarray(features, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([f[labels == c].mean(0) for c in classes])
    centred = f - means[np.searchsorted(classes, labels)]
    cov = LedoitWolf(assume_centered=True).fit(centred).covariance_
    evals, evecs = np.linalg.eigh(cov)
    whiten = evecs / np.sqrt(np.maximum(evals, max(float(evals.max()) * 1e-9, 1e-12)))[None, :]  # all-equal features: no NaN
    center = f.mean(0)
    return Detector("mahalanobis", {"center": center.astype(np.float32), "whiten": whiten.astype(np.float32),
                                    "means": ((means - center) @ whiten).astype(np.float32)})


def fit_knn(features: np.ndarray, k: int = KNN_K, seed: int = 0) -> Detector:
    f = np.asarray(features, dtype=np.float32)
    if len(f) > MAX_BANK:
        f = f[np.sort(np.random.default_rng(seed).choice(len(f), MAX_BANK, replace=False))]
    return Detector("knn", {"bank": _normalised(f)}, k=k)


def fit_detector(method: str, features: np.ndarray, labels: np.ndarray, seed: int = 0) -> Detector:
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r} (one of {', '.join(METHODS)})")
    return fit_mahalanobis(features, labels) if method == "mahalanobis" else fit_knn(features, seed=seed)


def set_threshold(detector: Detector, held_out: np.ndarray, quantile: float) -> np.ndarray:
    """Threshold at the `quantile` of the held-out images' scores; returns those scores."""
    scores = detector.score(held_out)
    detector.threshold = float(np.quantile(scores, quantile, method="higher"))
    return scores


def save_detector(detector: Detector | Layered, path, extra: dict[str, np.ndarray] | None = None) -> None:
    import json

    from safetensors.numpy import save_file

    from ..io import write_with

    if isinstance(detector, Layered):
        own = {f"{name}/{k}": v for name, _, _, det in detector.parts for k, v in det.tensors.items()}
        meta = {**detector.meta, "method": detector.method, "threshold": repr(detector.threshold),
                "combine": detector.combine, "layers": json.dumps(detector.describe())}
    else:
        own = detector.tensors
        meta = {**detector.meta, "method": detector.method, "threshold": repr(detector.threshold), "k": str(detector.k)}
    tensors = {k: np.ascontiguousarray(v) for k, v in {**own, **(extra or {})}.items()}
    write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_detector(path) -> tuple[Detector | Layered, dict[str, np.ndarray]]:
    """(the detector, the file's other tensors, e.g. the reference features of the shift check).
    A file without "layers" in its metadata holds one detector on the penultimate features."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    method = meta["method"]
    if "layers" in meta:
        parts = []
        for layer in json.loads(meta["layers"]):
            name, own_method = layer["name"], layer.get("method", method)
            det = Detector(own_method, {k: tensors.pop(f"{name}/{k}") for k in _TENSORS[own_method]}, float(layer["threshold"]),
                           int(layer.get("k", KNN_K)))
            parts.append((name, int(layer["start"]), int(layer["stop"]), det))
            if parts[-1][1] != (parts[-2][2] if len(parts) > 1 else 0) or det.dim != parts[-1][2] - parts[-1][1]:
                raise ValueError(f"layer {name!r} does not fit its slice of the features")
        rest = {k: v for k, v in meta.items() if k not in ("method", "threshold", "layers", "combine")}
        return Layered(parts, float(meta["threshold"]), rest, method, meta.get("combine", Layered.combine)), tensors
    det = Detector(method, {k: tensors.pop(k) for k in _TENSORS[method]}, float(meta["threshold"]), int(meta.get("k", KNN_K)),
                   {k: v for k, v in meta.items() if k not in ("method", "threshold", "k")})
    return det, tensors
