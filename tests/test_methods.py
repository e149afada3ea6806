"""The method table (physfm.evaluate.methods) and the method benchmark's configuration (config/methods.yaml)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from physfm.evaluate.methods import markdown_table, method_table, pretraining_cost
from physfm.io import write_json

REPO = Path(__file__).resolve().parents[1]


def _rec(mode: str, n: int, seed: int, auc: float, backbone: str = "a") -> dict:
    return {"mode": mode, "n_labels": n, "seed": seed, "backbone": backbone, "metrics": {"auc": auc}}


def _reference(n: float) -> float:
    return 0.6 + 0.05 * math.log10(n)  # AUC of the best supervised method: +0.05 per decade of labels


def _records() -> list[dict]:
    out = []
    for seed, eps in ((1, -0.002), (2, 0.0), (3, 0.002)):
        for n in (10, 100, 1000):
            out.append(_rec("scratch", n, seed, _reference(n) - 0.02))  # scratch is worse than the BDT
            out += [{**_rec("bdt", n, seed, _reference(n)), "backbone": "none"}]
        # backbone a: fine-tuned with 10 labels matches the BDT at 100 -> factor 10; frozen matches it at 10 -> 1
        out.append(_rec("finetune", 10, seed, _reference(100) + eps))
        out.append(_rec("frozen", 10, seed, _reference(10) + eps))
        out.append(_rec("finetune", 100, seed, _reference(1000) + eps))
        out.append(_rec("finetune", 10, seed, _reference(10) - 0.01 + eps, backbone="b"))
    return out


def test_factor_against_the_best_supervised_baseline_at_the_fewest_labels(tmp_path: Path):
    bdir = tmp_path / "a"
    bdir.mkdir()
    write_json(
        bdir / "backbone.json",
        {"objective": "dino", "pretrain": {"steps": 800, "batch_size": 64}, "config": {"d_model": 128, "n_layers": 4},
         "objective_options": {"n_prototypes": 256}},
    )  # fmt: skip
    write_json(
        bdir / "metrics.json",
        {"train_seconds_this_process": 12.5, "n_params": 1000, "val/teacher_entropy": 0.5 * math.log(256),
         "val/prototypes_used": 200.0, "val/alignment": 0.3, "resumed_from": 0},
    )  # fmt: skip
    knn = [
        {"name": "a pretrained", "random_init": False, "collapse": {"effective_rank": 20.0, "uniformity": -3.0},
         "budgets": [{"n_labels": 10, "seed": s, "accuracy": 0.5 + 0.01 * s} for s in (1, 2, 3)]
         + [{"n_labels": 100, "seed": 1, "accuracy": 0.9}]},
        {"name": "a random", "random_init": True, "collapse": {"effective_rank": 5.0, "uniformity": -1.0},
         "budgets": [{"n_labels": 10, "seed": 1, "accuracy": 0.3}]},
    ]  # fmt: skip
    rows = method_table(_records(), "auc", pretrain_dirs={"a": bdir}, knn=knn)
    assert [r["backbone"] for r in rows] == ["a", "b"]
    a = rows[0]
    ft = a["uses"]["finetune"][0]
    assert ft["n"] == 10 and ft["n_seeds"] == 3 and ft["metric"] == pytest.approx(_reference(100))
    f = ft["factor"]
    assert f["best_reference"] == "bdt" and f["factor"] == pytest.approx(10.0, rel=1e-6)
    assert f["low"] < 10.0 < f["high"]  # an interval over seeds around the point value
    assert a["uses"]["frozen"][0]["factor"]["factor"] == pytest.approx(1.0, rel=1e-6)
    assert "linear" not in a["uses"]  # not run here: no column invented
    assert a["objective"] == "dino" and a["cost"]["events_seen"] == 800 * 64 and a["cost"]["wall_seconds"] == 12.5
    assert a["cost"]["teacher_entropy_over_log_K"] == pytest.approx(0.5)
    assert a["knn"]["knn_n_labels"] == 10 and a["knn"]["knn_accuracy"] == pytest.approx(0.52)
    assert a["knn_random"]["knn_accuracy"] == pytest.approx(0.3)
    assert a["collapse"]["effective_rank"] == 20.0 and a["collapse_random"]["uniformity"] == -1.0
    b = rows[1]
    assert b["uses"]["finetune"][0]["factor"]["kind"] == "upper"  # below the reference at its fewest labels
    assert b["cost"] == {} and b["knn"] == {}
    text = markdown_table(rows)
    assert text.count("\n") == 4 and "dino (a)" in text and "10× [" in text and "vs bdt" in text
    assert "H_teacher/lnK 0.5" in text
    assert "800 × 64" in text and "0.52 vs 0.3 random (n=10)" in text


def test_lower_is_better_metrics_flip_the_comparison():
    recs = [
        {**r, "metrics": {"err": -r["metrics"]["auc"]}}
        for r in _records()
        if r["backbone"] in ("a", "none") or r["mode"] == "scratch"
    ]
    rows = method_table(recs, "err", higher_is_better=False)
    assert rows[0]["uses"]["finetune"][0]["factor"]["factor"] == pytest.approx(10.0, rel=1e-6)


def test_pretraining_cost_of_a_missing_directory_is_empty(tmp_path: Path):
    cost = pretraining_cost(tmp_path / "nothing")
    assert cost["steps"] is None and cost["events_seen"] is None


def test_methods_config_trains_every_objective_on_one_backbone_and_budget():
    from physfm.models.objectives import OBJECTIVES
    from physfm.pretrain.config import backbone_slice, resolve_config

    cfg = yaml.safe_load((REPO / "config/methods.yaml").read_text())
    section = cfg["pretrain"]
    objectives = {b["objective"] for b in section["backbones"].values()}
    # every registered jet objective (polarbert: IceCube's DOM-token model; polarmae: LArTPC patches)
    assert objectives == set(OBJECTIVES) - {"polarbert", "polarmae"}
    assert set(cfg["finetune"]["backbones"]) == set(section["backbones"])
    resolved = {name: resolve_config(backbone_slice(section, name)) for name in section["backbones"]}
    # one backbone and budget; the PET row differs only by its local kNN block (issue 15)
    assert resolved["pet_flow"].model["local"] == "knn" and resolved["pet_flow"].objective == "flow"
    shared = {
        (c.steps, c.batch_size, c.max_len, json.dumps({**c.model, "local": "none"}, sort_keys=True))
        for c in resolved.values()
    }
    assert len(shared) == 1
    rino = resolved["rino"].objectives["dino"]
    assert rino["global_views"] == ["full", "kt16"] and rino["local_views"] == ["kt2", "kt4", "kt8"]
    assert resolved["dino"].objectives["dino"]["global_views"] != rino["global_views"]
    assert np.isclose(resolved["jetclr"].objectives["contrastive"]["temperature"], 0.1)


@pytest.mark.slow
def test_methods_study_schedules_one_pretraining_job_per_objective():
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "all", "--configfile", "config/methods.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("mpm", "gpt", "regression", "jetclr", "dino", "rino", "mpm2", "flow", "pet_flow"):
        assert f"results/methods/pretrain/{name}" in out.stdout
        assert f"results/methods/embed/{name}/pretrained/knn.json" in out.stdout
