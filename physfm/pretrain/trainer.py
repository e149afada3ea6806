"""The module under pretraining (backbone + objective heads) and its validation pass."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from physfm.models.backbone import Backbone
from physfm.models.objectives import Objective
from physfm.pretrain.data import PretrainShards, make_loader
from physfm.runtime import Runtime, accumulate, all_reduce, autocast, means


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Every tensor of a batch on ``device`` (asynchronously from pinned memory)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class Pretrainer(nn.Module):
    """Backbone + objective heads, so that DDP wraps both.

    ``objective.attach(backbone)`` runs here (e.g. the EMA teacher starts as a copy of the backbone);
    the loop calls ``objective.after_step`` after every optimizer step through the runtime's
    ``after_step`` hooks (:func:`physfm.runtime.optimizer_step`).
    """

    def __init__(self, backbone: Backbone, objective: Objective) -> None:
        super().__init__()
        self.backbone, self.objective = backbone, objective
        objective.attach(backbone)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.objective(self.backbone, batch)


@torch.no_grad()
def evaluate(
    trainer: Pretrainer, ds: PretrainShards, runtime: Runtime, num_workers: int, max_batches: int = 0
) -> dict[str, float]:
    """Mean validation stats (``val/...``) over this rank's part of the split, summed exactly over ranks."""
    was_training = trainer.training
    trainer.eval()
    device = runtime.device
    acc: dict[str, Tensor] = {}
    for i, batch in enumerate(make_loader(ds, num_workers)):
        if max_batches and i >= max_batches:
            break
        with autocast(device):
            _, stats = trainer(to_device(batch, device))
        accumulate(acc, stats)
    keys = sorted({k for ks in runtime.gather(sorted(acc)) for k in ks})
    trainer.train(was_training)
    if not keys:
        return {}
    packed = all_reduce(torch.stack([acc[k] if k in acc else torch.zeros(2, device=device) for k in keys]))
    return means(dict(zip(keys, packed, strict=True)), "val/")
