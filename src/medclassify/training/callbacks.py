"""Per-epoch bookkeeping of the fit loop: history, the weights that ship (best, last-epochs average), early stopping."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn as nn

from ..io import write_csv
from ..run import save_weights
from .metrics import monitor_value

HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy",
                  "val_macro_f1", "val_auc", "seconds", "train_images_per_s", "data_wait_share"]


class History:
    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []

    def append(self, row: dict) -> None:
        self.rows.append({k: row.get(k) for k in HISTORY_FIELDS})

    def write(self) -> None:
        write_csv(self.path, HISTORY_FIELDS, ([r.get(k) for k in HISTORY_FIELDS] for r in self.rows))


class BestCheckpoint:
    """Keeps the weights of the epoch with the best monitored validation value. `update` decides,
    `save` writes: the fit loop saves only after the epoch's checkpoint is committed, so a resumed
    training never finds best weights newer than its checkpoint."""

    def __init__(self, path: Path, monitor: str):
        self.path, self.monitor = path, monitor
        self.best = -math.inf
        self.best_epoch: int | None = None

    def update(self, model: nn.Module, epoch: int, metrics: dict) -> bool:
        value = monitor_value(metrics, self.monitor)
        if value > self.best or self.best_epoch is None:
            self.best, self.best_epoch = value, epoch
            return True
        return False

    def save(self, model: nn.Module) -> None:
        save_weights(model, self.path, metadata={"epoch": str(self.best_epoch)})

    def state(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}  # json keeps -inf and NaN (as -Infinity, NaN)

    def load_state(self, state: dict) -> None:
        self.best, self.best_epoch = float(state["best"]), state["best_epoch"]


class EarlyStopping:
    def __init__(self, patience: int):
        self.patience = patience
        self.bad_epochs = 0

    def step(self, improved: bool) -> bool:
        """True when training should stop."""
        if not self.patience:
            return False
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        return self.bad_epochs >= self.patience


class WeightAverage:
    """Exponential moving average of the weights over about one epoch of steps (buffers such as
    batch-norm statistics are copied). Short runs end while the learning rate is still moving the
    weights around; the average sits nearer the middle of the last epoch's basin. The decay warms up
    as 1 - 1/(step + 1) so the first steps do not drag the random head along."""

    def __init__(self, model: nn.Module, horizon_steps: int):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = 1.0 - 1.0 / max(10, horizon_steps)
        self.steps = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, 1.0 - 1.0 / (self.steps + 1))
        for avg, p in zip(self.module.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1.0 - d)
        for avg, b in zip(self.module.buffers(), model.buffers()):
            avg.copy_(b)


class LastEpochsAverage:
    """Uniform average of the weights at the end of the last `k` planned epochs, at most the second
    half of the plan (floating-point
    tensors averaged, integer buffers such as batch counts taken from the last epoch). At the end of a
    completed cosine schedule these epochs sit in one basin, and their mean is steadier across seeds
    than any single epoch picked by a noisy validation metric. The running sum is part of the
    epoch checkpoint, so a resumed training averages the same epochs."""

    def __init__(self, k: int):
        self.k = k
        self.sum: dict[str, torch.Tensor] = {}
        self.epochs: list[int] = []

    def collect(self, model: nn.Module, epoch: int, planned: int) -> None:
        if epoch <= max(planned - self.k, planned // 2):  # a short run never averages in its first, untrained half
            return
        for name, t in model.state_dict().items():
            t = t.detach().to("cpu")
            if t.is_floating_point():
                self.sum[name] = self.sum[name] + t.double() if name in self.sum else t.double().clone()
        self.epochs.append(epoch)

    def apply(self, model: nn.Module) -> nn.Module:
        """A copy of `model` holding the average (the model itself when nothing was collected)."""
        if not self.epochs:
            return model
        out = copy.deepcopy(model)
        state = out.state_dict()
        for name, total in self.sum.items():
            state[name].copy_((total / len(self.epochs)).to(state[name].dtype))
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"avg/{k}": v for k, v in self.sum.items()}

    def state(self) -> dict:
        return {"epochs": self.epochs}

    def load(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self.sum = {k.removeprefix("avg/"): v for k, v in tensors.items() if k.startswith("avg/")}
        self.epochs = list(state["epochs"])
