"""The optimizer side of every loop: AdamW parameter groups, the warm-up/cosine schedule, one step.

* :func:`decay_groups`: decoupled weight decay on ``nn.Linear`` weight matrices only (never on
  biases, norms, embeddings or learned tokens);
* :func:`adamw`: AdamW over such groups (fused on CUDA);
* :func:`cosine_schedule`: a ``LambdaLR`` of :func:`physfm.runtime.warmup_cosine`, which multiplies
  each group's own ``lr`` (so layer-wise learning rates keep their ratios);
* :func:`optimizer_step`: zero grads, backward, clip the gradient norm, step optimizer and schedule,
  then the ``after_step`` hooks (an EMA teacher update, a collapse check), in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from physfm.runtime import warmup_cosine

#: A hook run after every optimizer step with ``(step, total_steps)``; ``step`` counts completed steps.
AfterStep = Callable[[int, int], None]


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups of ``module``'s trainable parameters: Linear weights at ``weight_decay``, the rest at 0."""
    decay = {id(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
    ]


def adamw(
    groups: Sequence[dict[str, Any]], lr: float, betas: Sequence[float] = (0.9, 0.98), fused: bool = False
) -> torch.optim.AdamW:
    """AdamW over parameter ``groups`` (a group's own ``lr``/``weight_decay`` win); ``fused`` on CUDA."""
    kw = {"fused": True} if fused else {}
    b1, b2 = betas
    return torch.optim.AdamW(list(groups), lr=lr, betas=(b1, b2), **kw)


def cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to ``min_ratio`` of each group's learning rate at ``total_steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps, min_ratio)
    )


def optimizer_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    params: Iterable[Tensor],
    grad_clip: float,
    *,
    step: int,
    total_steps: int,
    after_step: Sequence[AfterStep] = (),
) -> Tensor:
    """One training step from ``loss``; returns the gradient norm before clipping.

    ``step`` is the number of steps completed *after* this one; each ``after_step`` hook is called
    with ``(step, total_steps)`` once the parameters are updated (a teacher's EMA follows the new student).
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    for hook in after_step:
        hook(step, total_steps)
    return gnorm
