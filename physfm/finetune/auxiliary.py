"""The ``scratch_global`` ablation: scratch training with the pretraining's label-free global targets
as an auxiliary loss.

Pretraining also regresses event-level targets (``pretrain.global_targets``: log jet mass, log
multiplicity) from the class token. To measure how much of the pretrained model's gain those
targets explain, scratch is given the same targets: a linear head on the backbone's event
embedding (:meth:`physfm.models.backbone.Backbone.pool`, the class token) regresses them, standardised on the
run's train part, and ``global_aux_weight`` times their mean squared error is added to the
classification loss. The targets need no labels; they are computed from the same particles
(hardest ``max_len``) as in pretraining (:func:`physfm.features.global_targets`). The auxiliary
head is not saved: the classifier written is the same kind as any other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from physfm.data.loader import load_arrays
from physfm.features import GLOBAL_TARGETS, global_targets


class GlobalAux(nn.Module):
    """Auxiliary regression of global targets from the backbone's event embedding.

    Hooks ``model.backbone``: every forward pass stores the hidden states, and :meth:`loss` scores
    the events of the latest training batch (their indices into the train part).
    """

    def __init__(
        self, model: nn.Module, data: Any, indices: np.ndarray, names: list[str], max_len: int, weight: float
    ) -> None:
        super().__init__()
        if unknown := sorted(set(names) - set(GLOBAL_TARGETS)):
            raise ValueError(f"global_aux_targets {unknown} are unknown; choose from {sorted(GLOBAL_TARGETS)}")
        needed = sorted({f for n in names for f in GLOBAL_TARGETS[n].features})
        arr = load_arrays(data, "train", features=needed, max_len=max_len, indices=indices)
        raw = {f: arr["x"][..., j] for j, f in enumerate(needed)}
        g = global_targets(list(names), raw, arr["mask"])
        std = g.std(0)
        g = (g - g.mean(0)) / np.where(std > 1e-6, std, 1.0)
        self.register_buffer("target", torch.from_numpy(g.astype(np.float32)), persistent=False)
        self.backbone = [model.backbone]  # a list: not registered as a submodule (its parameters are the model's)
        self.head = nn.Linear(model.backbone.config.d_model, len(names))
        self.weight = float(weight)
        self._h: tuple[Tensor, Tensor] | None = None
        model.backbone.register_forward_hook(self._hook, with_kwargs=True)
        self.to(next(model.parameters()).device)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor) -> None:
        mask = args[1] if len(args) > 1 else kwargs["mask"]
        self._h = (out, mask)

    def loss(self, idx: Tensor) -> Tensor:
        """``global_aux_weight`` x MSE of the standardised targets of train events ``idx`` (the last batch)."""
        if self._h is None:
            raise RuntimeError("GlobalAux.loss called before a forward pass of the backbone")
        h, mask = self._h
        pred = self.head(self.backbone[0].pool(h, mask)).float()
        return self.weight * ((pred - self.target[idx.to(self.target.device)]) ** 2).mean()


def maybe_global_aux(cfg: Any, model: nn.Module, data: Any, indices: np.ndarray, max_len: int) -> GlobalAux | None:
    """The auxiliary loss of a run whose ``global_aux_weight`` is positive (scratch only), else None."""
    if not getattr(cfg, "global_aux_weight", 0.0):
        return None
    if cfg.mode != "scratch":
        raise ValueError(f"global_aux_weight is for scratch runs (the scratch_global ablation), not mode {cfg.mode}")
    return GlobalAux(model, data, indices, list(cfg.global_aux_targets), max_len, cfg.global_aux_weight)
