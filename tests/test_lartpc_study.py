"""The LArTPC modality in the pipeline: the ``polarmae`` pretraining objective, the per-point
``segmentation`` fine-tuning task and its zero-label floor, and the DAG of config/lartpc.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from physfm.data.lartpc import DELTA, LOW_ENERGY, MICHEL, SEMANTIC_CLASSES, SHOWER, TRACK
from physfm.data.pointcloud import cap_points, check_not_truncated

REPO = Path(__file__).resolve().parents[1]

TINY_PRETRAIN = {
    "objective": "polarmae",
    "features": ["x", "y", "z", "log_energy"],
    "max_len": 24000,
    "global_targets": [],
    "global_weight": 0.0,
    "steps": 24,
    "batch_size": 4,
    "lr": 0.002,
    "warmup_steps": 2,
    "val_every": 24,
    "checkpoint_every": 24,
    "log_every": 8,
    "norm_events": 16,
    "model": {"d_model": 32, "n_layers": 1, "n_heads": 4},
    "objectives": {
        "polarmae": {
            "max_points": 256,
            "n_patches": 16,
            "group_size": 16,
            "embed_dim": 32,
            "decoder_dim": 32,
            "decoder_layers": 1,
        }
    },
}


@pytest.fixture(scope="module")
def polarmae_backbone(lartpc_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from physfm.pretrain.train import PretrainConfig, pretrain

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("polarmae") / "backbone"
    cfg = PretrainConfig.from_dict(json.loads(json.dumps(TINY_PRETRAIN)))
    summary = pretrain(cfg, lartpc_dataset, None, out, progress=False, device="cpu")
    return out, summary


def test_cap_points_is_deterministic_and_never_takes_padding() -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(3, 50, 4)).astype(np.float32)
    mask = np.zeros((3, 50), dtype=bool)
    mask[0, :50], mask[1, :20], mask[2, :3] = True, True, True
    keys = np.array([11, 12, 13], dtype=np.uint64)
    out, ok, idx = cap_points(pts, mask, keys, 10, salt=7)
    assert out.shape == (3, 10, 4) and ok.sum(1).tolist() == [10, 10, 3]
    assert mask[np.arange(3)[:, None], idx][ok].all()  # only real points
    np.testing.assert_array_equal(out[0], pts[0, idx[0]])
    assert (out[~ok] == 0).all()
    again, _, idx2 = cap_points(pts, mask, keys, 10, salt=7)
    np.testing.assert_array_equal(idx, idx2)
    _, _, other = cap_points(pts, mask, keys, 10, salt=8)
    assert not np.array_equal(idx[0], other[0])  # a new salt draws another subsample
    with pytest.raises(ValueError, match="raise pretrain.max_len to at least 60"):
        check_not_truncated(np.array([10, 60]), 50)


def test_polarmae_objective_trains_in_the_pretraining_loop(polarmae_backbone: tuple[Path, dict]) -> None:
    from physfm.models import OBJECTIVES
    from physfm.pretrain.checkpoints import load_backbone, load_heads

    assert "polarmae" in OBJECTIVES
    out, summary = polarmae_backbone
    history = json.loads((out / "history.json").read_text())
    first, last = history[0]["val/loss"], history[-1]["val/loss"]
    assert np.isfinite(last) and last < first, (first, last)  # the loss decreases on the tiny set
    assert summary["val/masked_fraction"] == pytest.approx(0.6, abs=0.1)
    model, meta = load_backbone(out)
    assert meta["objective"] == "polarmae" and model.config.n_features == 32 and model.config.max_len == 16
    assert any(k.startswith("mae.patch_embed.") for k in load_heads(out))


def test_segmentation_metrics_on_a_hand_made_example() -> None:
    from physfm.finetune.patch_segmentation import class_weights, score_events

    # event 1: 4 track points (3 right, 1 called shower), 2 shower (right); event 2: 2 Michel called
    # delta, 2 low-energy right. Delta is predicted but absent: F1 0; every class enters the macro mean.
    true = [np.array([TRACK] * 4 + [SHOWER] * 2), np.array([MICHEL, MICHEL, LOW_ENERGY, LOW_ENERGY])]
    pred = [np.array([TRACK, TRACK, TRACK, SHOWER, SHOWER, SHOWER]), np.array([DELTA, DELTA, LOW_ENERGY, LOW_ENERGY])]
    r = score_events(true, pred, n_bootstrap=20)
    m = r["metrics"]
    f1_track, f1_shower = 2 * 3 / (2 * 3 + 0 + 1), 2 * 2 / (2 * 2 + 1 + 0)
    assert m["f1_track"] == pytest.approx(f1_track) and m["f1_shower"] == pytest.approx(f1_shower)
    assert m["f1_michel"] == 0 and m["f1_delta"] == 0 and m["f1_low_energy"] == 1
    assert m["macro_f1"] == pytest.approx((f1_track + f1_shower + 1) / 5)
    assert m["seg_error"] == pytest.approx(1 - m["macro_f1"]) and m["accuracy"] == pytest.approx(7 / 10)
    assert r["n_events"] == 2 and r["n_points"] == 10 and np.array(r["confusion"]).sum() == 10
    assert r["std"]["macro_f1"] > 0  # bootstrap over the two events
    w = class_weights(true, len(SEMANTIC_CLASSES), "inverse")
    assert w[DELTA] == 0 and w[MICHEL] == pytest.approx(w[LOW_ENERGY]) and w[MICHEL] == pytest.approx(2 * w[TRACK])


@pytest.mark.parametrize("mode", ["finetune", "frozen"])
def test_segmentation_task_trains_and_counts_events(
    mode: str,
    lartpc_dataset: Path,
    polarmae_backbone: tuple[Path, dict],
    tmp_path: Path,
    one_torch_thread: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import physfm.finetune.patch_segmentation as patch_segmentation
    from physfm.finetune import loop
    from physfm.finetune.patch_segmentation import SegmentationConfig, evaluate_segmentation, finetune_segmentation
    from physfm.finetune.subsets import make_subsets
    from physfm.finetune.train import FinetuneConfig
    from physfm.pretrain.checkpoints import load_backbone

    fits: list[str] = []

    def spy(model, task, *args, **kwargs):  # type: ignore[no-untyped-def]
        fits.append(f"{type(model).__name__}/{task.name}")
        return loop.fit(model, task, *args, **kwargs)

    monkeypatch.setattr(patch_segmentation, "fit", spy)
    subsets = tmp_path / "subsets"
    make_subsets(lartpc_dataset, [10], seed=[1], out_dir=subsets)
    cfg = FinetuneConfig(mode=mode, labels="10", seed=1, max_steps=6, eval_every=3, batch_size=4, device="cpu")
    seg = SegmentationConfig(max_points=256, hidden=16)
    before = {k: v.clone() for k, v in load_backbone(polarmae_backbone[0])[0].state_dict().items()}
    meta = finetune_segmentation(
        lartpc_dataset, tmp_path / "model", cfg, seg=seg, backbone_dir=polarmae_backbone[0], subsets_dir=subsets
    )
    assert fits == ["Segmenter/patch_segmentation"], "the cell trains in the one fine-tuning loop"
    assert meta["n_labels"] == 10 and meta["budget"]["n_train"] + meta["budget"]["n_val"] == 10  # events
    assert meta["n_label_points"] > 1000 and len(meta["history"]) >= 1
    record = evaluate_segmentation(tmp_path / "model", lartpc_dataset, "test", n_bootstrap=10)
    from physfm.data.loader import open_split

    assert record["n_events"] == len(open_split(lartpc_dataset, "test")) > 0 and record["mode"] == mode
    assert 0 <= record["metrics"]["macro_f1"] <= 1 and set(record["metrics"]) >= {"f1_michel", "f1_delta", "seg_error"}
    from physfm.finetune.patch_segmentation import load_segmenter

    model, _ = load_segmenter(tmp_path / "model")
    changed = any(not torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert changed == (mode == "finetune")  # frozen leaves the backbone bit-identical


def test_patch_segmentation_in_the_loop_hooks(lartpc_dataset: Path, polarmae_backbone: tuple[Path, dict]) -> None:
    """What loop.fit uses: ragged rows padded per batch, encode/decode (the frozen cache) equal to the
    forward pass, and validation over batches of different lengths equal to one batch of all events."""
    from physfm.data.lartpc import SEMANTIC_CLASSES
    from physfm.finetune.patch_segmentation import (
        PatchSegmentationTask,
        SegmentationConfig,
        class_weights,
        load_events,
        prepare_segmenter,
    )

    torch.manual_seed(0)
    seg = SegmentationConfig(max_points=256, hidden=16)
    model, meta = prepare_segmenter(polarmae_backbone[0], "finetune", None, len(SEMANTIC_CLASSES), seg, 1)
    model.eval()
    ev = load_events(lartpc_dataset, "train", meta["features"], np.arange(6), seg.max_points)
    lengths = [len(p) for p in ev.points]
    assert len(ev) == 6 and len(set(lengths)) > 1
    b = ev.rows(torch.tensor([4, 1]))
    assert b["x"].shape[1] == max(lengths[4], lengths[1]) and b["mask"].sum(1).tolist() == [lengths[4], lengths[1]]
    assert (b["target"][~b["mask"]] == -1).all() and b["cap"].shape[1] == seg.max_points
    inputs = {k: v for k, v in b.items() if k != "target"}
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode(**inputs), **inputs), model(**inputs))

    w = torch.as_tensor(class_weights(ev.labels, len(SEMANTIC_CLASSES), "inverse_sqrt"), dtype=torch.float32)
    task = PatchSegmentationTask(list(SEMANTIC_CLASSES), w, gamma=2.0)
    with torch.no_grad():
        parts = [ev.rows(torch.arange(a, a + 2)) for a in (0, 2, 4)]  # three batches, three padded lengths
        batches = [(model(**{k: v for k, v in p.items() if k != "target"}), p["target"], p["mask"]) for p in parts]
    whole = ev.rows(torch.arange(6))
    out = torch.full((*whole["mask"].shape, len(SEMANTIC_CLASSES)), float("nan"))  # padding: never read
    for a, (o, _, _) in zip((0, 2, 4), batches, strict=True):
        out[a : a + 2, : o.shape[1]] = o
    streamed, at_once = task.validate_batches(batches), task.validate(out, whole["target"], whole["mask"])
    assert streamed["val_loss"] == pytest.approx(at_once["val_loss"], rel=1e-5)
    assert streamed["val_macro_f1"] == pytest.approx(at_once["val_macro_f1"], abs=1e-6)
    assert set(streamed) == set(task.val_keys)


def test_floor_record_is_a_zero_label_reference(lartpc_dataset: Path) -> None:
    from physfm.finetune.patch_segmentation import evaluate_floor

    r = evaluate_floor(lartpc_dataset, "test", n_bootstrap=5)
    assert r["mode"] == "floor" and r["n_labels"] == 0 and r["metrics"]["f1_michel"] == 0
    assert 0 < r["metrics"]["macro_f1"] < 1


@pytest.mark.slow  # Snakemake parses the workflow: ~40 s on a shared 2-core machine
def test_lartpc_study_dag(tmp_path: Path) -> None:
    """config/lartpc.yaml schedules the whole study: generate -> ... -> report (dry run, clean copy)."""
    import shutil

    for item in ("Snakefile", "workflow", "profiles", "config", "envs"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PHYSFM_RESULTS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--configfile=config/lartpc.yaml", "all"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs: dict[str, int] = {}
    for line in out.stdout.rsplit("Job stats:", 1)[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    # 3 label counts x 3 modes x 2 seeds + the reference count in scratch x 2 seeds
    assert jobs["finetune"] == jobs["evaluate"] == 20
    for rule in ("generate", "convert", "summarize", "pretrain", "segfloor", "label_subsets", "report"):
        assert jobs[rule] == 1, rule
    assert "tokenizer" not in jobs and "embed" not in jobs and "observables" not in jobs
