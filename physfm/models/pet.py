"""PET's local block (OmniLearn, arXiv 2404.16091): kNN edge convolutions in front of the transformer.

``BackboneConfig(local="knn")`` puts a :class:`LocalBlock` between the feature embedding and the
transformer: the block's output is added to each particle's embedding (a residual), so every objective
and every fine-tuning mode can use it with the same inputs.

* **Layer 1**: the ``local_k`` nearest neighbours of each particle in (Δη, Δφ) (the input columns
  ``local_coords``; the default ``[1, 2]`` are ``deta`` and ``dphi`` in physfm's jet feature lists, in
  the backbone's normalised units), edge features ``[h_j − h_i, h_i]`` of the embedded particles, an
  MLP (Linear, GELU, Linear), the mean over the neighbours, a GELU. :class:`EdgeConv` computes it
  without building the ``(B, L, K, 2d)`` edge tensor (the same function at about a tenth of the FLOPs).
* **Layer 2**: the same on layer 1's output, with the kNN re-run in that feature space (DGCNN's
  dynamic graph, as PET does).
* **Padding**: a padded particle (``valid`` False) is never anyone's neighbour, and its own output is
  zero. Particles with fewer than ``local_k`` valid neighbours average over the ones they have.
  MPM passes its masked particles as not valid too: their coordinates must not leak into their
  neighbours' states.
* The block is permutation-equivariant (up to exact distance ties): it uses no particle order.

ParT / PET v2 pairwise attention biases (log m²_ij, log ΔR_ij, log kT_ij) are *not* wired in: they need
un-normalised kinematics inside the backbone and a float attention mask, which takes the GPU's fused
flash path away. benchmarks/pet.py measures what they would cost (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def knn_indices(coords: Tensor, valid: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices ``(B, L, k)`` of each particle's ``k`` nearest valid neighbours (itself excluded) in
    ``coords`` ``(B, L, C)``, and ``(B, L, k)`` bool: whether that neighbour exists (a jet with fewer
    than ``k + 1`` valid particles has fewer neighbours)."""
    length = coords.shape[1]
    k = min(k, max(length - 1, 1))
    d = torch.cdist(coords.float(), coords.float())
    blocked = ~valid[:, None, :] | torch.eye(length, dtype=torch.bool, device=coords.device)[None]
    d = d.masked_fill(blocked, float("inf"))
    dist, idx = torch.topk(d, k, dim=-1, largest=False)
    return idx, torch.isfinite(dist) & valid[:, :, None]


def gather_neighbours(h: Tensor, idx: Tensor) -> Tensor:
    """``(B, L, k, C)``: ``h[b, idx[b, i, n]]``."""
    b, length, k = idx.shape
    flat = idx.reshape(b, length * k, 1).expand(-1, -1, h.shape[-1])
    return torch.gather(h, 1, flat).view(b, length, k, h.shape[-1])


class EdgeConv(nn.Module):
    """One edge convolution: the mean over the neighbours j of i of MLP([h_j − h_i, h_i]), with the
    MLP Linear → GELU → Linear.

    Computed without materialising the edge features (exactly, up to float rounding): the first
    Linear of ``[h_j − h_i, h_i]`` is ``W_n h_j + (W_c − W_n) h_i + b``, two per-particle products, and
    the second Linear commutes with the mean. Per particle that costs 3 d² multiply-adds plus K d
    for the GELUs, instead of 3 K d² edge by edge."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.neighbour = nn.Linear(d_in, d_out, bias=False)  # W_n, applied to h_j - h_i
        self.centre = nn.Linear(d_in, d_out)  # W_c, applied to h_i
        self.proj = nn.Linear(d_out, d_out)

    def forward(self, h: Tensor, idx: Tensor, has: Tensor) -> Tensor:
        p = self.neighbour(h)
        q = self.centre(h) - p
        pre = gather_neighbours(p, idx) + q.unsqueeze(2)
        w = has.unsqueeze(-1).to(pre.dtype)
        n = w.sum(2)
        mean_act = (torch.nn.functional.gelu(pre) * w).sum(2) / n.clamp(min=1.0)
        return self.proj(mean_act) * (n > 0).to(pre.dtype)  # no neighbours: no message (not the bias)

    def reference(self, h: Tensor, idx: Tensor, has: Tensor) -> Tensor:
        """The same, edge by edge: MLP([h_j − h_i, h_i]) then the mean (for tests)."""
        nb = gather_neighbours(h, idx)
        centre = h.unsqueeze(2).expand_as(nb)
        e = torch.cat([nb - centre, centre], dim=-1)
        w1 = torch.cat([self.neighbour.weight, self.centre.weight], dim=1)
        msg = self.proj(torch.nn.functional.gelu(e @ w1.T + self.centre.bias))
        w = has.unsqueeze(-1).to(msg.dtype)
        return (msg * w).sum(2) / w.sum(2).clamp(min=1.0) * (w.sum(2) > 0).to(msg.dtype)


class LocalBlock(nn.Module):
    """Two kNN edge convolutions: in (Δη, Δφ), then in the first one's feature space; see the module docstring."""

    def __init__(self, d_model: int, k: int, coords: list[int] | tuple[int, ...]) -> None:
        super().__init__()
        self.k, self.coords = int(k), [int(c) for c in coords]
        self.edge1 = EdgeConv(d_model, d_model)
        self.edge2 = EdgeConv(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, h: Tensor, valid: Tensor) -> Tensor:
        """``(B, L, d)`` local features of the embedded particles ``h``; ``x`` ``(B, L, F)`` gives the
        coordinates of the first kNN; ``valid`` ``(B, L)`` bool marks the particles that take part."""
        w = valid.unsqueeze(-1).to(h.dtype)
        idx, has = knn_indices(x[..., self.coords], valid, self.k)
        l1 = torch.nn.functional.gelu(self.edge1(h, idx, has)) * w
        idx, has = knn_indices(l1.detach(), valid, self.k)
        l2 = self.edge2(l1, idx, has) * w
        return self.out(l2) * w
