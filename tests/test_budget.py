"""Label subsets that sample what varies (one draw per seed) and in-budget validation parts (issue 18)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from read_spy import ReadSpy

from physfm.finetune.subsets import (
    BudgetProtocol,
    balanced_order,
    load_split,
    make_subsets,
    read_labels,
    subset_info,
    validation_mask,
)
from physfm.io import read_json

SPECS = ["8", "20", "40", "all"]
SEEDS = [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def subsets(jet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("budget") / "subsets"
    make_subsets(jet_dataset, SPECS, SEEDS, out)
    return out


def test_rule_per_class() -> None:
    p = BudgetProtocol()
    c = np.array([0, 1, 2, 3, 4, 5, 6, 7, 14, 15, 20, 25, 100])
    # round(0.2 c), at least 3, at most half
    assert p.n_val(c).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 4, 5, 20]
    assert np.all(np.diff(p.n_val(np.arange(500))) >= 0) and np.all(np.diff(p.n_val(np.arange(500))) <= 1)
    assert BudgetProtocol("fixed").n_val(c).tolist() == [0] * len(c)
    assert BudgetProtocol(val_fraction=0.5, min_val_per_class=0).n_val(np.array([10, 11])).tolist() == [5, 5]
    bad_settings = (
        {"name": "kfold"},
        {"val_fraction": 0.0},
        {"val_fraction": 0.7},
        {"min_val_per_class": -1},
        {"max_val_per_class": 2},  # below min_val_per_class
    )
    for bad in bad_settings:
        with pytest.raises(ValueError):
            BudgetProtocol(**bad)


def test_validation_cap_per_class_keeps_the_rule_below_it_and_nesting() -> None:
    capped = BudgetProtocol(max_val_per_class=4)
    c = np.array([0, 6, 15, 20, 25, 100, 5000])
    assert capped.n_val(c).tolist() == [0, 3, 3, 4, 4, 4, 4]  # the plain rule, then never above the cap
    steps = np.diff(capped.n_val(np.arange(500)))
    assert np.all((steps == 0) | (steps == 1))  # still nested: the j-th event is validation or train for good
    labels = np.repeat(np.arange(3), 200)
    ordered = labels[balanced_order(labels, 3, seed=2)]
    mask = validation_mask(ordered, capped)
    assert [int(mask[ordered == k].sum()) for k in range(3)] == [4, 4, 4]  # the rest train; n unchanged
    assert BudgetProtocol.from_params({"name": "holdout", "val_fraction": 0.2, "min_val_per_class": 3, "refit": False})


def test_validation_mask_every_prefix_follows_the_rule() -> None:
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(300), np.ones(120), np.full(9, 2)].astype(np.int64)
    order = balanced_order(labels[rng.permutation(len(labels))], 3, seed=7)
    lab = labels[order]
    p = BudgetProtocol(val_fraction=0.25, min_val_per_class=2)
    mask = validation_mask(lab, p)
    for n in range(0, len(lab) + 1, 7):
        for c in range(3):
            in_prefix = lab[:n] == c
            assert mask[:n][in_prefix].sum() == p.n_val(in_prefix.sum())


def test_nested_within_seed_and_different_between_seeds(subsets: Path, jet_dataset: Path) -> None:
    parts = {(s, spec): load_split(subsets, spec, s, jet_dataset) for s in SEEDS for spec in SPECS}
    for s in SEEDS:
        for small, big in zip(SPECS, SPECS[1:], strict=False):
            (tr_s, va_s), (tr_b, va_b) = parts[(s, small)], parts[(s, big)]
            assert set(tr_s) <= set(tr_b) and set(va_s) <= set(va_b), (s, small, big)
    for spec in ("8", "20", "40"):
        sets = [frozenset(np.r_[parts[(s, spec)][0], parts[(s, spec)][1]]) for s in SEEDS]
        assert len(set(sets)) == len(SEEDS), spec  # every seed draws its own subset
    # "all" holds every labelled event for every seed, but the validation parts still differ
    assert len({frozenset(parts[(s, "all")][1]) for s in SEEDS}) == len(SEEDS)


def test_budget_is_exactly_n_and_parts_are_balanced_and_disjoint(subsets: Path, jet_dataset: Path) -> None:
    labels, _ = read_labels(jet_dataset, "train")
    n_labelled = int((labels >= 0).sum())
    p = BudgetProtocol()
    for s in SEEDS:
        for spec in SPECS:
            train, val = load_split(subsets, spec, s, jet_dataset)
            n = n_labelled if spec == "all" else int(spec)
            assert len(train) + len(val) == n and not set(train) & set(val)
            assert len(set(train)) == len(train) and np.all(labels[np.r_[train, val]] >= 0)
            info = subset_info(subsets, spec, s)
            assert (info["n"], info["n_train"], info["n_val"]) == (n, len(train), len(val))
            if spec != "all":  # the subsets are class-balanced; each class's validation share follows the rule
                per = np.bincount(labels[np.r_[train, val]], minlength=4)
                assert set(per.tolist()) == {n // 4}
                assert np.bincount(labels[val], minlength=4).tolist() == [int(p.n_val(n // 4))] * 4
    info = subset_info(subsets, "40", 2)
    assert info["protocol"]["name"] == "holdout" and info["protocol"]["val_fraction"] == 0.2
    assert (info["n_train"], info["n_val"]) == (28, 12)  # 10 per class: 3 validation (the minimum) + 7 train


def test_deterministic_and_checked(subsets: Path, jet_dataset: Path, tmp_path: Path) -> None:
    again = make_subsets(jet_dataset, SPECS, SEEDS, tmp_path / "again", verify=False)
    assert again == read_json(subsets / "manifest.json")["info"] | {
        "data_version": again["data_version"],
        "subsets_version": read_json(subsets / "manifest.json")["version"],
    }
    for f in sorted(p.relative_to(subsets) for p in subsets.rglob("*.npy")):
        assert (subsets / f).read_bytes() == (tmp_path / "again" / f).read_bytes(), f
    fixed = make_subsets(jet_dataset, ["40"], [1], tmp_path / "fixed", protocol=BudgetProtocol("fixed"))
    assert fixed["protocol"]["name"] == "fixed"
    train, val = load_split(tmp_path / "fixed", "40", 1)
    assert len(train) == 40 and len(val) == 0
    with pytest.raises(Exception, match="seed 9 has no subsets"):
        load_split(subsets, "40", 9)
    with pytest.raises(Exception, match="not in"):
        load_split(subsets, "30", 1)
    with pytest.raises(ValueError, match="no seed twice"):
        make_subsets(jet_dataset, ["8"], [1, 1], tmp_path / "dup")


def test_no_finetuning_run_reads_the_val_split_or_a_label_outside_its_subset(
    jet_dataset: Path, tmp_path: Path, spy_reads: Callable[..., ReadSpy]
) -> None:
    """Every labelled event a run touches is in its budget: its subset's train and validation parts."""
    from tiny_study import save_tiny_backbone

    import physfm.finetune.task as ft  # every task reads its events through task.load_inputs
    from physfm.finetune.train import FinetuneConfig, finetune

    backbone = save_tiny_backbone(jet_dataset, tmp_path / "bb")
    subsets = tmp_path / "subsets"
    make_subsets(jet_dataset, ["40"], [2], subsets)
    train_part, val_part = load_split(subsets, "40", 2, jet_dataset)
    spy = spy_reads(ft)
    for mode, probe in (("finetune", 0), ("frozen", 0), ("finetune", 4)):  # probe: the LP-FT warm start's reads too
        cfg = FinetuneConfig(mode=mode, labels="40", seed=2, max_steps=4, eval_every=2, batch_size=8, probe_steps=probe)
        out = tmp_path / f"{mode}{probe}"
        meta = finetune(jet_dataset, out, cfg, subsets_dir=subsets, backbone_dir=backbone, progress=False)
        assert meta["n_labels"] == 40 and meta["budget"]["n_train"] + meta["budget"]["n_val"] == 40
    assert spy.reads and spy.splits() == {"train"}, f"splits read: {sorted(spy.splits())}"
    assert not spy.outside(train_part, val_part), "a run read events outside its label subset"
    reads = spy.reads
    assert any(np.array_equal(i, train_part) for _, i in reads) and any(np.array_equal(i, val_part) for _, i in reads)
