"""Per-point semantic segmentation on top of patch features (tensors in, tensors out).

Patch states (e.g. :meth:`physfm.models.polarmae.PolarMAE.encode`) are carried back to every
point by inverse-distance interpolation over its ``k`` nearest valid patch centres (``k = 1``:
nearest centre), concatenated with the point's own features, and classified by an MLP.
:func:`segmentation_loss` is class-weighted cross-entropy with an optional focal term, since
Michel and delta points are rare. Metrics (F1, confusion matrix) are in
:mod:`physfm.evaluate.segmentation`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def interpolate(features: Tensor, centres: Tensor, valid: Tensor, xyz: Tensor, k: int = 3, eps: float = 1e-8) -> Tensor:
    """``(B, N, D)`` point features: the inverse-squared-distance weighted mean of the ``features``
    ``(B, P, D)`` of each point's ``k`` nearest valid ``centres`` ``(B, P, 3)``."""
    k = min(k, centres.shape[1])
    d2 = ((xyz[:, :, None, :] - centres[:, None, :, :]) ** 2).sum(-1)  # (B, N, P)
    d2 = d2.masked_fill(~valid[:, None, :], float("inf"))
    dist, idx = torch.topk(d2, k, dim=-1, largest=False)
    w = torch.where(torch.isfinite(dist), 1.0 / (dist + eps), torch.zeros_like(dist))
    w = w / w.sum(-1, keepdim=True).clamp(min=eps)
    b, n, _ = idx.shape
    gathered = torch.gather(features, 1, idx.reshape(b, n * k, 1).expand(-1, -1, features.shape[-1]))
    return (gathered.reshape(b, n, k, -1) * w.unsqueeze(-1).to(features.dtype)).sum(2)


class SegmentationHead(nn.Module):
    """Interpolated patch features (+ per-point inputs) -> per-point class logits."""

    def __init__(self, d_in: int, n_classes: int, point_features: int = 0, hidden: int = 128, k: int = 3) -> None:
        super().__init__()
        self.k = k
        self.mlp = nn.Sequential(
            nn.Linear(d_in + point_features, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, n_classes)
        )

    def forward(
        self, patch_h: Tensor, centres: Tensor, valid: Tensor, xyz: Tensor, point_x: Tensor | None = None
    ) -> Tensor:
        """``(B, N, n_classes)`` logits for every point (padding included: mask it in the loss)."""
        h = interpolate(patch_h, centres, valid, xyz, self.k)
        if point_x is not None:
            h = torch.cat([h, point_x.to(h.dtype)], -1)
        return self.mlp(h)


def segmentation_loss(
    logits: Tensor, labels: Tensor, mask: Tensor, class_weights: Tensor | None = None, gamma: float = 0.0
) -> Tensor:
    """Weighted (focal when ``gamma > 0``) cross-entropy over the real points (``mask``).

    With weights, the mean is weighted as in ``torch.nn.functional.cross_entropy``:
    ``sum(w_y * l) / sum(w_y)``.
    """
    logits, labels = logits[mask].float(), labels[mask].long()
    if not len(labels):
        return logits.new_zeros(())
    logp = F.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
    loss = -logp if gamma == 0 else -((1 - logp.exp()) ** gamma) * logp
    w = class_weights.to(loss.dtype)[labels] if class_weights is not None else torch.ones_like(loss)
    return (w * loss).sum() / w.sum().clamp(min=1e-12)
