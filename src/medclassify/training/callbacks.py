"""Per-epoch bookkeeping of the fit loop: history, best checkpoint, early stopping."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch.nn as nn

from ..evaluation.metrics import monitor_value
from ..run import save_weights

HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy",
                  "val_macro_f1", "val_auc", "seconds", "train_images_per_s"]


class History:
    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []

    def append(self, row: dict) -> None:
        self.rows.append({k: row.get(k) for k in HISTORY_FIELDS})
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
            w.writeheader()
            w.writerows(self.rows)


class BestCheckpoint:
    """Keeps the weights of the epoch with the best monitored validation value."""

    def __init__(self, path: Path, monitor: str):
        self.path, self.monitor = path, monitor
        self.best = -math.inf
        self.best_epoch: int | None = None

    def update(self, model: nn.Module, epoch: int, metrics: dict) -> bool:
        value = monitor_value(metrics, self.monitor)
        if value > self.best or self.best_epoch is None:
            self.best, self.best_epoch = value, epoch
            save_weights(model, self.path)
            return True
        return False


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
