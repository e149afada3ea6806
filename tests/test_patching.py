"""Point-cloud patching: FPS and grouping against brute-force numpy references; padding stays out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physfm.models.backbone import Backbone, BackboneConfig
from physfm.models.patching import (
    PatchConfig,
    PatchEmbedding,
    farthest_point_sampling,
    group_points,
    make_patches,
    nearest_centre,
)

torch.set_num_threads(1)


def _cloud(seed: int, n_real: list[int], n: int = 300, span: float = 40.0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, span, (len(n_real), n, 4))
    mask = np.arange(n)[None, :] < np.array(n_real)[:, None]
    pts[~mask] = rng.uniform(-1e3, 1e3, (int((~mask).sum()), 4))  # garbage padding
    return torch.tensor(pts, dtype=torch.float64), torch.tensor(mask)


def _fps_reference(xyz: np.ndarray, k: int) -> list[int]:
    chosen = [0]
    dist = np.full(len(xyz), np.inf)
    for _ in range(k - 1):
        dist = np.minimum(dist, ((xyz - xyz[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(np.argmax(dist)))
    return chosen


def test_fps_matches_brute_force() -> None:
    pts, mask = _cloud(0, [300, 120, 7])
    idx, valid = farthest_point_sampling(pts[..., :3], mask, 16)
    for b in range(3):
        n = int(mask[b].sum())
        ref = _fps_reference(pts[b, :n, :3].numpy(), min(16, n))
        got = idx[b][valid[b]].tolist()
        assert got == ref
        assert valid[b].sum() == min(16, n)
        assert (idx[b] < n).all()  # padding is never a centre


def _group_reference(xyz: np.ndarray, centre: np.ndarray, g: int, radius: float | None) -> list[int]:
    d2 = ((xyz - centre) ** 2).sum(1)
    order = np.argsort(d2, kind="stable")
    if radius is not None:
        order = order[d2[order] <= radius**2]
    return sorted(order[:g].tolist())


@pytest.mark.parametrize("grouping", ["ball", "knn"])
def test_grouping_matches_brute_force_and_ignores_padding(grouping: str) -> None:
    cfg = PatchConfig(n_patches=20, group_size=8, radius=6.0, grouping=grouping, chunk=7)
    pts, mask = _cloud(1, [300, 90, 5])
    centres, cidx, valid, idx, ok = make_patches(pts, mask, cfg)
    for b in range(3):
        n = int(mask[b].sum())
        xyz = pts[b, :n, :3].numpy()
        for p in range(cfg.n_patches):
            if not valid[b, p]:
                assert not ok[b, p].any()
                continue
            got = sorted(idx[b, p][ok[b, p]].tolist())
            ref = _group_reference(
                xyz, centres[b, p].numpy(), cfg.group_size, cfg.radius if grouping == "ball" else None
            )
            assert got == ref
            assert int(cidx[b, p]) in got  # a centre is in its own patch
    # padding placed right on the centres still never enters a patch
    pts2 = pts.clone()
    for b in range(3):
        n = int(mask[b].sum())
        pad = pts2.shape[1] - n
        pts2[b, n:, :3] = centres[b, torch.arange(pad) % cfg.n_patches]
    idx2, ok2 = group_points(pts2[..., :3], mask, centres, valid, cfg)
    assert torch.equal(ok2, ok) and torch.equal(idx2[ok2], idx[ok])
    for b in range(3):
        assert (idx[b][ok[b]] < mask[b].sum()).all()


def test_patch_embedding_feeds_the_backbone_and_padding_changes_nothing() -> None:
    torch.manual_seed(0)
    cfg = PatchConfig(n_patches=12, group_size=16, radius=8.0, embed_dim=32, point_features=4, position_scale=40.0)
    emb = PatchEmbedding(cfg).double()
    pts, mask = _cloud(2, [250, 40, 3], n=250)
    out = emb(pts, mask)
    assert out.tokens.shape == (3, 12, 32) and out.mask.sum(1).tolist() == [12, 12, 3]
    ball = out.local[..., :3][out.group_mask]
    assert (ball.norm(dim=-1) <= 1 + 1e-9).all()  # local coordinates within the unit ball
    pts2 = pts.clone()
    pts2[~mask] = -pts2[~mask] * 3 + 7  # different padding
    out2 = emb(pts2, mask)
    assert torch.equal(out.tokens, out2.tokens)
    backbone = Backbone(BackboneConfig(n_features=32, d_model=32, n_heads=4, n_layers=1, max_len=12)).double()
    h = backbone(out.tokens, out.mask)
    assert h.shape == (3, 13, 32) and torch.isfinite(h).all()
    loss = h[:, 1:][out.mask].sum()
    loss.backward()  # gradients reach the mini-PointNet and the centre embedding
    assert emb.pointnet.first[0].weight.grad is not None and emb.position.mlp[0].weight.grad.abs().sum() > 0


def test_nearest_centre_matches_brute_force() -> None:
    pts, mask = _cloud(3, [100, 100], n=100)
    centres = pts[:, :10, :3]
    valid = torch.tensor([[True] * 10, [True] * 4 + [False] * 6])
    got = nearest_centre(pts[..., :3], centres, valid)
    for b in range(2):
        c = centres[b][valid[b]].numpy()
        d2 = ((pts[b, :, None, :3].numpy() - c[None]) ** 2).sum(-1)
        assert got[b].tolist() == np.flatnonzero(valid[b].numpy())[d2.argmin(1)].tolist()


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="grouping"):
        PatchConfig(grouping="voxel")
    with pytest.raises(ValueError, match="radius"):
        PatchConfig(radius=0)
