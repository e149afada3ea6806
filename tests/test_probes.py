"""Label-cheap probes of an embedding: collapse numbers and the k-NN accuracy at a counted label budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from physfm.evaluate.probes import collapse_numbers
from tests.tiny_study import save_tiny_backbone


def test_collapse_numbers_tell_a_collapsed_embedding_from_a_spread_one():
    rng = np.random.default_rng(0)
    collapsed = np.tile(rng.normal(size=(1, 16)), (200, 1))
    jittered = collapsed + 1e-7 * rng.normal(size=(200, 16))
    plane = rng.normal(size=(200, 2)) @ rng.normal(size=(2, 16))  # two directions used
    spread = rng.normal(size=(200, 16))
    c, j, p, s = (collapse_numbers(e) for e in (collapsed, jittered, plane, spread))
    assert c["uniformity"] == pytest.approx(0.0, abs=1e-6) and c["effective_rank"] == pytest.approx(1.0, abs=1e-3)
    # the rank is scale-free (centred jitter looks full rank); the uniformity is not: it still reads collapsed
    assert j["uniformity"] == pytest.approx(0.0, abs=1e-6)
    assert 1.0 < p["effective_rank"] <= 2.0 + 1e-4
    assert s["uniformity"] < -2.0  # near the sphere's -4 for many well-spread points
    assert s["effective_rank"] > 12
    assert c["dim"] == s["dim"] == 16 and c["n"] == 200
    with pytest.raises(ValueError, match="at least two"):
        collapse_numbers(spread[:1])


@pytest.mark.slow
def test_embed_reports_knn_at_each_label_budget_of_the_subsets(jet_dataset: Path, tmp_path: Path):
    from physfm.cli import main
    from physfm.finetune.subsets import subset_info

    torch.set_num_threads(1)
    backbone = save_tiny_backbone(jet_dataset, tmp_path / "backbone")
    subsets = tmp_path / "subsets"
    assert (
        main(["subsets", "--data", str(jet_dataset), "--labels", "8,40", "--seeds", "1,2", "--out", str(subsets)]) == 0
    )
    out = tmp_path / "embed"
    args = [
        "embed",
        "--backbone",
        str(backbone),
        "--data",
        str(jet_dataset),
        "--split",
        "train,test",
        "--out",
        str(out),
    ]
    args += ["--config", '{"index": "flat", "k": 5}', "--subsets", str(subsets), "--labels", "8,40", "--seeds", "1,2"]
    assert main([*args, "--threads", "1"]) == 0
    knn = json.loads((out / "knn.json").read_text())
    got = {(b["labels"], b["seed"]): b for b in knn["budgets"]}
    assert set(got) == {("8", 1), ("8", 2), ("40", 1), ("40", 2)}
    for (spec, seed), b in got.items():
        info = subset_info(subsets, spec, seed)
        assert b["n_labels"] == info["n"] == int(spec)  # every event of the subset counts, train and val parts
        assert b["digest"] == info["digest"] and b["k"] == 5 and 0.0 <= b["accuracy"] <= 1.0
    assert got[("8", 1)]["digest"] != got[("8", 2)]["digest"]  # each seed its own labelled events
    assert knn["n_reference"] > 40  # the unbudgeted probe is still there, beside
    assert 1.0 <= knn["collapse"]["effective_rank"] <= knn["collapse"]["dim"]
    assert -4.0 <= knn["collapse"]["uniformity"] <= 0.0
