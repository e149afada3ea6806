"""Metrics on known toys, the label-efficiency factor, faiss search, and the report rendering."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from physfm.data.shards import DataError
from physfm.evaluate.efficiency import best_method_factors, format_factor, scratch_labels_needed
from physfm.evaluate.metrics import classification_metrics, evaluate_scores, rejection_at, roc_auc
from physfm.evaluate.report import SECTIONS, build_report
from physfm.evaluate.search import build_index, knn_accuracy, open_index, write_embeddings

CLASSES = ["QCD", "Tbqq", "Wqq", "Zqq"]


# --------------------------------------------------------------------------- metrics
def test_perfect_scores_give_perfect_metrics() -> None:
    labels = np.repeat(np.arange(4), 50)
    probs = np.full((200, 4), 0.02)
    probs[np.arange(200), labels] = 0.94
    m, bounds = classification_metrics(probs, labels, CLASSES)
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0 and m["auc_Tbqq_vs_QCD"] == 1.0
    for c in CLASSES:
        assert m[f"auc_{c}"] == 1.0
    # no QCD jet passes any cut that keeps top jets: rejection is bounded by the 50 QCD jets
    assert m["rej50_Tbqq_vs_QCD"] == 50.0 and bounds["rej50_Tbqq_vs_QCD"]
    assert m["rej30_Tbqq_vs_QCD"] == 50.0 and bounds["rej30_Tbqq_vs_QCD"]


def test_random_scores_give_chance_metrics() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    labels = rng.integers(0, 4, n)
    probs = rng.dirichlet(np.ones(4), n)
    m, bounds = classification_metrics(probs, labels, CLASSES)
    assert abs(m["accuracy"] - 0.25) < 0.02
    assert abs(m["auc"] - 0.5) < 0.02 and abs(m["auc_Tbqq_vs_QCD"] - 0.5) < 0.03
    # a random tagger keeps the same fraction of background as of signal: 1/eB = 1/eS
    assert abs(m["rej50_Tbqq_vs_QCD"] - 2.0) < 0.15 and abs(m["rej30_Tbqq_vs_QCD"] - 1 / 0.3) < 0.4
    assert not any(bounds.values())


def test_auc_matches_mann_whitney_with_ties_and_inverted_scores() -> None:
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.4, 0.9])
    pos = np.array([0, 0, 1, 1, 0, 1], dtype=bool)
    pairs = [(s_p > s_n) + 0.5 * (s_p == s_n) for s_p in scores[pos] for s_n in scores[~pos]]
    assert roc_auc(scores, pos) == pytest.approx(np.mean(pairs))
    assert roc_auc(-scores, pos) == pytest.approx(1 - np.mean(pairs))
    assert np.isnan(roc_auc(scores, np.ones(6, dtype=bool)))


def test_rejection_is_read_at_the_requested_signal_efficiency() -> None:
    # 10 signal at scores 10..19, 10 background at 0..9 plus 5 background above all signal
    sig = np.arange(10, 20.0)
    bkg = np.r_[np.arange(10.0), [30, 31, 32, 33, 34]]
    scores = np.r_[sig, bkg]
    pos = np.r_[np.ones(10, bool), np.zeros(15, bool)]
    rej, bound = rejection_at(scores, pos, 0.5)  # keeping 5 signal keeps the 5 high background: eB = 5/15
    assert rej == pytest.approx(3.0) and not bound


def test_bootstrap_spread_shrinks_with_more_events() -> None:
    rng = np.random.default_rng(0)

    def spread(n: int) -> float:
        labels = rng.integers(0, 4, n)
        probs = rng.dirichlet(np.ones(4), n)
        probs[np.arange(n), labels] += 0.5
        probs /= probs.sum(1, keepdims=True)
        return evaluate_scores(probs, labels, CLASSES, n_bootstrap=60, seed=1)["std"]["auc"]

    small, large = spread(200), spread(3200)
    assert 2.5 < small / large < 6.5  # ~ sqrt(16) = 4


# --------------------------------------------------------------------------- label-efficiency factor
def test_efficiency_factor_interpolates_in_log_labels_and_marks_bounds() -> None:
    n, auc = [100, 1000, 10000], [0.80, 0.85, 0.90]
    needed, kind = scratch_labels_needed(n, auc, 0.825)
    assert kind == "value" and needed == pytest.approx(np.sqrt(100 * 1000))
    assert scratch_labels_needed(n, auc, 0.85) == (pytest.approx(1000.0), "value")
    assert scratch_labels_needed(n, auc, 0.95) == (pytest.approx(10000.0), "lower")
    assert scratch_labels_needed(n, auc, 0.70) == (pytest.approx(100.0), "upper")
    # a non-monotone scratch curve is read through its running maximum
    assert scratch_labels_needed([100, 1000, 10000], [0.8, 0.79, 0.9], 0.85)[0] == pytest.approx(np.sqrt(1000 * 10000))


def test_factor_against_scratch_has_an_interval_over_seeds() -> None:
    runs = []
    rng = np.random.default_rng(1)
    for n, base in [(100, 0.80), (1000, 0.85), (10000, 0.90)]:
        for seed in range(5):
            runs.append({"mode": "scratch", "n": n, "seed": seed, "value": base + 0.004 * rng.normal()})
    for seed in range(5):
        runs.append({"mode": "finetune", "n": 100, "seed": seed, "value": 0.85 + 0.004 * rng.normal()})
        runs.append({"mode": "finetune", "n": 10000, "seed": seed, "value": 0.95})
    rows = {(r["mode"], r["n"]): r for r in best_method_factors(runs, ["scratch"])}
    r100 = rows[("finetune", 100.0)]
    assert r100["kind"] == "value" and 5 < r100["factor"] < 20 and r100["low"] < r100["factor"] < r100["high"]
    assert rows[("finetune", 10000.0)]["kind"] == "lower" and format_factor(rows[("finetune", 10000.0)]) == "≥ 1×"
    assert "(" in format_factor(r100)


# --------------------------------------------------------------------------- search
def _clusters(n_per: int = 50, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * 5
    labels = np.repeat(np.arange(3), n_per)
    return (centres[labels] + rng.normal(size=(len(labels), d))).astype(np.float32), labels


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_search_returns_the_query_event_first(tmp_path: Path, kind: str) -> None:
    emb, labels = _clusters(n_per=120)
    keys = np.arange(len(labels), dtype=np.uint64) * 7919 + 3
    write_embeddings(tmp_path / kind, emb, labels, keys, {"classes": ["a", "b", "c"], "split": "test"}, kind=kind)
    index = open_index(tmp_path / kind)
    assert index.meta["index"]["kind"] == kind
    for row in (0, 150, 359):
        hits = index.neighbours(row, k=5)
        assert hits[0]["row"] == row and hits[0]["event_key"] == int(keys[row]) and hits[0]["distance"] < 1e-3
        assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
        assert all(h["label"] == ["a", "b", "c"][labels[row]] for h in hits)
    assert index.row_of(int(keys[42])) == 42
    with pytest.raises(KeyError, match="not in"):
        index.row_of(1)


def test_knn_accuracy_separates_clusters_from_noise(tmp_path: Path) -> None:
    emb, labels = _clusters(seed=1)
    write_embeddings(tmp_path / "ref", emb, labels, np.arange(len(labels), dtype=np.uint64), {"classes": list("abc")})
    ref = open_index(tmp_path / "ref")
    q_emb, q_labels = _clusters(seed=1)  # same centres, fresh noise
    q_emb = q_emb + np.random.default_rng(9).normal(size=q_emb.shape).astype(np.float32)
    assert knn_accuracy(ref, q_emb, q_labels, k=5) > 0.9
    shuffled = np.random.default_rng(2).permutation(q_labels)
    assert knn_accuracy(ref, q_emb, shuffled, k=5) < 0.6


def test_index_refuses_modified_files(tmp_path: Path) -> None:
    emb, labels = _clusters()
    write_embeddings(tmp_path / "e", emb, labels, np.arange(len(labels), dtype=np.uint64), {"classes": list("abc")})
    arr = np.load(tmp_path / "e" / "labels.npy")
    arr[0] = 2 - arr[0]
    np.save(tmp_path / "e" / "labels.npy", arr)
    with pytest.raises(DataError, match=r"does not verify(.|\n)*labels.npy: sha256 .* does not match(.|\n)*embed"):
        open_index(tmp_path / "e")


def test_build_index_auto_picks_flat_for_small_sets() -> None:
    _, params = build_index(np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32), "auto")
    assert params["kind"] == "flat"


# --------------------------------------------------------------------------- report
def _fake_results() -> list[dict]:
    """Evaluation records shaped like `physfm evaluate` output, from synthetic scores."""
    rng = np.random.default_rng(5)
    results = []
    for n in (100, 300, 1000):
        for mode, boost in (("scratch", 0.0), ("finetune", 0.6), ("frozen", 0.3)):
            for seed in (1, 2):
                labels = rng.integers(0, 4, 400)
                probs = rng.dirichlet(np.ones(4), 400)
                probs[np.arange(400), labels] += 0.15 * np.log10(n) + boost
                probs /= probs.sum(1, keepdims=True)
                r = evaluate_scores(probs, labels, CLASSES, n_bootstrap=20, seed=seed)
                history = [{"step": s, "train_loss": 1.4 - 0.01 * s, "val_loss": 1.3 - 0.005 * s} for s in (10, 20, 30)]
                results.append(
                    {
                        "mode": mode, "labels": str(n), "n_labels": n, "seed": seed, "backbone": "mpm",
                        "run_id": f"run{n}{mode}{seed}", "run_name": f"finetune n={n} mode={mode} seed={seed}",
                        "data_version": "abcd", "tokenizer_version": "tok1", "train": {"best_step": 20},
                        "history": history, **r,
                    }
                )  # fmt: skip
    return results


def test_report_renders_every_section_with_embedded_figures(tmp_path: Path) -> None:
    summary = tmp_path / "summary"
    summary.mkdir()
    (summary / "summary.json").write_text(json.dumps({"data_version": "abcd", "n_events": {"train": 10}}))
    pre = tmp_path / "pre"
    pre.mkdir()
    history = [{"step": s, "val/loss": 6.1 - s / 100, "val/loss_token": 5.9 - s / 100} for s in (0, 50, 100)]
    (pre / "history.json").write_text(json.dumps(history))
    (pre / "metrics.json").write_text(json.dumps({"log_K": 6.24, "objective": "mpm"}))
    results = _fake_results()
    knn = [{"name": "mpm pretrained", "k": 10, "accuracy": 0.61}, {"name": "mpm random", "k": 10, "accuracy": 0.4}]
    data = build_report(
        tmp_path / "out" / "report.html", results, data_summary=summary, pretrain={"mpm": pre}, knn=knn, n_bootstrap=100
    )
    page = (tmp_path / "out" / "report.html").read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in page, section
    figures = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(figures) >= 5  # efficiency, roc, curves, factor, pretraining
    assert all(len(f) > 2000 for f in figures)
    assert 'src="http' not in page and "<script" not in page  # self-contained, static
    for name in ("label_efficiency", "roc", "finetune_curves", "efficiency_factor", "pretraining"):
        assert (tmp_path / "out" / "figures" / f"{name}.png").stat().st_size > 5000
    # numbers in the page are those in report.json, which are the means of the inputs
    cell = next(c for c in data["cells"] if c["mode"] == "finetune" and c["n_labels"] == 300)
    expected = np.mean([r["metrics"]["auc"] for r in results if r["mode"] == "finetune" and r["n_labels"] == 300])
    assert cell["auc"] == pytest.approx(expected)
    assert f"{cell['auc']:.4g}" in page
    assert "0.61" in page and "mpm pretrained" in page
    eff = {(e["mode"], e["n"]): e for e in data["efficiency"]}
    assert eff[("finetune", 100.0)]["factor"] > 1 and eff[("finetune", 1000.0)]["kind"] == "lower"
    assert "≥" in page and "fine-tuned above scratch" in page
    assert json.loads((tmp_path / "out" / "report.json").read_text())["metric"] == "auc"


def test_report_says_what_is_missing_and_rejects_unknown_metric(tmp_path: Path) -> None:
    results = [r for r in _fake_results() if r["mode"] == "finetune"]
    build_report(tmp_path / "r.html", results, n_bootstrap=10)
    page = (tmp_path / "r.html").read_text()
    assert "data summary not available" in page and "no tokenizer" in page and "needs scratch" in page
    assert (tmp_path / "figures" / "pretraining.png").is_file()  # a placeholder, so workflow outputs exist
    with pytest.raises(ValueError, match="not in the results"):
        build_report(tmp_path / "r2.html", results, metric="f1")


def test_report_links_the_mlflow_runs_view(tmp_path: Path) -> None:
    url = "http://127.0.0.1:5000/#/experiments/7/runs"
    build_report(tmp_path / "r.html", _fake_results(), n_bootstrap=10, mlflow_runs=url)
    page = (tmp_path / "r.html").read_text()
    assert f'<a href="{url}">' in page and "Model training" in page
    build_report(tmp_path / "q.html", _fake_results(), n_bootstrap=10)
    assert "#/experiments/" not in (tmp_path / "q.html").read_text()
