"""Issue 15: PET's local kNN block, the flow-matching objective and its sampler, MPM v2's MAE split."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from physfm.models import OBJECTIVES, Backbone, BackboneConfig
from physfm.models.flow import FlowMatching, VelocityHead, integrate, interpolate, sample_time
from physfm.models.mpm2 import MaskedParticleModelling2, visible_subset
from physfm.models.pet import LocalBlock, knn_indices

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registered():
    assert OBJECTIVES["flow"] is FlowMatching and OBJECTIVES["mpm2"] is MaskedParticleModelling2
    assert not FlowMatching.needs_tokenizer and MaskedParticleModelling2.needs_tokenizer


# --------------------------------------------------------------------------- PET local block
def _jets(b: int = 3, length: int = 12, f: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, f, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 7:] = False
    mask[1, 2:] = False  # two particles: fewer than k neighbours
    return x * mask.unsqueeze(-1), mask


def test_knn_never_picks_padding_or_itself():
    x, mask = _jets()
    idx, has = knn_indices(x[..., 1:3], mask, 4)
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            chosen = idx[b, i][has[b, i]].tolist()
            assert i not in chosen and all(bool(mask[b, j]) for j in chosen)
            if mask[b, i]:
                assert len(chosen) == min(4, int(mask[b].sum()) - 1)
            else:
                assert not chosen


def test_local_block_ignores_padding_and_is_permutation_equivariant():
    torch.manual_seed(0)
    block = LocalBlock(8, k=3, coords=[1, 2])
    x, mask = _jets(f=8)
    h = torch.randn(*mask.shape, 8)
    out = block(x, h, mask)
    assert torch.all(out[~mask] == 0)
    # garbage in the padded slots changes nothing
    x2, h2 = x.clone(), h.clone()
    x2[~mask], h2[~mask] = 1e3, -1e3
    assert torch.allclose(block(x2, h2, mask), out, atol=1e-6)
    # extra padding appended changes nothing
    pad = lambda t: torch.cat([t, torch.zeros(t.shape[0], 4, *t.shape[2:], dtype=t.dtype)], 1)  # noqa: E731
    assert torch.allclose(block(pad(x), pad(h), pad(mask))[:, :12], out, atol=1e-6)
    # permuting the particles permutes the output
    perm = torch.randperm(mask.shape[1], generator=torch.Generator().manual_seed(1))
    assert torch.allclose(block(x[:, perm], h[:, perm], mask[:, perm]), out[:, perm], atol=1e-5)


def test_backbone_with_local_block_is_equivariant_and_blind_to_padding():
    torch.manual_seed(0)
    cfg = BackboneConfig(n_features=5, d_model=16, n_layers=1, n_heads=2, max_len=16, local="knn", local_k=3)
    model = Backbone(cfg).eval()
    x, mask = _jets()
    ref = model(x, mask)
    x2 = x.clone()
    x2[~mask] = 7.0
    out = model(x2, mask)
    assert torch.allclose(out[:, 1:][mask], ref[:, 1:][mask], atol=1e-5) and torch.allclose(out[:, 0], ref[:, 0])
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(2))
    p = model(x[:, perm], mask[:, perm])
    assert torch.allclose(p[:, 1:][mask[:, perm]], ref[:, 1:][:, perm][mask[:, perm]], atol=1e-5)
    assert torch.allclose(p[:, 0], ref[:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="local_coords"):
        BackboneConfig(n_features=2, d_model=16, n_heads=2, local="knn")
    with pytest.raises(ValueError, match="not causal"):
        BackboneConfig(n_features=5, d_model=16, n_heads=2, local="knn", causal=True)


def test_masked_particles_do_not_leak_through_the_local_block():
    torch.manual_seed(0)
    cfg = BackboneConfig(n_features=5, d_model=16, n_layers=1, n_heads=2, mask_token=True, local="knn", local_k=3)
    model = Backbone(cfg).eval()
    x, mask = _jets()
    masked = torch.zeros_like(mask)
    masked[0, 1] = masked[2, 4] = True
    ref = model(x, mask, masked=masked)
    x2 = x.clone()
    x2[masked] = 5.0
    assert torch.allclose(model(x2, mask, masked=masked), ref, atol=1e-5)


# --------------------------------------------------------------------------- flow matching
def test_interpolation_endpoints_and_velocity():
    x0, noise = torch.randn(4, 6, 3), torch.randn(4, 6, 3)
    assert torch.equal(interpolate(x0, noise, torch.zeros(4)), x0)
    assert torch.equal(interpolate(x0, noise, torch.ones(4)), noise)
    t, dt = torch.full((4,), 0.3), 1e-3
    deriv = (interpolate(x0, noise, t + dt) - interpolate(x0, noise, t)) / dt
    assert torch.allclose(deriv, noise - x0, atol=1e-3)  # the regression target is the path's velocity
    for kind in ("uniform", "logit_normal"):
        t = sample_time(2000, kind, torch.Generator().manual_seed(0))
        assert float(t.min()) > 0 and float(t.max()) < 1 and abs(float(t.mean()) - 0.5) < 0.03
    with pytest.raises(ValueError, match="time_sampling"):
        sample_time(3, "cosine")


MU, SIGMA = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact rectified-flow velocity E[noise - x0 | x_t] for x0 ~ N(MU, SIGMA^2), noise ~ N(0, 1)."""
    t = t[:, None]
    var = (1 - t) ** 2 * SIGMA**2 + t**2
    r = x - (1 - t) * MU
    return t * r / var - (MU + (1 - t) * SIGMA**2 * r / var)


@pytest.mark.parametrize(("solver", "steps"), [("midpoint", 16), ("euler", 64)])
def test_solver_on_the_exact_toy_field_recovers_mean_and_width(solver, steps):
    x1 = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0))
    x0 = integrate(gaussian_velocity, x1, steps, solver)
    assert torch.allclose(x0.mean(0), MU, atol=0.03)
    assert torch.allclose(x0.std(0), SIGMA, rtol=0.03)
    with pytest.raises(ValueError, match="at least one step"):
        integrate(gaussian_velocity, x1, 0)


def test_a_trained_velocity_head_samples_the_toy_distribution():
    """Flow matching as the objective trains it (same path, time sampling and head), on 2-D points."""
    torch.manual_seed(0)
    head = VelocityHead(d_context=1, n_features=2, n_globals=0, hidden=64, layers=2, time_dim=16)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(600):
        x0 = MU + SIGMA * torch.randn(256, 2)
        noise, t = torch.randn(256, 2), sample_time(256, "logit_normal")
        xt = interpolate(x0, noise, t)
        v = head(torch.zeros(256, 1, 1), xt[:, None], t, torch.zeros(256, 0))[:, 0]
        loss = ((v - (noise - x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        field = lambda x, t: head(torch.zeros(len(x), 1, 1), x[:, None], t, torch.zeros(len(x), 0))[:, 0]  # noqa: E731
        x = integrate(field, torch.randn(4000, 2, generator=torch.Generator().manual_seed(1)), 20, "midpoint")
    assert torch.allclose(x.mean(0), MU, atol=0.15), x.mean(0)
    assert torch.allclose(x.std(0), SIGMA, rtol=0.15), x.std(0)


def _flow(n_globals: int = 2) -> tuple[Backbone, FlowMatching]:
    torch.manual_seed(0)
    backbone = Backbone(BackboneConfig(n_features=5, d_model=16, n_layers=1, n_heads=2, max_len=16))
    names = ["log_mass", "log_multiplicity"][:n_globals]
    flow = FlowMatching(16, {"head_hidden": 16, "time_dim": 8}, n_features=5, global_names=names, global_weight=0.5)
    flow.attach(backbone)
    return backbone, flow


def test_flow_loss_counts_real_particles_only_and_ema_follows():
    backbone, flow = _flow()
    assert not hasattr(flow, "global_head"), "the globals are the flow's condition, not a regression target"
    x, mask = _jets()
    batch = {"x": x, "mask": mask, "global": torch.randn(3, 2), "event_key": torch.arange(3)}
    flow.eval()
    loss, stats = flow(backbone, batch)
    assert float(stats["loss_flow"][1]) == int(mask.sum())
    again, _ = flow(backbone, batch)
    assert float(loss.detach()) == float(again.detach()), "validation noise is a function of the batch"
    x2 = x.clone()
    x2[~mask] = 9.0  # padding garbage: same loss
    assert float(flow(backbone, {**batch, "x": x2})[0].detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    flow.train()
    with torch.no_grad():
        for p in [*backbone.parameters(), *flow.head.parameters()]:
            p.add_(1.0)
    before = [p.clone() for p in flow.ema.parameters()]
    flow.after_step(10**5, 10**6)  # past the warm-up min(decay, (1 + step) / (10 + step))
    decay = 0.999
    for b, e, s in zip(before, flow.ema.parameters(), backbone.parameters(), strict=True):
        assert torch.allclose(e, decay * b + (1 - decay) * s, atol=1e-6)
    assert not any(p.requires_grad for p in flow.ema.parameters())
    assert flow.export_backbone(backbone) is flow.ema
    gen = flow.generate(mask, torch.zeros(3, 2), steps=3, solver="euler", seed=0)
    assert gen.shape == x.shape and torch.all(gen[~mask] == 0) and torch.isfinite(gen).all()
    assert torch.equal(gen, flow.generate(mask, torch.zeros(3, 2), steps=3, solver="euler", seed=0))


# --------------------------------------------------------------------------- MPM v2
def test_visible_subset_packs_only_unmasked_particles():
    x, mask = _jets()
    masked = torch.zeros_like(mask)
    masked[0, [0, 3]] = masked[2, 5] = True
    visible = mask & ~masked
    xv, vmask, idx = visible_subset(x, visible)
    assert vmask.shape[1] == int(visible.sum(1).max())
    for b in range(3):
        assert torch.equal(xv[b][vmask[b]], x[b][visible[b]])  # the visible ones, in order
        assert torch.equal(idx[b][vmask[b]], torch.nonzero(visible[b]).squeeze(1))
        assert torch.all(xv[b][~vmask[b]] == 0)


def test_mae_encoder_never_sees_masked_particles():
    torch.manual_seed(0)
    opts = {"registers": 2, "decoder_dim": 8, "decoder_heads": 2, "decoder_layers": 1, "pid_weight": 0.0}
    model_cfg = MaskedParticleModelling2.configure_backbone({"n_features": 5, "d_model": 16, "n_heads": 2}, opts, 8)
    assert model_cfg["n_cls"] == 3 and not model_cfg["mask_token"]
    backbone = Backbone(BackboneConfig(**model_cfg, n_layers=1, max_len=16))
    obj = MaskedParticleModelling2(16, opts, codebook_size=8, n_features=5)
    obj.attach(backbone)
    x, mask = _jets()
    masked = torch.zeros_like(mask)
    masked[0, [1, 2]] = masked[2, [0, 9]] = True
    seen: list[torch.Tensor] = []
    handle = backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    batch = {"x": x, "mask": mask, "masked": masked, "tokens": torch.randint(0, 8, mask.shape)}
    loss, stats = obj(backbone, batch)
    handle.remove()
    assert len(seen) == 1 and torch.isfinite(loss)
    rows = {tuple(r.tolist()) for r in seen[0].reshape(-1, 5)}
    assert not any(tuple(r.tolist()) in rows for r in x[masked]), "a masked particle reached the encoder"
    assert float(stats["loss_token"][1]) == int(masked.sum())
    x2 = x.clone()
    x2[masked] = 3.0  # what the masked particles hold changes neither the encoder nor the loss
    h1, _, _ = obj.encode(backbone, batch)
    h2, _, _ = obj.encode(backbone, {**batch, "x": x2})
    assert torch.equal(h1, h2)
    assert float(obj(backbone, {**batch, "x": x2})[0]) == float(loss)


def test_mpm2_flow_head_trains_on_masked_features_only():
    torch.manual_seed(0)
    opts = {"registers": 1, "decoder_dim": 8, "decoder_heads": 2, "decoder_layers": 1}
    opts.update(flow_weight=1.0, pid_weight=0.0)
    model_cfg = MaskedParticleModelling2.configure_backbone({"n_features": 5, "d_model": 16, "n_heads": 2}, opts, 8)
    backbone = Backbone(BackboneConfig(**model_cfg, n_layers=1, max_len=16))
    obj = MaskedParticleModelling2(16, opts, codebook_size=8, n_features=5)
    obj.attach(backbone)
    obj.eval()
    x, mask = _jets()
    masked = torch.zeros_like(mask)
    masked[0, [1, 2]] = masked[2, [0, 9]] = True
    tokens = torch.randint(0, 8, mask.shape)
    batch = {"x": x, "mask": mask, "masked": masked, "tokens": tokens, "event_key": torch.arange(3)}
    loss, stats = obj(backbone, batch)
    assert float(stats["loss_flow"][1]) == 4 and float(stats["loss"][0]) > 0
    x2 = x.clone()
    x2[~mask] = 4.0  # padding is no target
    assert float(obj(backbone, {**batch, "x": x2})[0].detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    x3 = x.clone()
    x3[masked] += 1.0  # the masked features are the flow's targets
    assert float(obj(backbone, {**batch, "x": x3})[0].detach()) != float(loss.detach())


# --------------------------------------------------------------------------- through the loop
TINY = {
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "local": "knn", "local_k": 4},
    "max_len": 24,
    "batch_size": 32,
    "steps": 10,
    "warmup_steps": 2,
    "lr": 3e-3,
    "val_every": 5,
    "log_every": 5,
    "checkpoint_every": 4,
    "norm_events": 500,
}


@pytest.fixture(scope="module")
def tokenizer8(jet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from physfm.tokenizers import make_tokenizer

    out = tmp_path_factory.mktemp("tok") / "kmeans-8"
    make_tokenizer(jet_dataset, out, "kmeans", 8, progress=False, eval_events=200)
    return out


def test_flow_pretrains_resumes_exactly_and_samples_jets(jet_dataset, tmp_path):
    from safetensors.torch import load_file

    from physfm.evaluate.sample import SampleConfig, sample_from_model
    from physfm.pretrain.checkpoints import Preempted
    from physfm.pretrain.train import PretrainConfig, pretrain

    cfg = PretrainConfig.from_dict({**TINY, "objective": "flow"})
    ref = pretrain(cfg, jet_dataset, None, tmp_path / "ref", progress=False)
    assert np.isfinite(ref["val/loss_flow"])

    def preempt(step: int) -> None:
        if step == 6:
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(Preempted):
        pretrain(cfg, jet_dataset, None, tmp_path / "run", progress=False, on_step=preempt)
    resumed = pretrain(cfg, jet_dataset, None, tmp_path / "run", progress=False)
    assert resumed["resumed_from"] == 6 and resumed["val/loss_flow"] == ref["val/loss_flow"]
    for name in ("backbone.safetensors", "objective.safetensors"):  # the EMA included
        a, b = load_file(str(tmp_path / "ref" / name)), load_file(str(tmp_path / "run" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    heads = load_file(str(tmp_path / "ref" / "objective.safetensors"))
    assert any(k.startswith("ema.") for k in heads) and any(k.startswith("ema_head.") for k in heads)

    summary = sample_from_model(
        SampleConfig(n=20, split="val", ode_steps=3), tmp_path / "ref", tmp_path / "gen", data_dir=jet_dataset
    )
    obs = summary["observables"]
    assert obs["multiplicity"]["wasserstein_generated"] == 0.0  # conditioned on the real multiplicity
    assert all(np.isfinite(obs[k]["wasserstein_generated"]) for k in ("jet_mass", "jet_pt"))
    assert (tmp_path / "gen" / "generation.png").stat().st_size > 0
    assert json.loads((tmp_path / "gen" / "comparison.json").read_text())["n_generated"] == 20
    with pytest.raises(ValueError, match="--data"):
        sample_from_model(SampleConfig(n=5), tmp_path / "ref", tmp_path / "gen2", data_dir=None)
    # the report's section: a row per observable, the histogram embedded in the page
    from physfm.evaluate.generated import generated_rows
    from physfm.evaluate.report import _generated_section

    rows = generated_rows({"flow": tmp_path / "gen"})
    assert rows[0]["conditions"] == ["log_mass", "log_multiplicity", "multiplicity"] and rows[0]["plot"]
    page: list[str] = []
    assert _generated_section(page.append, {"flow": tmp_path / "gen"}) == rows
    html = "\n".join(page)
    assert "Generated jets" in html and html.count("<tr>") == 1 + 3 and "data:image/png;base64" in html
    with pytest.raises(ValueError, match="no comparison.json"):
        generated_rows({"x": tmp_path})


def test_mpm2_pretrains_and_its_encoder_is_a_plain_backbone(jet_dataset, tokenizer8, tmp_path):
    from physfm.pretrain.checkpoints import load_backbone
    from physfm.pretrain.train import PretrainConfig, pretrain

    cfg = PretrainConfig.from_dict(
        {**TINY, "objective": "mpm2", "objectives": {"mpm2": {"decoder_dim": 8, "decoder_heads": 2, "registers": 2}}}
    )
    summary = pretrain(cfg, jet_dataset, tokenizer8, tmp_path / "mpm2", progress=False)
    assert np.isfinite(summary["val/loss_token"]) and "val/loss_pid" in summary
    model, meta = load_backbone(tmp_path / "mpm2")
    assert model.config.n_cls == 3 and not model.config.mask_token and model.config.local == "knn"
    assert meta["objective_options"]["mask_fraction"] == 0.35 and meta["objective_options"]["pid_weight"] == 0.3


def test_edge_conv_equals_the_edge_by_edge_mlp():
    from physfm.models.pet import EdgeConv

    torch.manual_seed(0)
    conv = EdgeConv(8, 8)
    x, mask = _jets(f=8)
    h = torch.randn(*mask.shape, 8)
    idx, has = knn_indices(x[..., 1:3], mask, 4)
    assert torch.allclose(conv(h, idx, has), conv.reference(h, idx, has), atol=1e-5)
