"""Learning-rate multipliers by optimiser step: linear warm-up, then cosine, step or constant."""

from __future__ import annotations

import math


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, kind: str, min_ratio: float = 0.01) -> float:
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "step":  # x0.1 at 60% and 85% of training
        return 1.0 if progress < 0.6 else 0.1 if progress < 0.85 else 0.01
    raise ValueError(f"unknown schedule {kind!r}")
