"""Issue 18: the report's factors for AUC and the signal pair's rejections, against the best method, against
scratch and against the scratch_global ablation; pooled pretraining runs; the ablations section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from physfm.evaluate.report import ablation_rows, best_method_rows, build_report, headline_metrics, pool_runs

LABELS = (100, 300, 1000, 3000, 10000)
METRICS = ("auc", "rej50_Tbqq_vs_QCD", "rej30_Tbqq_vs_QCD")
SCALE = {"auc": 0.05, "rej50_Tbqq_vs_QCD": 5.0, "rej30_Tbqq_vs_QCD": 10.0}  # metric = SCALE * log10(n) (+ offset)


def _record(mode: str, n: int, seed: int, shift: float, backbone: str = "mpm") -> dict:
    """A run whose metrics equal the reference curve's at ``n * 10**shift`` (``shift`` decades more labels)."""
    noise = 0.005 * np.sin(7.3 * seed + 1.7 * len(mode + backbone) + n)  # seed noise, different per cell
    metrics = {m: SCALE[m] * (np.log10(n) + shift + noise) + (0.5 if m == "auc" else 0.0) for m in METRICS}
    return {"mode": mode, "n_labels": n, "seed": seed, "backbone": backbone, "metrics": metrics, "std": {},
            "labels": str(n), "n_events": 100, "train": {"best_step": 1}}  # fmt: skip


def _study() -> list[dict]:
    runs = []
    for seed in (1, 2, 3, 4, 5):
        runs += [_record("scratch", n, seed, 0.0) for n in LABELS]
        runs += [_record("bdt", n, seed, 0.5) for n in LABELS]  # the best method: worth 10**0.5 x the labels
        runs += [_record("scratch_global", n, seed, 0.3) for n in LABELS[:3]]
        runs += [_record("finetune", n, seed, 1.0) for n in LABELS[:2]]  # = scratch at 10x the labels
        runs += [_record("linear", n, seed, 0.6) for n in LABELS[:2]]
        runs += [_record("finetune", n, seed, 0.8, backbone="nog") for n in LABELS[:2]]
    return runs


def test_factors_for_auc_and_both_rejections_against_best_scratch_and_scratch_global() -> None:
    results = _study()
    metrics = headline_metrics(results, "auc")
    assert set(METRICS) <= set(metrics)
    rows = best_method_rows(results, metrics, "auc")
    by = {(r["metric_name"], r["against"], r["mode"], int(r["n"])): r for r in rows}
    for m in METRICS:
        scratch = by[(m, "scratch", "finetune mpm", 100)]
        assert scratch["factor"] == pytest.approx(10.0, rel=0.05)  # scratch needs 1000 labels
        best = by[(m, "best", "finetune mpm", 100)]
        assert best["best_reference"] == "bdt" and best["factor"] == pytest.approx(10**0.5, rel=0.05)
        assert np.isfinite(best["low"]) and best["low"] < best["factor"] < best["high"] and not best["few_seeds"]
        assert by[(m, "scratch_global", "finetune mpm", 100)]["factor"] == pytest.approx(10**0.7, rel=0.05)
        assert by[(m, "scratch", "scratch_global", 100)]["factor"] == pytest.approx(10**0.3, rel=0.05)
        assert by[(m, "best", "linear mpm", 300)]["factor"] == pytest.approx(10**0.1, rel=0.05)
        assert by[(m, "best", "finetune nog", 100)]["factor"] == pytest.approx(10**0.3, rel=0.05)
    abl = ablation_rows(rows, ["nog"])
    assert {r["mode"] for r in abl} >= {"linear mpm", "scratch_global", "finetune nog"}
    assert all(r["mode"] != "finetune mpm" or r["against"] == "scratch_global" for r in abl)


def test_pooled_pretraining_runs_are_averaged_per_label_seed() -> None:
    runs = [_record("finetune", 100, 1, 1.0, "a"), _record("finetune", 100, 1, 0.0, "b"), _record("scratch", 100, 1, 0)]
    pooled = [r for r in pool_runs(runs, {"ab": ["a", "b"]}) if r["backbone"] == "ab"]
    assert len(pooled) == 1 and pooled[0]["pooled"] == ["a", "b"]
    assert pooled[0]["metrics"]["auc"] == pytest.approx(np.mean([runs[0]["metrics"]["auc"], runs[1]["metrics"]["auc"]]))
    with pytest.raises(ValueError, match="apart from its members"):
        pool_runs(runs, {"a": ["a", "b"]})


def test_report_has_the_ablations_section_and_the_rejection_factors(tmp_path: Path) -> None:
    data = build_report(tmp_path / "report.html", _study(), ablation_backbones=["nog"], n_bootstrap=20)
    page = (tmp_path / "report.html").read_text()
    assert 'id="ablations"' in page and "scratch_global" in page and "1/εB at εS=0.3" in page
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["ablations"] and {r["against"] for r in saved["best_method"]} == {"best", "scratch", "scratch_global"}
    assert {r["metric_name"] for r in data["best_method"]} == set(METRICS)


def test_search_rows_count_the_chosen_candidates() -> None:
    from physfm.evaluate.report import search_rows

    grid = [{"lr": 5e-4}, {"lr": 2e-3}]
    runs = []
    for seed, chosen in ((1, 0), (2, 1), (3, 1)):
        r = _record("scratch", 100, seed, 0.0)
        cands = [{"settings": g, "val_loss": 1.0 + 0.1 * seed + i} for i, g in enumerate(grid)]
        runs.append({**r, "search": {"grid": grid, "candidates": cands, "chosen": chosen}})
    rows = search_rows([*runs, _record("bdt", 100, 1, 0.5)])
    assert len(rows) == 1 and rows[0]["chosen"] == {"0": 1, "1": 2}
    assert np.mean(rows[0]["val_loss"]["1"]) == pytest.approx(2.2)
