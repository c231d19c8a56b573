"""Learning-rate multipliers by optimiser step: linear warm-up, then cosine, step or constant."""

from __future__ import annotations

import math


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, kind: str, min_ratio: float = 0.01,
                  time_progress: float | None = None) -> float:
    """`time_progress` (0..1, the share of the planned training time spent since warm-up) drives the
    decay when a time budget sizes the run: the schedule follows the clock towards the planned end,
    so a wrong early estimate of the machine's speed (another program busy during the first steps)
    is corrected as soon as the plan is. The step count still wins when the epoch cap ends the run
    first."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if time_progress is not None:
        progress = min(1.0, max(progress, time_progress))
    if kind == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "step":  # x0.1 at 60% and 85% of training
        return 1.0 if progress < 0.6 else 0.1 if progress < 0.85 else 0.01
    raise ValueError(f"unknown schedule {kind!r}")
