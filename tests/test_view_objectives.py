"""contrastive (NT-Xent) and dino (EMA teacher, balancing, collapse check) on tensors (no data files)."""

from __future__ import annotations

import math

import pytest
import torch

from physfm.models import OBJECTIVES, Backbone, BackboneConfig
from physfm.models.contrastive import Contrastive, nt_xent
from physfm.models.dino import (
    CollapseError,
    Dino,
    ema_update,
    is_collapsed,
    sinkhorn_knopp,
    teacher_momentum,
    teacher_temperature,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registered():
    assert OBJECTIVES["contrastive"] is Contrastive and OBJECTIVES["dino"] is Dino
    assert not Contrastive.needs_tokenizer and not Dino.needs_tokenizer


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_of_identical_views_is_analytic(tau):
    b = 4
    z = torch.eye(b, 8)  # orthonormal embeddings, both views identical
    loss, acc = nt_xent(z, z.clone(), tau)
    # positive similarity 1, the other 2B - 2 candidates 0: -log(e^{1/tau} / (e^{1/tau} + 2B - 2))
    assert float(loss) == pytest.approx(math.log(1 + (2 * b - 2) * math.exp(-1 / tau)), rel=1e-6, abs=1e-6)
    assert float(acc) == 1.0
    same = torch.ones(b, 8)  # collapsed: every candidate as similar as the positive
    loss_c, _ = nt_xent(same, same, tau)
    assert float(loss_c) == pytest.approx(math.log(2 * b - 1), rel=1e-6)
    # the loss does not care about the embeddings' norm
    assert float(nt_xent(3 * z, 0.5 * z, tau)[0]) == pytest.approx(float(loss), rel=1e-6)


def tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone(BackboneConfig(n_features=3, d_model=16, n_layers=1, n_heads=2, max_len=8))


def test_teacher_is_an_exact_ema_of_the_student():
    backbone = tiny_backbone()
    dino = Dino(16, {"n_prototypes": 8, "head_hidden": 16, "bottleneck_dim": 4})
    dino.attach(backbone)
    assert all(torch.equal(t, s) for t, s in zip(dino.teacher.parameters(), backbone.parameters(), strict=True))
    assert not any(p.requires_grad for p in dino.teacher.parameters())
    assert not any(n.startswith("teacher.") for n, p in dino.named_parameters() if p.requires_grad)
    with torch.no_grad():  # an "optimizer step" of the student and its head
        for p in [*backbone.parameters(), *dino.head.parameters()]:
            p.add_(torch.randn_like(p))
    before_t = [p.clone() for p in dino.teacher.parameters()]
    before_h = [p.clone() for p in dino.teacher_head.parameters()]
    dino.after_step(1, 10)
    m = teacher_momentum(0, 10, 0.996)
    assert m == pytest.approx(0.996)
    for t, t0, s in zip(dino.teacher.parameters(), before_t, backbone.parameters(), strict=True):
        assert torch.equal(t, m * t0 + (1 - m) * s)
    for t, t0, s in zip(dino.teacher_head.parameters(), before_h, dino.head.parameters(), strict=True):
        assert torch.equal(t, m * t0 + (1 - m) * s)
    assert int(dino.steps_done) == 1
    # the cosine schedule: 0.996 -> 0.998 halfway -> 1 at the end
    assert teacher_momentum(5, 10, 0.996) == pytest.approx(0.998)
    assert teacher_momentum(10, 10, 0.996) == 1.0
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    a0 = a.weight.clone()
    ema_update(a, b, 1.0)
    assert torch.equal(a.weight, a0)
    ema_update(a, b, 0.0)
    assert torch.equal(a.weight, b.weight)


def test_teacher_temperature_warm_up():
    assert teacher_temperature(0, 0.04, 0.07, 100) == pytest.approx(0.04)
    assert teacher_temperature(50, 0.04, 0.07, 100) == pytest.approx(0.055)
    assert teacher_temperature(100, 0.04, 0.07, 100) == pytest.approx(0.07)
    assert teacher_temperature(3, 0.04, 0.07, 0) == pytest.approx(0.07)


def test_sinkhorn_balances_prototypes():
    logits = torch.randn(64, 8) + torch.tensor([5.0] + [0.0] * 7)  # one prototype dominates the raw logits
    q = sinkhorn_knopp(logits, 0.5, n_iters=10)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)  # a distribution per event
    assert torch.allclose(q.sum(0), torch.full((8,), 8.0), atol=0.05)  # every prototype used B/K times


def test_collapse_criteria():
    k = 64
    assert is_collapsed(math.log(k), math.log(k) * 0.995, 20, k, 0.02) == "uniform"
    assert is_collapsed(2.0, 1.0, 1, k, 0.02) == "one prototype"
    assert is_collapsed(math.log(k), 2.0, 10, k, 0.02) == ""  # loss passing ln K with a sharp teacher
    assert is_collapsed(3.0, 2.5, 7, k, 0.02) == ""


def test_dino_loss_and_diagnostics_on_a_batch():
    backbone = tiny_backbone()
    opts = {"n_prototypes": 8, "head_hidden": 16, "bottleneck_dim": 4, "global_views": ["full", "kt4"]}
    opts["local_views"] = ["kt2"]
    dino = Dino(16, opts)
    dino.attach(backbone)
    g = torch.Generator().manual_seed(1)
    batch = {}
    for i, length in enumerate((8, 4, 2)):
        batch[f"x_v{i}"] = torch.randn(6, length, 3, generator=g)
        batch[f"mask_v{i}"] = torch.ones(6, length, dtype=torch.bool)
    batch["x"], batch["mask"] = batch["x_v0"], batch["mask_v0"]
    dino.train()
    loss, stats = dino(backbone, batch)
    assert torch.isfinite(loss) and loss.requires_grad
    mean = {k: float(v[0] / v[1]) for k, v in stats.items()}
    # every pair's CE = H(teacher) + KL(teacher || student)
    assert mean["loss_dino"] == pytest.approx(mean["teacher_entropy"] + mean["kl_teacher_student"], rel=1e-4)
    assert 0 < mean["teacher_entropy"] <= math.log(8) + 1e-6 and 1 <= mean["prototypes_used"] <= 6
    assert not torch.equal(dino.center, torch.zeros_like(dino.center))  # a training step moves the centre
    center = dino.center.clone()
    dino.eval()
    dino(backbone, batch)
    assert torch.equal(dino.center, center)  # validation does not
    with pytest.raises(ValueError, match="at least one global view and two views"):
        Dino(16, {"global_views": ["full"], "local_views": []})
    with pytest.raises(ValueError, match="unknown view step"):
        Dino(16, {"global_views": ["full", "kt"]})
    with pytest.raises(RuntimeError, match="attach"):
        Dino(16, opts)(backbone, batch)


def test_collapse_raises_after_patience_checks():
    backbone = tiny_backbone()
    opts = {"n_prototypes": 8, "head_hidden": 16, "bottleneck_dim": 4, "collapse_check_every": 2}
    opts.update(collapse_patience=2, global_views=["full", "full"])
    dino = Dino(16, opts)
    dino.attach(backbone)
    log_k = math.log(8)
    uniform = {"loss": torch.tensor(log_k), "teacher_entropy": torch.tensor(log_k)}
    uniform["prototypes_used"] = torch.tensor(5.0)
    dino._last = dict(uniform)
    dino.after_step(1, 100)  # not a check step
    dino.after_step(2, 100)  # first collapsed check
    assert int(dino.collapse_count) == 1
    with pytest.raises(CollapseError, match=r"collapsed \(uniform\) at step 4: 2 checks in a row"):
        dino.after_step(4, 100)
    dino.collapse_count.zero_()
    dino._last = {**uniform, "loss": torch.tensor(1.0), "teacher_entropy": torch.tensor(0.5)}
    dino.after_step(6, 100)
    assert int(dino.collapse_count) == 0  # healthy numbers reset the count
