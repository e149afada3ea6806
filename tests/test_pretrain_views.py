"""Pretraining with views on real (tiny) jets: contrastive and dino end to end, view determinism, exact resume,
and a deliberately collapsing DINO run that fails loudly."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from physfm.models.dino import CollapseError
from physfm.pretrain.checkpoints import Preempted, load_backbone
from physfm.pretrain.train import PretrainConfig, pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {
    "model": {"d_model": 32, "n_layers": 1, "n_heads": 4},
    "max_len": 32,
    "batch_size": 32,
    "steps": 4,
    "warmup_steps": 1,
    "lr": 1e-3,
    "val_every": 2,
    "log_every": 2,
    "checkpoint_every": 100,
    "norm_events": 1000,
}
SMALL_DINO = {"n_prototypes": 32, "head_hidden": 32, "bottleneck_dim": 16}


def tiny(**kw) -> PretrainConfig:
    return PretrainConfig.from_dict({**TINY, **kw})


def test_views_are_identical_across_workers_and_after_resume(jet_dataset):
    from physfm.models.contrastive import Contrastive
    from physfm.pretrain.data import PretrainShards, fit_stats, make_loader

    feats = ["log_pt", "deta", "dphi", "log_pt_rel"]
    obj = Contrastive(8, {}, n_features=len(feats), features=feats)
    stats = fit_stats(
        jet_dataset, features=feats, raw_features=feats, global_names=[], tokenizer=None, max_len=16, n_events=0, seed=0
    )
    ds = PretrainShards(
        jet_dataset,
        "train",
        stats=stats,
        raw_features=feats,
        objective=obj,
        tokenizer=None,
        max_len=16,
        batch_size=24,
        seed=3,
        shuffle=True,
        drop_last=True,
    )
    ds.set_epoch(2)

    def by_event(batches: list[dict[str, torch.Tensor]]) -> dict[int, tuple[torch.Tensor, ...]]:
        keys = ("x_v0", "mask_v0", "x_v1", "mask_v1")
        return {int(k): tuple(b[n][i] for n in keys) for b in batches for i, k in enumerate(b["event_key"])}

    ref = list(make_loader(ds, 0))
    views = by_event(ref)
    assert not torch.equal(ref[0]["x_v0"], ref[0]["x_v1"])  # two different views
    for workers in (0, 2):
        for skip in (0, 3):
            got = by_event(list(make_loader(ds, workers, skip)))
            common = set(got) & set(views)  # drop_last leaves out other events with other worker counts
            assert len(common) >= len(got) // 2, (workers, skip)
            for k in common:
                assert all(torch.equal(a, b) for a, b in zip(got[k], views[k], strict=True)), (workers, skip)
    ds.set_epoch(3)  # a new epoch draws new views of the same events
    other = by_event(list(make_loader(ds, 0)))
    common = set(other) & set(views)
    assert common and any(not torch.equal(other[k][0], views[k][0]) for k in common)


def test_contrastive_pretrain_through_the_cli(jet_dataset, tmp_path):
    from physfm.cli import main

    out = tmp_path / "clr"
    args = ["pretrain", "--data", str(jet_dataset), "--out", str(out), "--no-progress", "--threads", "1"]
    args += ["--config", json.dumps(TINY), "--set", "objective=contrastive"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    hist = json.loads((out / "history.json").read_text())
    assert metrics["objective"] == "contrastive" and [h["step"] for h in hist] == [0, 2, 4]
    assert all(f"val/{k}" in hist[-1] for k in ("loss_contrastive", "acc_positive", "alignment", "uniformity"))
    assert 1 <= hist[-1]["val/embedding_rank"] <= 32
    assert 0 < hist[0]["val/loss_contrastive"] <= 2 * 4.2  # about log(2B - 1) = log 63 at the start
    model, meta = load_backbone(out)
    assert meta["objective"] == "contrastive" and meta["tokenizer_version"] is None
    assert not model.config.mask_token and not model.config.causal


def test_dino_and_rino_pretrain_and_resume_exactly(jet_dataset, tmp_path):
    rino = {**SMALL_DINO, "global_views": ["full", "kt16"], "local_views": ["kt2", "kt4", "kt8"]}
    cfg = tiny(objective="dino", steps=6, val_every=3, checkpoint_every=2, objectives={"dino": rino})
    ref = pretrain(cfg, jet_dataset, None, tmp_path / "ref", progress=False)
    for k in ("teacher_entropy", "kl_teacher_student", "prototypes_used", "teacher_marginal_entropy"):
        assert f"val/{k}" in ref
    assert 0 < ref["val/teacher_entropy"] <= torch.log(torch.tensor(32.0)) + 1e-5

    def preempt(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(Preempted):
        pretrain(cfg, jet_dataset, None, tmp_path / "run", progress=False, on_step=preempt)
    resumed = pretrain(cfg, jet_dataset, None, tmp_path / "run", progress=False)
    assert resumed["resumed_from"] == 3
    for f in ("backbone.safetensors", "objective.safetensors"):  # student, teacher, centre: all bit-identical
        a, b = load_file(str(tmp_path / "ref" / f)), load_file(str(tmp_path / "run" / f))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), f
    heads = load_file(str(tmp_path / "ref" / "objective.safetensors"))
    exported = load_file(str(tmp_path / "ref" / "backbone.safetensors"))
    assert "center" in heads and int(heads["steps_done"]) == 6
    assert all(torch.equal(heads[f"teacher.{k}"], v) for k, v in exported.items())  # the teacher is written out
    student = tiny(objective="dino", steps=6, val_every=3, objectives={"dino": {**rino, "export": "student"}})
    pretrain(student, jet_dataset, None, tmp_path / "student", progress=False)
    s = load_file(str(tmp_path / "student" / "backbone.safetensors"))
    assert any(not torch.equal(s[k], v) for k, v in exported.items())  # the EMA teacher lags the student
    assert {k: v for k, v in ref.items() if k.startswith("val/")} == {
        k: v for k, v in resumed.items() if k.startswith("val/")
    }


def test_a_collapsing_dino_config_fails_loudly(jet_dataset, tmp_path):
    # temperatures so high that teacher and student are both uniform: the loss is pinned at ln K
    hot = {**SMALL_DINO, "student_temp": 100.0, "teacher_temp": 100.0, "warmup_teacher_temp": 100.0}
    hot.update(collapse_check_every=1, collapse_patience=3)
    cfg = tiny(objective="dino", steps=20, val_every=100, objectives={"dino": hot})
    with pytest.raises(CollapseError, match=r"collapsed \(uniform\) at step 3: 3 checks in a row.*ln K = 3.4657"):
        pretrain(cfg, jet_dataset, None, tmp_path / "hot", progress=False)
    assert not (tmp_path / "hot" / "backbone.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("balancing", ["center", "sinkhorn"])
def test_dino_under_ddp_two_gloo_processes(jet_dataset, tmp_path, balancing):
    """The collectives (centre, Sinkhorn, collapse check) agree across ranks: no deadlock, a result."""
    import subprocess
    import sys
    from pathlib import Path

    opts = {**SMALL_DINO, "balancing": balancing, "collapse_check_every": 2, "collapse_patience": 10}
    cfg = {**TINY, "steps": 6, "val_every": 3, "objective": "dino", "objectives": {"dino": opts}}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ["-m", "physfm", "pretrain", "--data", str(jet_dataset), "--out", str(tmp_path / "two")]
    cmd = [*torchrun, *args, "--config", json.dumps(cfg), "--device", "cpu", "--no-progress"]
    env = {**os.environ, "PHYSFM_TRACKING": "0", "OMP_NUM_THREADS": "1"}
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and 0 < metrics["val/teacher_entropy"] <= math.log(32) + 1e-5


def test_icecube_contrastive_pretrain_on_pulse_views(tmp_path):
    """IceCube's views: pulse dropout and time jitter (real Prometheus events, continuous inputs)."""
    from pathlib import Path

    from physfm.data.convert import convert

    prometheus = Path(__file__).parent / "data" / "graphnet" / "examples" / "parquet" / "prometheus" / "merged"
    data = tmp_path / "data"
    convert("prometheus", prometheus, data, shard_events=20, progress=False)
    views = ["dropout+jitter", "dropout+jitter"]
    cfg = PretrainConfig.from_dict(
        {
            **TINY,
            "objective": "contrastive",
            "features": ["t_cog", "log_charge", "aux", "x_cog", "y_cog", "z_cog"],
            "objectives": {"contrastive": {"views": views, "dropout_fraction": 0.2}},
            "global_targets": ["log10_qtot"],
            "batch_size": 8,
            "steps": 4,
        }
    )
    result = pretrain(cfg, data, None, tmp_path / "bb", progress=False)
    assert 0 < result["val/loss_contrastive"] < 10 and "val/mse_log10_qtot" in result
    _, meta = load_backbone(tmp_path / "bb")
    assert meta["objective"] == "contrastive" and meta["modality"] == "icecube"
    with pytest.raises(ValueError, match="do not apply to this icecube dataset"):
        pretrain(PretrainConfig.from_dict({**cfg.to_dict(), "objectives": {}}), data, None, tmp_path / "x")
