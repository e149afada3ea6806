"""Embedding diagnostics that catch representation collapse early (pure functions, torch in, float tensors out).

* :func:`alignment` (Wang & Isola 2020): mean ‖f(x) − f(y)‖^α over positive pairs of L2-normalised
  embeddings; 0 when every pair coincides, 4 (α = 2) when every pair is antipodal.
* :func:`uniformity` (Wang & Isola 2020): log mean exp(−t ‖f(x) − f(y)‖²) over all pairs of a batch of
  L2-normalised embeddings; 0 for a collapsed batch (all equal), more negative the more uniformly the
  embeddings cover the sphere.
* :func:`koleo` (Sablayrolles et al. 2019, DINOv2's regulariser): −mean log of each L2-normalised
  embedding's distance to its nearest neighbour in the batch; large when embeddings bunch up.
* :func:`effective_rank` (Roy & Vetterli 2007): exp of the entropy of the normalised singular values
  of the (centred) embedding matrix; between 1 (rank one, a collapsed representation) and
  min(n, d) (all directions used equally).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """Mean ‖x̂_i − ŷ_i‖^α of positive pairs (rows of ``x`` and ``y``), after L2 normalisation."""
    if x.shape != y.shape:
        raise ValueError(f"alignment needs pairs of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = F.normalize(x.float(), dim=-1), F.normalize(y.float(), dim=-1)
    return (x - y).norm(dim=-1).pow(alpha).mean()


def uniformity(x: Tensor, t: float = 2.0) -> Tensor:
    """log mean over pairs i < j of exp(−t ‖x̂_i − x̂_j‖²), after L2 normalisation (needs >= 2 rows)."""
    if x.shape[0] < 2:
        raise ValueError("uniformity needs at least two embeddings")
    x = F.normalize(x.float(), dim=-1)
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def koleo(x: Tensor, eps: float = 1e-8) -> Tensor:
    """−mean_i log(min_{j≠i} ‖x̂_i − x̂_j‖ + eps) over a batch of L2-normalised embeddings (>= 2 rows)."""
    if x.shape[0] < 2:
        raise ValueError("koleo needs at least two embeddings")
    x = F.normalize(x.float(), dim=-1)
    d = torch.cdist(x, x)
    d = d + torch.eye(len(x), device=x.device) * 1e6  # not one's own neighbour
    return -torch.log(d.min(dim=1).values + eps).mean()


def effective_rank(x: Tensor, center: bool = True, eps: float = 1e-12) -> Tensor:
    """exp(H(σ / Σσ)) of the singular values σ of ``x`` (n × d), centred over rows by default."""
    x = x.float()
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    total = s.sum()
    if float(total) <= eps:
        return torch.ones((), device=x.device)  # all rows equal: a single point
    p = s / total
    return torch.exp(-(p * torch.log(p.clamp(min=eps))).sum())
