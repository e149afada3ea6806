"""The training runtime shared by every loop (pretraining, fine-tuning, baselines, benchmarks).

Here:

* :func:`device_of`: ``auto`` -> CUDA when available, else CPU;
* :func:`autocast`: bf16 autocast on CUDA, a no-op on CPU (CPU runs stay fp32 and bit-reproducible);
* :func:`warmup_cosine`: the learning-rate factor of every loop: linear warm-up, then cosine decay.

In the submodules (their public names are importable from ``physfm.runtime`` too):

* :mod:`~physfm.runtime.distributed`: :func:`start` -> :class:`Runtime` (rank info, device, DDP
  wrapping, the collectives a loop needs, all no-ops in one process);
* :mod:`~physfm.runtime.optim`: AdamW parameter groups (:func:`decay_groups`), :func:`adamw`,
  :func:`cosine_schedule` and :func:`optimizer_step` (backward, clip, step, then the ``after_step``
  hooks, e.g. an EMA teacher update);
* :mod:`~physfm.runtime.signals`: :class:`StopSignals` (SIGTERM/SIGUSR1 -> checkpoint, then
  :class:`Preempted`, exit status :data:`PREEMPTED_EXIT_CODE`);
* :mod:`~physfm.runtime.checkpoint`: :class:`Checkpointer` (exact resume per configuration hash,
  per-rank RNG and data positions) over atomic ``last.pt`` files;
* :mod:`~physfm.runtime.meters`: summed statistics, the logging :class:`Window`, :func:`due`, the progress bar.

A loop reads: ``rt = start(device)``; build the model; ``opt = adamw(decay_groups(model, wd), lr)``,
``sched = cosine_schedule(...)``; ``ck = Checkpointer(dir, hash, rt, {...})``, ``ck.restore(resume)``;
``model = rt.wrap(model)``; then per step ``optimizer_step(loss, opt, sched, params, clip, step=...,
total_steps=..., after_step=[...])`` inside ``with StopSignals(...) as stop``.
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


# the submodules need the names above: imported after them
from physfm.runtime.checkpoint import (  # noqa: E402
    RESUME_MODES,
    Checkpointer,
    Restored,
    checkpoint_info,
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from physfm.runtime.distributed import (  # noqa: E402
    DistInfo,
    Runtime,
    all_reduce,
    pick_device,
    start,
    unwrap,
    world_size,
)
from physfm.runtime.meters import Window, accumulate, due, means, progress_bar  # noqa: E402
from physfm.runtime.optim import AfterStep, adamw, cosine_schedule, decay_groups, optimizer_step  # noqa: E402
from physfm.runtime.signals import PREEMPTED_EXIT_CODE, Preempted, StopSignals  # noqa: E402

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "RESUME_MODES",
    "AfterStep",
    "Checkpointer",
    "DistInfo",
    "Preempted",
    "Restored",
    "Runtime",
    "StopSignals",
    "Window",
    "accumulate",
    "adamw",
    "all_reduce",
    "autocast",
    "checkpoint_info",
    "copy_checkpoint",
    "cosine_schedule",
    "decay_groups",
    "device_of",
    "due",
    "load_checkpoint",
    "means",
    "optimizer_step",
    "pick_device",
    "progress_bar",
    "save_checkpoint",
    "start",
    "unwrap",
    "warmup_cosine",
    "world_size",
]
