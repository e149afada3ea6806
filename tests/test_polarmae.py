"""PoLAr-MAE objective, per-point segmentation head and loss, and the segmentation metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from physfm.evaluate.segmentation import confusion_matrix, f1_scores, segmentation_metrics
from physfm.models.backbone import BackboneConfig
from physfm.models.patching import PatchConfig
from physfm.models.polarmae import PolarMAE, PolarMAEConfig, chamfer, choose_patch_mask, compact
from physfm.models.segmentation import SegmentationHead, interpolate, segmentation_loss

torch.set_num_threads(1)
CLASSES = ("shower", "track", "michel", "delta", "low_energy")


def test_f1_on_a_hand_made_example() -> None:
    true = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    pred = np.array([0, 1, 1, 1, 0, 2, 3, 3])
    cm = confusion_matrix(true, pred, 5)
    expected = np.zeros((5, 5), int)
    for t, p in [(0, 0), (0, 1), (1, 1), (1, 1), (1, 0), (2, 2), (2, 3), (3, 3)]:
        expected[t, p] += 1
    assert (cm == expected).all()
    f1 = f1_scores(cm)
    assert f1[:4] == pytest.approx([0.5, 2 / 3, 2 / 3, 2 / 3]) and np.isnan(f1[4])  # low_energy absent
    m = segmentation_metrics(true, pred, CLASSES)
    assert m["macro_f1"] == pytest.approx((0.5 + 3 * 2 / 3) / 4)
    assert m["f1"]["michel"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(5 / 8)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert f1[:4] == pytest.approx(sklearn.f1_score(true, pred, labels=[0, 1, 2, 3], average=None))
    with pytest.raises(ValueError, match="0..4"):
        confusion_matrix(np.array([5]), np.array([0]), 5)


def test_segmentation_loss_matches_weighted_cross_entropy_and_masks_padding() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 5)
    labels = torch.randint(0, 5, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    w = torch.tensor([1.0, 1.0, 50.0, 20.0, 1.0])
    got = segmentation_loss(logits, labels, mask, w)
    ref = F.cross_entropy(logits[mask], labels[mask], weight=w)
    assert got == pytest.approx(float(ref))
    labels2 = labels.clone()
    labels2[~mask] = (labels2[~mask] + 1) % 5  # padding labels do not matter
    assert segmentation_loss(logits, labels2, mask, w) == pytest.approx(float(got))
    confident = torch.zeros(1, 1, 5)
    confident[0, 0, 2] = 2.0
    one = torch.ones(1, 1, dtype=torch.bool)
    target = torch.tensor([[2]])
    p = float(torch.softmax(confident[0, 0], 0)[2])
    ratio = segmentation_loss(confident, target, one, gamma=2.0) / segmentation_loss(confident, target, one)
    assert float(ratio) == pytest.approx((1 - p) ** 2)  # the focal factor down-weights easy points


def test_interpolation_back_to_points() -> None:
    torch.manual_seed(1)
    centres = torch.rand(1, 6, 3) * 10
    valid = torch.tensor([[True, True, True, True, False, False]])
    feats = torch.randn(1, 6, 4)
    xyz = torch.cat([centres[:, :4] + 1e-6, torch.rand(1, 20, 3) * 10], 1)
    near = interpolate(feats, centres, valid, xyz, k=1)
    d2 = ((xyz[0, :, None] - centres[0, None, :4]) ** 2).sum(-1)
    assert torch.allclose(near[0], feats[0, d2.argmin(1)])
    idw = interpolate(feats, centres, valid, xyz, k=3)
    assert torch.allclose(idw[0, :4], feats[0, :4], atol=1e-4)  # a point on a centre takes its features
    head = SegmentationHead(4, 5, point_features=2)
    out = head(feats, centres, valid, xyz, torch.zeros(1, 24, 2))
    assert out.shape == (1, 24, 5)


def test_chamfer_and_patch_mask() -> None:
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 4))
    ok = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], bool)
    got = chamfer(torch.tensor(pred), torch.tensor(target), torch.tensor(ok)).numpy()
    for s in range(3):
        t = target[s][ok[s]]
        d2 = ((pred[s][:, None] - t[None]) ** 2).sum(-1)
        assert got[s] == pytest.approx(d2.min(1).mean() + d2.min(0).mean())
    assert chamfer(torch.tensor(pred), torch.tensor(pred), torch.ones(3, 5, dtype=torch.bool)).abs().max() < 1e-12
    valid = torch.zeros(3, 20, dtype=torch.bool)
    valid[0, :20], valid[1, :10], valid[2, :1] = True, True, True
    g = torch.Generator().manual_seed(3)
    m = choose_patch_mask(valid, 0.6, g)
    assert m.sum(1).tolist() == [12, 6, 0] and not (m & ~valid).any()
    assert torch.equal(m, choose_patch_mask(valid, 0.6, torch.Generator().manual_seed(3)))
    x = torch.arange(60.0).reshape(3, 20, 1)
    packed, pmask, index = compact(x, m)
    assert packed.shape[1] == 12 and torch.equal(packed[pmask].squeeze(-1), x[m].squeeze(-1))


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two toy events: points along lines (x, y, z in voxels, log energy), the second padded."""
    rng = np.random.default_rng(seed)
    pts = np.zeros((2, 200, 4))
    for b in range(2):
        t = rng.uniform(0, 60, 200)
        d = rng.normal(size=3)
        pts[b, :, :3] = 100 + t[:, None] * d / np.linalg.norm(d) + rng.normal(0, 0.5, (200, 3))
        pts[b, :, 3] = np.log(rng.uniform(0.2, 2.0, 200))
    mask = np.ones((2, 200), bool)
    mask[1, 150:] = False
    return torch.tensor(pts, dtype=torch.float32), torch.tensor(mask)


def _model() -> PolarMAE:
    torch.manual_seed(0)
    pc = PatchConfig(n_patches=16, group_size=16, radius=8.0, embed_dim=32, position_scale=768.0)
    cfg = PolarMAEConfig(decoder_dim=32, decoder_layers=1, decoder_heads=4, patches=pc)
    return PolarMAE(cfg, BackboneConfig(n_features=32, d_model=32, n_heads=4, n_layers=2, max_len=16))


def test_encoder_sees_visible_patches_only_and_loss_trains() -> None:
    model = _model()
    pts, mask = _batch(0)
    seen = {}
    model.encoder.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], mask=args[1]))
    loss, stats = model(pts, mask, torch.Generator().manual_seed(1))
    patches = model.patch_embed(pts, mask)
    masked = choose_patch_mask(patches.mask, 0.6, torch.Generator().manual_seed(1))
    visible = patches.mask & ~masked
    assert seen["x"].shape[1] == int(visible.sum(1).max())
    assert torch.allclose(seen["x"][seen["mask"]], patches.tokens[visible])  # only visible tokens
    assert stats["masked_fraction"][0] / stats["masked_fraction"][1] == pytest.approx(0.6, abs=0.05)
    assert torch.isfinite(loss) and stats["loss_chamfer"][1] == masked.sum()
    loss.backward()
    for part in (model.patch_embed, model.encoder, model.decoder, model.reconstruct, model.energy_head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss, _ = model(pts, mask, torch.Generator().manual_seed(1))
        first = float(loss.detach()) if first is None else first
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    h, patches = model.encode(pts, mask)
    assert h.shape == (2, 16, 32)


def test_zero_label_floor_on_hand_made_geometry() -> None:
    from physfm.models.segmentation_floor import floor_segmentation

    line = np.column_stack([np.arange(30), np.arange(30) // 10, np.full(30, 5)]) + 100
    blob = np.stack(np.meshgrid(*[np.arange(4)] * 3), -1).reshape(-1, 3) + 300
    lonely = np.array([[10, 10, 10], [600, 20, 40], [20, 600, 700]])
    pred = floor_segmentation(np.concatenate([line, blob, lonely]))
    assert (pred[:30] == 1).all()  # track
    assert (pred[30:94] == 0).all()  # shower
    assert (pred[94:] == 4).all()  # low-energy deposit
    assert len(floor_segmentation(np.zeros((0, 3)))) == 0
