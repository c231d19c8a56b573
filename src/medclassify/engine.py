"""The one forward pass: a model-ready batch -> logits (a PyTorch module or an ONNX Runtime session)
-> flip test-time augmentation (the mean logits of the image and its horizontal mirror) ->
temperature -> probabilities. Validation in training, evaluation, predict, explain, cascades and
serve all call it, so a run gives one answer for one image whichever way it is asked."""

from __future__ import annotations

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


def as_net(net: Net | nn.Module) -> Net:
    return net if isinstance(net, Net) else Net(net)


def tta_logits(net: Net | nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """The logits of a batch; with `tta`, the mean of the image's and its horizontal mirror's."""
    net = as_net(net)
    if not tta:
        return net.logits(x)
    if net.session is not None:  # one session call for both halves
        z = net.logits(torch.cat([x, x.flip(3)]))
        return (z[: len(x)] + z[len(x) :]) / 2
    return (net.logits(x) + net.logits(x.flip(3))) / 2


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


def forward_images(net: Net | nn.Module, images: np.ndarray, prep: Preprocessing, tta: bool = False,
                   temperature: float = 1.0, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, C) uint8 images already at the run's size -> (probabilities, logits)."""
    return _batched(net, (images[i : i + batch_size] for i in range(0, len(images), batch_size)), prep, tta, temperature)


def predict_rows(net: Net | nn.Module, images: np.ndarray, rows: np.ndarray, prep: Preprocessing, batch_size: int = 64,
                 tta: bool = False, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a decoded-image cache -> (probabilities, logits), in the order of `rows`."""
    order = np.argsort(rows, kind="stable")  # sequential memmap reads, results put back in order
    p, z = _batched(net, (images[rows[order[s : s + batch_size]]] for s in range(0, len(rows), batch_size)),
                    prep, tta, temperature)
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    return p[inv], z[inv]


def _batched(net, batches, prep: Preprocessing, tta: bool, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    net = as_net(net)
    probs, logits = [], []
    for batch in batches:
        p, z = forward(net, prep(np.require(batch, requirements=["C", "W"])), tta, temperature)
        probs.append(p)
        logits.append(z)
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(probs), np.concatenate(logits)
