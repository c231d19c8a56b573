"""The one forward pass: a model-ready batch -> logits (a PyTorch module or an ONNX Runtime session)
-> flip test-time augmentation (the mean logits of the image and its horizontal mirror) ->
temperature -> probabilities. Validation in training, evaluation, predict, explain, cascades and
serve all call it, so a run gives one answer for one image whichever way it is asked."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from .data.preprocessing import Preprocessing
from .runtime import autocast_context


class Net:
    """A PyTorch module or an ONNX Runtime session behind one `logits(x)` (float32, on the CPU)."""

    def __init__(self, model: nn.Module | None = None, session=None, device: torch.device | None = None,
                 amp_dtype: torch.dtype | None = None):
        if (model is None) == (session is None):
            raise ValueError("Net needs exactly one of a model or an ONNX session")
        self.model = model.eval() if model is not None else None
        self.session = session
        self.input_name = session.get_inputs()[0].name if session is not None else None
        self.device = device or (next(model.parameters(), torch.empty(0)).device if model is not None else torch.device("cpu"))
        self.amp_dtype = amp_dtype

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            arr = np.ascontiguousarray(x.detach().cpu().contiguous().numpy(), dtype=np.float32)
            return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0].astype(np.float32))
        with torch.inference_mode(), autocast_context(self.device, self.amp_dtype):
            return self.model(x.to(self.device, non_blocking=True)).float().cpu()

    @property
    def has_features(self) -> bool:
        """Whether this network can return its penultimate features (an ONNX file exported before
        they were added has only the logits)."""
        if self.session is not None:
            return len(self.session.get_outputs()) > 1
        return has_feature_head(self.model)

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the guard's features: guard_layers' pooled outputs, then the penultimate features) of a batch."""
        if self.session is not None:
            arr = np.ascontiguousarray(x.detach().cpu().contiguous().numpy(), dtype=np.float32)
            z, f = self.session.run(None, {self.input_name: arr})[:2]
            return torch.from_numpy(z.astype(np.float32)), torch.from_numpy(f.astype(np.float32))
        with torch.inference_mode(), autocast_context(self.device, self.amp_dtype):
            z, f = logits_and_features(self.model, x.to(self.device, non_blocking=True))
            return z.float().cpu(), f.float().cpu()


def has_feature_head(model: nn.Module) -> bool:
    return callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))


class GuardLayer(NamedTuple):
    """A layer whose pooled output the guard reads: `pool` "mean" is the global average of each
    channel, "std" its spatial standard deviation (how much the channel varies across the image: a
    texture and sharpness signature that averages hide)."""

    module: str
    channels: int
    pool: str = "mean"

    @property
    def name(self) -> str:
        return self.module if self.pool == "mean" else f"{self.module}:{self.pool}"


POOLS = ("mean", "std")
TEXTURE_REDUCTION = 4  # the stage whose spatial spread the guard reads: the first at a quarter of the input


def guard_layers(model: nn.Module) -> list[GuardLayer]:
    """The layers whose pooled outputs come before the penultimate features in the features the guard
    reads: the model's own `guard_layers`, else, from timm's feature_info, the spatial standard
    deviation of the first stage at a quarter of the input's resolution (blocks.1 of an EfficientNet)
    and the global average of the last stage (blocks.6). benchmarks/ood_layers.py measured every stage
    and both poolings: the last stage's averages flag brain_tumor_mri slices that an alzheimer_mri
    model's penultimate features let through; the quarter-resolution stage's spread, by nearest
    training neighbour, flags alzheimer_mri slices that a brain_tumor_mri model takes for its own,
    without flagging more of its own (shifted) test split. Newer layers go first, so a guard fitted
    on fewer layers still finds its columns at the end."""
    own = getattr(model, "guard_layers", None)
    if own is not None:
        return [GuardLayer(*entry) for entry in own]
    info = getattr(model, "feature_info", None)
    entries = info if isinstance(info, list) else getattr(info, "info", None)
    if not has_feature_head(model) or not entries or not all("module" in e and "num_chs" in e for e in entries):
        return []
    texture = [GuardLayer(e["module"], int(e["num_chs"]), "std") for e in entries
               if e.get("reduction") == TEXTURE_REDUCTION and e is not entries[-1]][:1]
    return [*texture, GuardLayer(entries[-1]["module"], int(entries[-1]["num_chs"]))]


def pooled(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, C) of an (N, C, H, W) activation: the channels' spatial mean or standard deviation."""
    mean = x.mean((2, 3))
    if pool == "mean":
        return mean
    if pool != "std":
        raise ValueError(f"unknown pooling {pool!r} (one of {', '.join(POOLS)})")
    d = x - mean[:, :, None, None]
    return (d * d).mean((2, 3)).sqrt()


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits and the guard's features, from one pass through the backbone: the pooled
    outputs of `guard_layers(model)`, then the features its classifier layer reads (timm's
    pre_logits), always last, so a guard fitted on those alone reads the last columns."""
    if not has_feature_head(model):
        raise ValueError(f"{type(model).__name__} has no forward_features/forward_head: its features cannot be read")
    layers = guard_layers(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
             for n in dict.fromkeys(layer.module for layer in layers)]
    try:
        fmap = model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    feats = model.forward_head(fmap, pre_logits=True)
    classifier = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    # In eval mode the head after pre_logits is the classifier alone (timm's dropout is off), so it is
    # applied to the features rather than pooling twice; models without get_classifier run their head.
    z = classifier(feats) if isinstance(classifier, nn.Module) and not model.training else model.forward_head(fmap)
    if layers:
        feats = torch.cat([*(pooled(seen[layer.module].float(), layer.pool).to(feats.dtype) for layer in layers), feats], 1)
    return z, feats


class WithFeatures(nn.Module):
    """A model whose forward returns (logits, features): what the ONNX export traces."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return logits_and_features(self.model, x)


def as_net(net: Net | nn.Module) -> Net:
    return net if isinstance(net, Net) else Net(net)


def tta_logits(net: Net | nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """The logits of a batch; with `tta`, the mean of the image's and its horizontal mirror's, both
    in one call (as tta_outputs does: one batch for the guard's path and this one; a single
    brain_tumor_mri image on 1 thread took 19.7 ms instead of 25.3 ms as two calls, benchmarks/ood.py)."""
    net = as_net(net)
    if not tta:
        return net.logits(x)
    z = net.logits(torch.cat([x, x.flip(3)]))
    return (z[: len(x)] + z[len(x) :]) / 2


def tta_outputs(net: Net | nn.Module, x: torch.Tensor, tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) of a batch; with `tta`, each the mean of the image's and its mirror's."""
    net = as_net(net)
    if not tta:
        return net.outputs(x)
    z, f = net.outputs(torch.cat([x, x.flip(3)]))
    n = len(x)
    return (z[:n] + z[n:]) / 2, (f[:n] + f[n:]) / 2


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Probabilities of logits divided by the temperature (float64); a single-logit binary head
    gives [1 - sigmoid, sigmoid]."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if z.ndim == 2 and z.shape[1] == 1:
        p = 1 / (1 + np.exp(-z))
        return np.concatenate([1 - p, p], 1)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def forward(net: Net | nn.Module, x: torch.Tensor, tta: bool = False, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, logits) of a model-ready batch, as float32 arrays of shape (N, K)."""
    z = tta_logits(net, x, tta).numpy()
    return softmax(z, temperature).astype(np.float32), z


def forward_features(net: Net | nn.Module, x: torch.Tensor, tta: bool = False,
                     temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, logits, the guard's features: see logits_and_features) of a model-ready batch."""
    z, f = tta_outputs(net, x, tta)
    z = z.numpy()
    return softmax(z, temperature).astype(np.float32), z, f.numpy()


def forward_images(net: Net | nn.Module, images: np.ndarray, prep: Preprocessing, tta: bool = False,
                   temperature: float = 1.0, batch_size: int = 64, features: bool = False) -> tuple[np.ndarray, ...]:
    """(N, H, W, C) uint8 images already at the run's size -> (probabilities, logits[, features])."""
    return _batched(net, (images[i : i + batch_size] for i in range(0, len(images), batch_size)), prep, tta, temperature,
                    features=features)


def predict_rows(net: Net | nn.Module, images: np.ndarray, rows: np.ndarray, prep: Preprocessing, batch_size: int = 64,
                 tta: bool = False, temperature: float = 1.0, features: bool = False) -> tuple[np.ndarray, ...]:
    """Rows of a decoded-image cache -> (probabilities, logits), in the order of `rows`; with
    `features`, (probabilities, logits, the guard's features)."""
    order = np.argsort(rows, kind="stable")  # sequential memmap reads, results put back in order
    out = _batched(net, (images[rows[order[s : s + batch_size]]] for s in range(0, len(rows), batch_size)),
                   prep, tta, temperature, features)
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    return tuple(a[inv] for a in out)


def _batched(net, batches, prep: Preprocessing, tta: bool, temperature: float, features: bool = False) -> tuple[np.ndarray, ...]:
    net = as_net(net)
    parts: list[tuple] = []
    for batch in batches:
        x = prep(np.require(batch, requirements=["C", "W"]))
        parts.append(forward_features(net, x, tta, temperature) if features else forward(net, x, tta, temperature))
    if not parts:
        return tuple(np.zeros((0, 0), np.float32) for _ in range(3 if features else 2))
    return tuple(np.concatenate(a) for a in zip(*parts))
