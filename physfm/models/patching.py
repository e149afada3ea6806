"""Point-cloud patches for LArTPC events, in plain torch (no compiled extensions).

An event is a padded point cloud ``points (B, N, F)`` (the first three features are x, y, z in
voxels) with ``mask (B, N)`` (True = real point). Patching follows PoLAr-MAE / Point-MAE:

1. :func:`farthest_point_sampling` picks at most ``n_patches`` centres per event;
2. :func:`group_points` collects up to ``group_size`` points per centre: the nearest real points
   within ``radius`` voxels (``grouping="ball"``) or the nearest ones whatever their distance
   (``"knn"``). Padding never enters a patch, and a centre is always in its own patch;
3. :func:`local_points` expresses each patch's points relative to its centre, divided by the
   radius (other features unchanged);
4. :class:`MiniPointNet` embeds each patch (shared per-point MLP, max-pool, concatenation of the
   pooled feature, second MLP, max-pool); :class:`CentreEmbedding` embeds the centre positions;
5. :class:`PatchEmbedding` returns their sum as ``(B, P, embed_dim)`` tokens with a patch mask:
   the inputs ``x`` of :class:`physfm.models.backbone.Backbone` (``n_features = embed_dim``,
   ``max_len >= n_patches``).

FPS is a loop over centres (each step one ``(B, N)`` distance update); grouping is one
``(B, P, N)`` distance matrix, computed in chunks of centres to bound memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

GROUPINGS = ("ball", "knn")


@dataclass
class PatchConfig:
    """How events are cut into patches and embedded (one home for these defaults)."""

    n_patches: int = 128  # cap on patches (FPS centres) per event
    group_size: int = 32  # points per patch at most
    radius: float = 5.0  # ball radius in voxels; also the scale of the local coordinates
    grouping: str = "ball"  # "ball" (within radius) or "knn" (nearest, any distance)
    embed_dim: int = 128
    point_features: int = 4  # per-point inputs: x, y, z (voxels) and e.g. log energy
    position_scale: float = 768.0  # centres are divided by this before their embedding
    chunk: int = 64  # centres per distance-matrix chunk

    def __post_init__(self) -> None:
        if self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got '{self.grouping}'")
        if self.n_patches < 1 or self.group_size < 1 or self.radius <= 0 or self.point_features < 3:
            raise ValueError(
                "n_patches and group_size must be >= 1, radius > 0 and point_features >= 3 (x, y, z first), "
                f"got {self.n_patches}, {self.group_size}, {self.radius}, {self.point_features}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def farthest_point_sampling(xyz: Tensor, mask: Tensor, k: int, start: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Indices ``(B, k)`` of ``k`` farthest-point-sampled real points, and which of them are valid.

    The first centre is the point ``start`` (``(B,)``; default: each event's first real point);
    each next one is the real point farthest from the centres chosen so far (the first such
    index on ties). An event with ``n < k`` real points gets ``n`` valid centres; the rest of its
    row repeats the first centre and is marked invalid. Padding is never chosen.
    """
    b, n, _ = xyz.shape
    real = mask.bool()
    n_real = real.sum(1)
    if start is None:
        start = torch.argmax(real.to(torch.int8), dim=1)  # first real point
    idx = torch.empty(b, k, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, n), float("inf"), dtype=xyz.dtype, device=xyz.device)
    dist = dist.masked_fill(~real, -1.0)
    current = start
    rows = torch.arange(b, device=xyz.device)
    for j in range(k):
        idx[:, j] = current
        c = xyz[rows, current].unsqueeze(1)  # (B, 1, 3)
        d = ((xyz - c) ** 2).sum(-1)
        dist = torch.where(real, torch.minimum(dist, d), dist)
        current = torch.argmax(dist, dim=1)
    valid = torch.arange(k, device=xyz.device)[None, :] < n_real[:, None]
    idx = torch.where(valid, idx, idx[:, :1])
    return idx, valid


def group_points(
    xyz: Tensor, mask: Tensor, centres: Tensor, centre_valid: Tensor, config: PatchConfig
) -> tuple[Tensor, Tensor]:
    """Point indices ``(B, P, G)`` of each centre's group and which entries are real (``(B, P, G)``).

    The group holds the ``G = group_size`` nearest real points (``"ball"``: only those within
    ``radius``), nearest first. Entries beyond the real ones point at index 0 and are False in the
    returned mask; every entry of an invalid centre is False.
    """
    b, n, _ = xyz.shape
    g = min(config.group_size, n)
    out_idx, out_ok = [], []
    for a in range(0, centres.shape[1], config.chunk):
        c = centres[:, a : a + config.chunk]
        d2 = ((c[:, :, None, :] - xyz[:, None, :, :]) ** 2).sum(-1)  # (B, p, N)
        allowed = mask.bool()[:, None, :].expand_as(d2)
        if config.grouping == "ball":
            allowed = allowed & (d2 <= config.radius**2)
        d2 = d2.masked_fill(~allowed, float("inf"))
        dist, idx = torch.topk(d2, g, dim=-1, largest=False, sorted=True)
        ok = torch.isfinite(dist) & centre_valid[:, a : a + config.chunk, None]
        out_idx.append(torch.where(ok, idx, torch.zeros_like(idx)))
        out_ok.append(ok)
    idx, ok = torch.cat(out_idx, 1), torch.cat(out_ok, 1)
    if g < config.group_size:  # fewer points than a group: pad the groups
        pad = config.group_size - g
        idx = torch.cat([idx, idx.new_zeros(b, idx.shape[1], pad)], -1)
        ok = torch.cat([ok, ok.new_zeros(b, ok.shape[1], pad)], -1)
    return idx, ok


def gather_points(points: Tensor, idx: Tensor) -> Tensor:
    """``points (B, N, F)`` at ``idx (B, P, G)`` -> ``(B, P, G, F)``."""
    b, p, g = idx.shape
    flat = idx.reshape(b, p * g, 1).expand(-1, -1, points.shape[-1])
    return torch.gather(points, 1, flat).reshape(b, p, g, points.shape[-1])


def local_points(points: Tensor, idx: Tensor, ok: Tensor, centres: Tensor, radius: float) -> Tensor:
    """Each patch's points ``(B, P, G, F)``: x, y, z relative to the centre over ``radius``, the
    other features as they are; zero where ``ok`` is False."""
    grouped = gather_points(points, idx)
    xyz = (grouped[..., :3] - centres[:, :, None, :]) / radius
    out = torch.cat([xyz, grouped[..., 3:]], dim=-1)
    return out * ok.unsqueeze(-1).to(out.dtype)


def _masked_max(h: Tensor, ok: Tensor) -> Tensor:
    """Max over the group axis (-2) of the real entries; zero for groups without any."""
    h = h.masked_fill(~ok.unsqueeze(-1), float("-inf"))
    m = h.max(dim=-2).values
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


class MiniPointNet(nn.Module):
    """Point-MAE's patch encoder: per-point MLP, max-pool, concat, per-point MLP, max-pool."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Linear(in_features, 128), nn.LayerNorm(128), nn.GELU(), nn.Linear(128, 256))
        self.second = nn.Sequential(nn.Linear(512, 512), nn.LayerNorm(512), nn.GELU(), nn.Linear(512, out_features))

    def forward(self, local: Tensor, ok: Tensor) -> Tensor:
        """``local (B, P, G, F)``, ``ok (B, P, G)`` -> ``(B, P, out_features)``."""
        h = self.first(local)
        pooled = _masked_max(h, ok)
        h = torch.cat([h, pooled.unsqueeze(-2).expand_as(h)], dim=-1)
        return _masked_max(self.second(h), ok)


class CentreEmbedding(nn.Module):
    """MLP position embedding of the patch centres."""

    def __init__(self, out_features: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, out_features))

    def forward(self, centres: Tensor) -> Tensor:
        return self.mlp(centres / self.scale * 2 - 1)


@dataclass
class Patches:
    """An event batch cut into patches."""

    tokens: Tensor  # (B, P, D) patch + centre embeddings, zero for invalid patches
    mask: Tensor  # (B, P) bool: valid patches
    centres: Tensor  # (B, P, 3) centre positions (voxels)
    centre_index: Tensor  # (B, P) index of each centre among the event's points
    index: Tensor  # (B, P, G) point indices of each patch
    group_mask: Tensor  # (B, P, G) bool: real entries of each patch
    local: Tensor  # (B, P, G, F) the patches' points in local coordinates


def make_patches(points: Tensor, mask: Tensor, config: PatchConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Centres and groups (no learned parts): ``(centres, centre_index, centre_valid, index, group_mask)``."""
    k = config.n_patches
    xyz = points[..., :3]
    cidx, valid = farthest_point_sampling(xyz, mask, k)
    rows = torch.arange(points.shape[0], device=points.device)[:, None]
    centres = xyz[rows, cidx]
    idx, ok = group_points(xyz, mask, centres, valid, config)
    return centres, cidx, valid, idx, ok


class PatchEmbedding(nn.Module):
    """Point cloud -> patch tokens (mini-PointNet of the local points + MLP of the centre)."""

    def __init__(self, config: PatchConfig) -> None:
        super().__init__()
        self.config = config
        self.pointnet = MiniPointNet(config.point_features, config.embed_dim)
        self.position = CentreEmbedding(config.embed_dim, config.position_scale)

    def forward(self, points: Tensor, mask: Tensor) -> Patches:
        cfg = self.config
        if points.shape[-1] != cfg.point_features:
            raise ValueError(f"points have {points.shape[-1]} features, expected {cfg.point_features}")
        with torch.no_grad():
            centres, cidx, valid, idx, ok = make_patches(points, mask, cfg)
        local = local_points(points, idx, ok, centres, cfg.radius)
        tokens = self.pointnet(local, ok) + self.position(centres)
        tokens = tokens * valid.unsqueeze(-1).to(tokens.dtype)
        return Patches(tokens, valid, centres, cidx, idx, ok, local)


def nearest_centre(xyz: Tensor, centres: Tensor, centre_valid: Tensor) -> Tensor:
    """Index ``(B, N)`` of each point's nearest valid centre (patch features back to points)."""
    d2 = ((xyz[:, :, None, :] - centres[:, None, :, :]) ** 2).sum(-1)
    d2 = d2.masked_fill(~centre_valid[:, None, :], float("inf"))
    return d2.argmin(-1)
