"""``contrastive``: SimCLR on jets (JetCLR, Dillon et al. 2021), NT-Xent on a projection of the event embedding.

Two views of each jet (by default JetCLR's: ``rotate+translate`` and
``rotate+collinear+collinear+smear+translate``) are encoded by the backbone and pooled; a two-layer
projection head maps each to ``projection_dim``; the NT-Xent loss with temperature τ (JetCLR:
τ = 0.1) pulls the two views of a jet together and pushes the other ``2B − 2`` embeddings of the
batch away. Under DDP the negatives are the rank's own batch.

Logged: ``loss_contrastive``, ``acc_positive`` (the other view is the most similar embedding),
``alignment`` and ``uniformity`` of the projections, ``embedding_rank`` of the pooled embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physfm.models.backbone import Backbone
from physfm.models.multiview import MultiViewObjective, ViewOptions
from physfm.models.objectives import Stats, _stat, register_objective

#: JetCLR's two views (its run script: x_i rotated and translated; x_j rotated, collinear-filled twice,
#: smeared and translated).
JETCLR_VIEWS = ("rotate+translate", "rotate+collinear+collinear+smear+translate")


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """NT-Xent of the positive pairs (z1_i, z2_i): mean over the 2B anchors of
    −log(exp(s_pos / τ) / Σ_{k ≠ anchor} exp(s_k / τ)), s = cosine similarity; and the top-1 accuracy."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    loss = F.cross_entropy(sim, target)
    acc = (sim.argmax(dim=1) == target).float().mean()
    return loss, acc


@dataclass
class ContrastiveOptions(ViewOptions):
    temperature: float = 0.1
    projection_dim: int = 128
    views: list[str] = field(default_factory=lambda: list(JETCLR_VIEWS))


@register_objective
class Contrastive(MultiViewObjective):
    """JetCLR / SimCLR: NT-Xent between two views of each event."""

    name = "contrastive"
    Options = ContrastiveOptions

    def __init__(self, d_model: int, options: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(d_model, options, **kw)
        o = self.options
        if len(o.views) != 2:
            raise ValueError(f"contrastive compares two views of each event; got views={o.views}")
        if o.temperature <= 0:
            raise ValueError(f"contrastive temperature must be > 0, got {o.temperature}")
        self.projector = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, o.projection_dim))

    def views(self) -> list[str]:
        return list(self.options.views)

    def forward(self, model: Backbone, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        h0, e0 = self.encode(model, batch, 0)
        h1, e1 = self.encode(model, batch, 1)
        z0, z1 = self.projector(e0), self.projector(e1)
        n = z0.shape[0]
        loss_c, acc = nt_xent(z0, z1, self.options.temperature)
        stats = {"loss_contrastive": _stat(loss_c * n, n), "acc_positive": _stat(acc * n, n)}
        stats.update(self.embedding_stats(z0, z1, e0))
        loss_g, gstats = self.view_global_loss(model, batch, {0: h0, 1: h1})
        stats.update(gstats)
        loss = loss_c + self.global_weight * loss_g
        stats["loss"] = _stat(loss * n, n)
        return loss, stats
