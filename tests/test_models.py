"""Backbone and objectives: masks, causality, padding, deterministic masking, targets (no data files)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from physfm.features import GLOBAL_TARGETS, global_targets
from physfm.models import Backbone, BackboneConfig, choose_masked, hash_uniform, normalize
from physfm.models.objectives import (
    MaskedParticleModelling,
    MaskedRegression,
    NextTokenPrediction,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**kw) -> Backbone:
    torch.manual_seed(0)
    cfg = dict(n_features=5, d_model=32, n_layers=2, n_heads=4, max_len=12)
    cfg.update(kw)
    return Backbone(BackboneConfig(**cfg)).eval()


def batch(b: int = 3, length: int = 12, f: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, f, generator=g)
    n = torch.tensor([length, 7, 3])[:b]
    mask = torch.arange(length)[None, :] < n[:, None]
    return x * mask[..., None], mask


def test_shapes_embed_and_config_roundtrip():
    m = tiny(n_cls=2)
    x, mask = batch()
    h = m(x, mask)
    assert h.shape == (3, 2 + 12, 32)
    assert m.embed(x, mask).shape == (3, 32)
    assert torch.equal(m.embed(x, mask), h[:, 0])
    m0 = tiny(n_cls=0)
    e = m0.embed(x, mask)
    h0 = m0(x, mask)
    expected = (h0 * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(e, expected, atol=1e-6)
    assert BackboneConfig.from_dict(m.config.to_dict()) == m.config
    with pytest.raises(ValueError, match="unknown BackboneConfig keys"):
        BackboneConfig.from_dict({"d_model": 32, "n_head": 4})
    with pytest.raises(ValueError, match="divisible"):
        BackboneConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="max_len"):
        m(torch.zeros(1, 13, 5), torch.ones(1, 13, dtype=torch.bool))


def test_padding_is_never_attended_to():
    m = tiny()
    x, mask = batch()
    h1 = m(x, mask)
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), 5) * 10  # garbage in the padding
    h2 = m(x2, mask)
    real = torch.cat([torch.ones(3, 1, dtype=torch.bool), mask], 1)
    assert torch.allclose(h1[real], h2[real], atol=1e-5)
    assert torch.isfinite(h1).all()


def test_set_model_is_permutation_equivariant_without_positions():
    m = tiny()
    x, mask = batch(b=1)
    perm = torch.randperm(12)
    h = m(x, mask)[:, 1:]
    hp = m(x[:, perm], mask[:, perm])[:, 1:]
    assert torch.allclose(h[:, perm], hp, atol=1e-5)


@pytest.mark.parametrize("tokens_in", [False, True])
def test_causal_mask_blocks_the_future(tokens_in):
    kw = dict(causal=True, pos_embedding="all")
    if tokens_in:
        kw.update(n_features=0, vocab_size=20)
    m = tiny(**kw)
    x, mask = batch()
    tokens = torch.randint(0, 20, (3, 12)) if tokens_in else None
    h1 = m(None if tokens_in else x, mask, tokens=tokens)
    j = 2
    x2, t2 = x.clone(), None if tokens is None else tokens.clone()
    if tokens_in:
        t2[:, j:] = (t2[:, j:] + 7) % 20
    else:
        x2[:, j:] += 3.0
    h2 = m(None if tokens_in else x2, mask, tokens=t2)
    n_cls = m.config.n_cls
    assert torch.allclose(h1[:, : n_cls + j], h2[:, : n_cls + j], atol=1e-6)  # earlier positions unchanged
    assert not torch.allclose(h1[0, n_cls + j :], h2[0, n_cls + j :], atol=1e-3)  # later ones do change
    # the same model without the causal mask does look ahead
    kw["causal"] = False
    mb = tiny(**kw)
    hb1 = mb(None if tokens_in else x, mask, tokens=tokens)
    hb2 = mb(None if tokens_in else x2, mask, tokens=t2)
    assert not torch.allclose(hb1[:, : n_cls + j], hb2[:, : n_cls + j], atol=1e-4)


def test_mask_embedding_hides_masked_inputs():
    m = tiny(mask_token=True, pos_embedding="masked")
    x, mask = batch()
    masked = torch.zeros_like(mask)
    masked[:, 1] = True
    x2 = x.clone()
    x2[:, 1] += 5.0
    assert torch.allclose(m(x, mask, masked=masked), m(x2, mask, masked=masked), atol=1e-6)
    assert not torch.allclose(m(x, mask), m(x2, mask), atol=1e-3)


def test_hash_masking_is_per_event_and_deterministic():
    keys = np.array([11, 22, 33, 44], dtype=np.uint64)
    mask = np.zeros((4, 20), dtype=bool)
    for i, n in enumerate([20, 10, 3, 0]):
        mask[i, :n] = True
    m = choose_masked(keys, mask, 0.3, salt=5)
    assert not (m & ~mask).any()
    assert m.sum(1).tolist() == [6, 3, 1, 0]
    # the same event gets the same mask whatever batch it is in, a new salt gives a new mask
    m_sub = choose_masked(keys[[2, 0]], mask[[2, 0]], 0.3, salt=5)
    assert np.array_equal(m_sub, m[[2, 0]])
    assert not np.array_equal(choose_masked(keys, mask, 0.3, salt=6), m)
    u = hash_uniform(np.arange(2000, dtype=np.uint64), 1, 16)
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01


def _mpm_batch(k: int = 16) -> dict[str, torch.Tensor]:
    x, mask = batch()
    keys = np.array([1, 2, 3], dtype=np.uint64)
    b = {
        "x": x,
        "mask": mask,
        "tokens": torch.where(mask, torch.randint(0, k, mask.shape, generator=torch.Generator().manual_seed(1)), -1),
        "masked": torch.from_numpy(choose_masked(keys, mask.numpy(), 0.4, salt=0)),
        "global": torch.randn(3, 2),
    }
    return b


def test_mpm_loss_comes_from_masked_positions_only():
    torch.manual_seed(0)
    model = tiny(mask_token=True, pos_embedding="masked")
    obj = MaskedParticleModelling(32, {"mask_fraction": 0.4}, codebook_size=16, n_features=5).eval()
    b = _mpm_batch()
    masked = b["masked"]
    loss, stats = obj(model, b)
    assert stats["loss_token"][1] == masked.sum()
    # other targets at unmasked positions: same loss
    b2 = dict(b)
    b2["tokens"] = torch.where(masked | ~b["mask"], b["tokens"], (b["tokens"] + 5) % 16)
    assert torch.equal(obj(model, b2)[0], loss)
    # other inputs at masked positions: same loss (they are hidden behind the mask embedding)
    b3 = dict(b)
    b3["x"] = b["x"] + 4.0 * masked[..., None]
    assert torch.allclose(obj(model, b3)[0], loss, atol=1e-6)
    # another target at a masked position: different loss
    b4 = dict(b)
    b4["tokens"] = torch.where(masked, (b["tokens"] + 5) % 16, b["tokens"])
    assert not torch.allclose(obj(model, b4)[0], loss)
    # at initialisation the token loss is close to the uniform guess, log K
    assert abs(float(stats["loss_token"][0] / stats["loss_token"][1]) - math.log(16)) < 0.3


def test_global_target_head_and_weight():
    model = tiny(mask_token=True, pos_embedding="masked")
    b = _mpm_batch()
    plain = MaskedParticleModelling(32, {}, codebook_size=16, n_features=5)
    withg = MaskedParticleModelling(32, {}, codebook_size=16, n_features=5, global_names=["a", "b"], global_weight=2.0)
    withg.head.load_state_dict(plain.head.state_dict())
    l0, s0 = plain(model, b)
    l1, s1 = withg(model, b)
    assert "loss_global" not in s0
    g = s1["loss_global"][0] / s1["loss_global"][1]
    assert torch.allclose(l1, l0 + 2.0 * g, atol=1e-5)
    # the class-token head is trained; without target names there is no head at all
    withg(model, b)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in withg.global_head.parameters())
    assert not hasattr(plain, "global_head")


def test_global_targets_from_particles():
    # two massless back-to-back particles of 50 GeV: mass 100 GeV, pT 0
    raw = {
        "part_energy": np.array([[50.0, 50.0, 0.0]]),
        "part_px": np.array([[50.0, -50.0, 0.0]]),
        "part_py": np.zeros((1, 3)),
        "part_pz": np.zeros((1, 3)),
    }
    mask = np.array([[True, True, False]])
    g = global_targets(["log_mass", "log_pt", "log_multiplicity"], raw, mask)
    assert np.allclose(g, [[np.log(101.0), 0.0, np.log(3.0)]])
    assert set(GLOBAL_TARGETS) >= {"log_mass", "log_multiplicity"}
    with pytest.raises(KeyError, match="unknown global target"):
        global_targets(["nope"], raw, mask)


def test_next_token_targets_start_and_stop():
    obj = NextTokenPrediction(32, {}, codebook_size=10, n_features=5)
    mask = np.array([[True, True, True, False], [True, True, True, True], [True, True, True, True]])
    codes = np.where(mask, np.array([[1, 2, 3, -1], [4, 5, 6, 7], [8, 9, 0, 1]]), -1)
    b = obj.prepare(
        {"tokens": codes, "mask": mask, "n_particles": np.array([3, 4, 9]), "event_key": np.zeros(3)}, salt=0
    )
    assert b["next"].tolist() == [[1, 2, 3, 10, -1], [4, 5, 6, 7, 10], [8, 9, 0, 1, -1]]  # truncated: no stop
    model = tiny(causal=True, pos_embedding="all", max_len=4)
    x = torch.randn(3, 4, 5) * torch.from_numpy(mask)[..., None]
    tb = {"x": x, "mask": torch.from_numpy(mask), "next": torch.from_numpy(b["next"]), "global": torch.zeros(3, 0)}
    loss, stats = obj(model, tb)
    assert int(stats["loss_token"][1]) == 4 + 5 + 4
    assert abs(float(loss.detach()) - math.log(11)) < 0.3


def test_regression_objective_and_normalize():
    model = tiny(mask_token=True, pos_embedding="masked")
    obj = MaskedRegression(32, {"mask_fraction": 0.5}, n_features=5)
    b = _mpm_batch()
    loss, stats = obj(model, b)
    assert loss > 0 and stats["loss_regression"][1] == b["masked"].sum()
    meta = {"norm": {"mean": [1.0] * 5, "std": [2.0] * 5}}
    x, mask = batch()
    xn = normalize(x, mask, meta)
    assert torch.allclose(xn[mask], (x[mask] - 1.0) / 2.0)
    assert (xn[~mask] == 0).all()
    assert np.allclose(normalize(x.numpy(), mask.numpy(), meta), xn.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="unknown options"):
        MaskedRegression(32, {"mask_fracton": 0.5}, n_features=5)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        MaskedParticleModelling(32, {}, codebook_size=0)


def test_flops_estimate_counts_parameters():
    m = tiny()
    assert m.flops_per_token(12) > 6 * (m.n_params() - 1)


def test_wasserstein_and_jet_observables():
    from physfm.evaluate.sample import jet_observables, wasserstein_1d

    rng = np.random.default_rng(0)
    a = rng.normal(size=500)
    assert wasserstein_1d(a, a + 0.7) == pytest.approx(0.7)
    assert wasserstein_1d(a, a) == 0.0
    assert wasserstein_1d([0.0, 1.0], [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(1 / 6)
    # two massless particles of pT 100 GeV back to back in phi at deta 0: pT 0, mass 200 GeV
    x = np.array([[[np.log(100.0), 0.0, 0.0], [np.log(100.0), 0.0, np.pi], [0.0, 0.0, 0.0]]])
    obs = jet_observables(x, np.array([[True, True, False]]), ["log_pt", "deta", "dphi"])
    assert obs["multiplicity"][0] == 2 and obs["jet_pt"][0] == pytest.approx(0.0, abs=1e-9)
    assert obs["jet_mass"][0] == pytest.approx(200.0)
