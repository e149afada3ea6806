"""The shared training runtime (physfm.runtime): optimizer groups, the step and its hooks, checkpoints, stop signals."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch import nn

from physfm.runtime import (
    Checkpointer,
    StopSignals,
    adamw,
    cosine_schedule,
    decay_groups,
    due,
    optimizer_step,
    start,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))


def test_weight_decay_only_on_linear_matrices():
    m = _model()
    decay, rest = decay_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[2].weight)}
    assert len(rest["params"]) == 4  # two biases, the norm's weight and bias


def test_hooks_run_after_the_update_with_the_completed_step():
    m = _model()
    opt = adamw(decay_groups(m, 0.0), lr=0.1)
    sched = cosine_schedule(opt, warmup_steps=1, total_steps=3, min_ratio=0.1)
    seen: list[tuple[int, int, torch.Tensor]] = []

    def hook(step: int, total: int) -> None:
        seen.append((step, total, m[0].weight.detach().clone()))

    before = m[0].weight.detach().clone()
    loss = m(torch.ones(2, 3)).sum()
    gnorm = optimizer_step(loss, opt, sched, m.parameters(), 1e9, step=1, total_steps=3, after_step=[hook])
    assert gnorm > 0
    assert seen[0][:2] == (1, 3)
    assert not torch.equal(seen[0][2], before)  # the hook saw the updated weights (an EMA follows the new student)
    assert torch.equal(seen[0][2], m[0].weight)
    assert sched.get_last_lr()[0] == pytest.approx(0.1)  # warm-up over, cosine at its start


def test_due_runs_periodically_and_at_the_end():
    assert [s for s in range(1, 8) if due(s, 3, 7)] == [3, 6, 7]


def test_checkpointer_restores_exactly_and_refuses_other_configurations(tmp_path, capsys):
    rt = start("cpu")
    m = _model()
    opt = adamw(decay_groups(m, 0.0), lr=0.1)
    optimizer_step(m(torch.ones(2, 3)).sum(), opt, None, m.parameters(), 1.0, step=1, total_steps=2)
    ck = Checkpointer(tmp_path, "hash-a", rt, {"model": m, "optimizer": opt}, who="test")
    torch.manual_seed(123)
    ck.save(1, (0, 5), {"history": [{"step": 1, "val/loss": 0.5}]}, mlflow_run_id="r1")
    expected_draw = torch.rand(3)

    m2 = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    opt2 = adamw(decay_groups(m2, 0.0), lr=0.1)
    got = Checkpointer(tmp_path, "hash-a", rt, {"model": m2, "optimizer": opt2}).restore("require")
    assert got is not None and got.step == 1 and got.position == (0, 5) and got.exact
    assert got.extra == {"history": [{"step": 1, "val/loss": 0.5}]}
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved
    for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()

    other = Checkpointer(tmp_path, "hash-b", rt, {"model": m2})
    assert other.restore("auto") is None
    assert "different configuration" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no checkpoint for this configuration"):
        other.restore("require")
    assert Checkpointer(tmp_path, "hash-a", rt, {"model": m2}).restore("never") is None
    with pytest.raises(ValueError, match="resume must be one of"):
        ck.restore("sometimes")


def test_stop_signals_are_recorded_and_handlers_restored():
    rt = start("cpu")
    old = signal.getsignal(signal.SIGUSR1)
    with StopSignals("test") as stop:
        assert not stop.requested(rt)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested(rt) and stop.reason == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is old
