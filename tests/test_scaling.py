"""Issue 19, lever 1: the unlabelled corpus size of pretraining (``pretrain.corpus_events``) and the report's
corpus-scaling curve (the factor against corpus size, with a power-law fit)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_report_factors import LABELS, _record

from physfm.data.loader import ShardDataset, open_split
from physfm.evaluate.report import build_report
from physfm.evaluate.scaling import corpus_sizes, fit_power_law, scaling_fits
from physfm.pretrain.train import PretrainConfig, pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_max_events_keeps_the_first_events_in_stored_order(jet_dataset: Path) -> None:
    n = len(open_split(jet_dataset, "train"))
    assert n > 150  # the fixture's shards hold 100 events: the cap must cross a shard boundary
    full = ShardDataset(jet_dataset, "train", max_len=8, batch_size=1000)
    part = ShardDataset(jet_dataset, "train", max_len=8, batch_size=1000, max_events=150)
    assert full.n_events == n and part.n_events == 150 and len(part) == 1
    (a,) = list(full)
    (b,) = list(part)
    np.testing.assert_array_equal(b["x"].numpy(), a["x"].numpy()[:150])  # the same events, the same order
    np.testing.assert_array_equal(b["label"].numpy(), a["label"].numpy()[:150])
    with pytest.raises(ValueError, match=f"holds {n} events"):
        ShardDataset(jet_dataset, "train", max_events=n + 1)


def test_pretraining_on_a_smaller_corpus_records_it_and_reads_only_it(jet_dataset: Path, tmp_path: Path) -> None:
    tiny = {"model": {"d_model": 16, "n_layers": 1, "n_heads": 2}, "max_len": 16, "batch_size": 32, "steps": 4,
            "warmup_steps": 1, "val_every": 4, "checkpoint_every": 100, "norm_events": 1000}  # fmt: skip
    cfg = PretrainConfig.from_dict({**tiny, "objective": "regression", "corpus_events": 64})
    pretrain(cfg, jet_dataset, None, tmp_path / "small", progress=False)
    meta = json.loads((tmp_path / "small" / "backbone.json").read_text())
    assert meta["corpus_events"] == 64 and meta["pretrain"]["corpus_events"] == 64
    whole = PretrainConfig.from_dict({**tiny, "objective": "regression"})
    pretrain(whole, jet_dataset, None, tmp_path / "whole", progress=False)
    meta_whole = json.loads((tmp_path / "whole" / "backbone.json").read_text())
    assert meta_whole["corpus_events"] == len(open_split(jet_dataset, "train"))
    assert meta["norm"] != meta_whole["norm"]  # the normalisation is fitted on the corpus it trains on
    assert corpus_sizes({"s": tmp_path / "small", "w": tmp_path / "whole"}, ["s", "w"]) == {
        "s": 64,
        "w": meta_whole["corpus_events"],
    }
    too_big = PretrainConfig.from_dict({**tiny, "objective": "regression", "corpus_events": 10**6})
    with pytest.raises(ValueError, match="corpus_events 1000000: the train split holds"):
        pretrain(too_big, jet_dataset, None, tmp_path / "big", progress=False)
    with pytest.raises(ValueError, match="corpus_events must be >= 0"):
        PretrainConfig.from_dict({"corpus_events": -1})


def test_power_law_fit_recovers_its_slope_and_extrapolates() -> None:
    n = np.array([1e3, 3e3, 1e4, 3e4])
    fit = fit_power_law(n, 0.2 * n**0.4)
    assert fit["b"] == pytest.approx(0.4) and fit["A"] == pytest.approx(0.2) and fit["b_se"] == pytest.approx(0)
    assert fit["corpus_for"]["3"] == pytest.approx((3 / 0.2) ** (1 / 0.4))
    assert np.isnan(fit_power_law(n, 5.0 / n**0.1)["corpus_for"]["10"])  # a falling law never gets there
    with pytest.raises(ValueError, match="two distinct corpus sizes"):
        fit_power_law([1e3, 1e3], [1.0, 2.0])


def test_report_has_the_corpus_scaling_curve(tmp_path: Path) -> None:
    # the same backbone on three corpora; each factor is 10**shift against scratch, 10**(shift - 0.5) against the
    # BDT (test_report_factors' construction): shift rises 0.2 per 4x of corpus, a power law of slope 0.2 / log10(4)
    corpus = {"mpm": 8000, "c2000": 2000, "c500": 500}
    shift = {"mpm": 1.0, "c2000": 0.8, "c500": 0.6}
    runs = []
    for seed in (1, 2, 3, 4, 5):
        runs += [_record("scratch", n, seed, 0.0) for n in LABELS]
        runs += [_record("bdt", n, seed, 0.5) for n in LABELS]
        runs += [_record("finetune", n, seed, shift[b], backbone=b) for b in corpus for n in LABELS[:2]]
    dirs = {}
    for b, c in corpus.items():
        (tmp_path / b).mkdir()
        (tmp_path / b / "backbone.json").write_text(json.dumps({"corpus_events": c}))
        dirs[b] = tmp_path / b
    data = build_report(tmp_path / "r" / "report.html", runs, pretrain=dirs, scaling_backbones=list(corpus),
                        n_bootstrap=20)  # fmt: skip
    sc = data["scaling"]
    assert sc["corpus"] == corpus
    assert {(r["backbone"], r["against"]) for r in sc["rows"]} == {(b, a) for b in corpus for a in ("best", "scratch")}
    for r in sc["rows"]:
        want = 10 ** (shift[r["backbone"]] - (0.5 if r["against"] == "best" else 0.0))
        assert r["factor"] == pytest.approx(want, rel=0.05), r
    fits = {(g["against"], g["n"]): g for g in sc["fits"]}
    assert len(fits) == 4
    for g in fits.values():
        assert g["n_points"] == 3 and g["b"] == pytest.approx(0.2 / np.log10(4), abs=0.02)
    best100 = fits[("best", 100.0)]
    assert best100["corpus_for"]["3"] == pytest.approx(8000 * 3 ** (1 / best100["b"]) / 10 ** (0.5 / best100["b"]),
                                                      rel=0.1)  # fmt: skip
    page = (tmp_path / "r" / "report.html").read_text()
    assert 'id="scaling"' in page and "corpus for 3×" in page
    assert (tmp_path / "r" / "figures" / "corpus_scaling.png").stat().st_size > 0
    # the headline is the whole-corpus backbone's; the smaller corpora are in the scaling section only
    assert any("(mpm)" in h for h in data["headline"]) and not any(
        "c500" in h or "c2000" in h for h in data["headline"]
    )


def test_a_group_without_two_measured_factors_says_why() -> None:
    rows = [
        {"against": "best", "mode": "finetune", "n": 100.0, "kind": "zero", "factor": 0.0, "corpus_events": c,
         "best_reference": "cut"}
        for c in (500, 2000)
    ]  # fmt: skip
    (g,) = scaling_fits(rows)
    assert np.isnan(g["b"]) and "fewer than two" in g["why"]


def test_the_verdict_says_plainly_whether_pretraining_beats_the_best_method() -> None:
    from physfm.evaluate.report import best_method_verdict

    def row(n: int, kind: str, factor: float, low: float = float("nan"), ref: str = "bdt") -> dict:
        return {"against": "best", "mode": "finetune", "n": float(n), "kind": kind, "factor": factor, "low": low,
                "high": float("nan") if kind != "value" else factor * 1.2, "best_reference": ref}  # fmt: skip

    lose = [row(100, "zero", 0.0, ref="cut"), row(300, "value", 0.38, 0.31), row(1000, "upper", 0.1)]
    text = best_method_verdict(lose)
    assert text.startswith("Verdict: pretraining does not beat the best method without pretraining (bdt, cut)")
    assert "any of the 3 label counts" in text and "0.38× (0.31–0.456) at 300 labels" in text
    # a factor above 1 whose interval reaches below 1 is not a win; a lower bound of 2x is
    text = best_method_verdict([row(100, "value", 1.5, 0.9), row(300, "lower", 2.0)])
    assert "in 1 of the 2 label counts (300 labels)" in text
    # above 1 with no interval (one seed) is neither a win nor hidden: it is said to be unbounded
    text = best_method_verdict([row(100, "value", 4.0), row(300, "value", 0.5, 0.4)])
    assert "does not beat" in text and "above 1 but unbounded (no interval) at 100 labels" in text
    text = best_method_verdict([{k: v for k, v in row(100, "value", 4.0).items() if k != "low"}])
    assert "unbounded" in best_method_verdict([{**row(300, "lower", 2.0), "n_seeds": 1}])
    assert "does not beat" in text and "unbounded" in text
    assert best_method_verdict([{**lose[1], "against": "scratch"}]) == ""


def test_a_whole_split_corpus_leaves_the_pretraining_jobs_config_as_before() -> None:
    from physfm.pretrain.config import backbone_slice

    section = {
        "steps": 10,
        "corpus_events": 0,
        "backbones": {"a": {"objective": "mpm"}, "b": {"set": {"corpus_events": 300}}},
    }
    assert "corpus_events" not in backbone_slice(section, "a")  # no rerun of a study pretrained before the key
    assert backbone_slice(section, "b")["corpus_events"] == 300
