"""Search at scale (issue 20): an IVF index above the size threshold, its recall against exact search
recorded, and `physfm search` reporting its latency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from physfm.cli import main
from physfm.evaluate.search import build_index, index_recall, open_index, write_embeddings


def _clustered(n: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)) * 3
    labels = rng.integers(0, 20, n)
    return (centres[labels] + rng.normal(size=(n, d))).astype(np.float32), labels % 4


def test_auto_index_is_ivf_from_the_threshold_with_its_recall_recorded(tmp_path: Path) -> None:
    emb, labels = _clustered(4000)
    assert build_index(emb[:999], "auto", approximate_above=1000)[1]["kind"] == "flat"
    meta = write_embeddings(
        tmp_path / "e", emb, labels, np.arange(4000, dtype=np.uint64), {"classes": list("abcd")}, approximate_above=1000
    )
    index = meta["index"]
    assert index["kind"] == "ivf" and index["nlist"] >= 2 and index["n_train"] <= 4000
    assert 0.8 <= index["recall_at_k"] <= 1.0 and index["recall_queries"] == 1000 and index["recall_k"] == 10
    assert open_index(tmp_path / "e").meta["index"]["recall_at_k"] == index["recall_at_k"]  # in the manifest

    # the measure can fail: one probed cell of many misses most true neighbours
    faiss_index, _ = build_index(emb, "ivf", nlist=200, nprobe=1)
    assert index_recall(faiss_index, emb, k=10)["recall_at_k"] < index["recall_at_k"]


def test_search_cli_reports_latency(tmp_path: Path) -> None:
    emb, labels = _clustered(2000)
    write_embeddings(
        tmp_path / "e", emb, labels, np.arange(2000, dtype=np.uint64), {"classes": list("abcd")}, kind="ivf"
    )
    assert (
        main(["search", "--index", str(tmp_path / "e"), "--row", "7", "-k", "5", "--out", str(tmp_path / "r.json")])
        == 0
    )
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["neighbours"][0]["row"] == 7 and len(result["neighbours"]) == 5
    assert result["latency_ms"] > 0 and result["index"]["kind"] == "ivf"
