"""The compute runtime: precision and autocast, shared by training, the forward pass and LIME.

Choosing the compute precision. bf16 autocast speeds dense convolutions 1.3-1.9x on CPUs with
AVX512-BF16/AMX and slows depthwise ones (shared/notes/cpu-performance.md), so 'auto' decides per
architecture; on CUDA it uses bf16 where supported, else fp16 with a gradient scaler."""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn as nn


@functools.cache
def cpu_has_fast_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def depthwise_share(model: nn.Module) -> float:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return 0.0
    dw = [m for m in convs if m.groups > 1 and m.groups == m.in_channels]
    return len(dw) / len(convs)


def choose_amp_dtype(model: nn.Module, device: torch.device, precision: str) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_fast_bf16() and depthwise_share(model) < 0.2 else None


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
