"""A zero-label floor for LArTPC semantic segmentation: geometric rules, no training, no labels.

Per point (voxel coordinates):

* **low-energy deposit** when it has fewer than ``min_neighbours`` other points within
  ``isolation_radius`` voxels (isolated blips);
* otherwise **track** when its ``k`` nearest neighbours lie on a line (largest eigenvalue of their
  covariance above ``linearity`` of the trace), else **shower**.

Michel electrons and delta rays are never predicted (they differ from showers and tracks by
context, which such rules do not see), so their F1 is 0: the floor that a learned model must beat.
The thresholds are geometric choices made without looking at labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from physfm.data.lartpc import LOW_ENERGY, SHOWER, TRACK


@dataclass
class FloorConfig:
    isolation_radius: float = 2.0  # voxels
    min_neighbours: int = 2
    k: int = 12
    linearity: float = 0.9
    chunk: int = 2048  # points per distance block

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def floor_segmentation(xyz: np.ndarray, config: FloorConfig | None = None) -> np.ndarray:
    """Predicted class (shower, track or low-energy deposit) of each point of one event ``(N, 3)``."""
    cfg = config or FloorConfig()
    pts = torch.as_tensor(np.asarray(xyz, dtype=np.float64))
    n = len(pts)
    pred = np.full(n, LOW_ENERGY, dtype=np.int64)
    if n == 0:
        return pred
    k = min(cfg.k + 1, n)
    close = np.empty(n, dtype=np.int64)
    lin = np.zeros(n)
    for a in range(0, n, cfg.chunk):
        d = torch.cdist(pts[a : a + cfg.chunk], pts)
        close[a : a + cfg.chunk] = ((d <= cfg.isolation_radius).sum(1) - 1).numpy()
        idx = torch.topk(d, k, dim=1, largest=False).indices  # self included
        nb = pts[idx]
        nb = nb - nb.mean(1, keepdim=True)
        cov = torch.einsum("nki,nkj->nij", nb, nb)
        ev = torch.linalg.eigvalsh(cov)  # ascending
        lin[a : a + cfg.chunk] = (ev[:, -1] / ev.sum(1).clamp(min=1e-12)).numpy()
    dense = close >= cfg.min_neighbours
    pred[dense] = np.where(lin[dense] > cfg.linearity, TRACK, SHOWER)
    return pred
