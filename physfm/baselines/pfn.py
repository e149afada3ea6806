"""A small Particle Flow Network (Deep Sets; Komiske, Metodiev, Thaler 2019) trained from scratch.

Inputs are the backbone's per-particle features (``physfm.features.JET_DEFAULT`` and ``max_len`` 64 by
default, the defaults of ``pretrain.features`` / ``pretrain.max_len``; a study that changes those should
pass the same here), padded as the backbone reads them, normalised with the mean/std of the fit part's particles.
Each particle goes through Phi (an MLP, ``phi_sizes``), the per-particle outputs are summed over the
real particles, and F (an MLP, ``f_sizes``) maps the sum to class logits.

Training uses the n labels of the cell only, split into the train and validation parts of the
study's budget protocol (the same parts every fine-tuning run uses); AdamW at a constant ``lr``; the
validation loss is measured every ``eval_every`` steps, training stops after ``patience`` evaluations
without improvement and the best model is kept. Budgets are steps, so results do not depend on the
machine. ``device`` (where it runs) is a command-line flag, as for fine-tuning, not a setting.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from physfm.features import JET_DEFAULT


@dataclass
class PFNConfig:
    """Settings of the PFN baseline (schema: ``baselines.pfn``)."""

    features: list[str] = field(default_factory=lambda: list(JET_DEFAULT))
    max_len: int = 64  # the pretraining default (pretrain.max_len): the hardest 64 particles
    phi_sizes: list[int] = field(default_factory=lambda: [100, 100, 128])
    f_sizes: list[int] = field(default_factory=lambda: [100, 100])
    dropout: float = 0.0
    lr: float = 0.001
    weight_decay: float = 0.0001
    batch_size: int = 64
    max_steps: int = 2000
    eval_every: int = 25
    patience: int = 10

    def __post_init__(self) -> None:
        for name in ("max_len", "batch_size", "max_steps", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"baselines.pfn {name} must be at least 1, got {getattr(self, name)}")
        if not self.phi_sizes or not self.features:
            raise ValueError("baselines.pfn needs at least one feature and one Phi layer")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mlp(sizes: Sequence[int], dropout: float, last_activation: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return layers


class PFN(nn.Module):
    """``(B, L, F)`` normalised features + ``(B, L)`` mask -> ``(B, n_classes)`` logits."""

    def __init__(self, n_features: int, n_classes: int, cfg: PFNConfig) -> None:
        super().__init__()
        self.phi = nn.Sequential(*_mlp([n_features, *cfg.phi_sizes], cfg.dropout, last_activation=True))
        self.f = nn.Sequential(*_mlp([cfg.phi_sizes[-1], *cfg.f_sizes, n_classes], cfg.dropout, last_activation=False))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.phi(x) * mask.unsqueeze(-1).to(x.dtype)
        return self.f(h.sum(dim=1))


def train_pfn(
    x: np.ndarray,
    mask: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cfg: PFNConfig,
    seed: int,
    parts: tuple[np.ndarray, np.ndarray],
    *,
    device: str = "auto",
    run: Any = None,
    progress: bool = False,
) -> tuple[PFN, dict[str, Any], dict[str, Any]]:
    """Train on the n labelled events; return model, norm meta, record.

    ``parts``: positions of the budget's train and validation parts (the label subsets' protocol);
    early stopping and the checkpoint choice see the validation part only.

    ``x`` are raw features in ``cfg.features`` order; the returned meta (``features``, ``norm``,
    ``max_len``) normalises inputs with :func:`physfm.models.backbone.normalize`.
    """
    from physfm.finetune.classification import ClassificationTask
    from physfm.finetune.loop import LoopSettings, fit, tensors, train_record
    from physfm.finetune.train import fit_norm
    from physfm.models.backbone import normalize
    from physfm.runtime import adamw, device_of

    t0 = time.perf_counter()
    y = np.asarray(y, dtype=np.int64)
    fit_pos, val_pos = parts
    meta = {"features": list(cfg.features), "max_len": cfg.max_len, "norm": fit_norm(x[fit_pos], mask[fit_pos])}
    dev = device_of(device)
    xn = normalize(x, mask, meta)
    part = lambda pos: tensors({"mask": mask[pos], "target": y[pos]}, xn[pos])  # noqa: E731

    torch.manual_seed(seed)
    model = PFN(x.shape[-1], n_classes, cfg).to(dev)
    opt = adamw([{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}], cfg.lr, betas=(0.9, 0.999))
    task = ClassificationTask([str(i) for i in range(max(n_classes, 2))])  # the loss and score, not the head
    settings = LoopSettings(
        cfg.max_steps,
        cfg.eval_every,
        cfg.patience,
        cfg.batch_size,
        seed,
        order_salt=0x9F17,
        clip_norm=None,
        eval_batch=512,
    )
    result = fit(
        model,
        task,
        part(fit_pos),
        part(val_pos),
        opt,
        settings,
        device=dev,
        run=run,
        progress=progress,
        desc=f"pfn n={len(y)} seed={seed}",
    )
    n = len(fit_pos)
    record = {
        "fit_positions": fit_pos.tolist(),
        "val_positions": val_pos.tolist(),
        "n_fit": int(n),
        "n_val": int(len(val_pos)),
        **train_record(result),
        "wall_seconds": time.perf_counter() - t0,
        "device": str(dev),
        "history": result.history,
    }
    return model.eval(), meta, record


@torch.no_grad()
def pfn_probs(model: PFN, meta: dict[str, Any], x: np.ndarray, mask: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities ``(n, n_classes)`` of raw features ``x`` (in ``meta["features"]`` order)."""
    from physfm.finetune.model import batched

    device = next(model.parameters()).device
    return batched(lambda xb, mb: torch.softmax(model(xb, mb), dim=1), x, mask, meta, batch_size, device)
