"""Training-runtime helpers shared by every loop (pretraining, fine-tuning, benchmarks).

* :func:`device_of`: ``auto`` -> CUDA when available, else CPU;
* :func:`autocast`: bf16 autocast on CUDA, a no-op on CPU (CPU runs stay fp32 and bit-reproducible);
* :func:`warmup_cosine`: the learning-rate factor of every loop: linear warm-up, then cosine decay.
"""

from __future__ import annotations

import contextlib
import math

import torch


def device_of(name: str | None = "auto") -> torch.device:
    """``auto`` (or ``None``) = CUDA when available (untested here: developed on CPU), else CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
