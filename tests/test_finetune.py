"""Label subsets, the three fine-tuning modes, and a tiny end-to-end study with MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_study import LABELS, MODES, SEEDS, run_tiny_study, save_tiny_backbone

from physfm.artifacts import open_artifact
from physfm.data.loader import load_arrays
from physfm.data.shards import load_manifest
from physfm.finetune.model import load_model, param_groups
from physfm.finetune.subsets import (
    balanced_order,
    keys_digest,
    load_split,
    load_subset,
    make_subsets,
    parse_spec,
    read_labels,
    resolve_count,
)
from physfm.finetune.train import FinetuneConfig, finetune
from physfm.pretrain.checkpoints import load_backbone


# --------------------------------------------------------------------------- subsets
def test_label_specs() -> None:
    assert parse_spec("300") == ("count", 300) and parse_spec(300) == ("count", 300)
    assert parse_spec("0.01") == ("fraction", 0.01) and parse_spec("1%") == ("fraction", 0.01)
    assert parse_spec("all") == ("all", None) and parse_spec(1.0) == ("all", None)
    assert resolve_count("1%", 5000) == 50 and resolve_count("all", 77) == 77
    for bad in ("0", "-3", "1.5", "lots"):
        with pytest.raises(ValueError):
            parse_spec(bad)
    with pytest.raises(ValueError, match="exceeds"):
        resolve_count(600, 500)


def test_order_is_nested_balanced_and_fills_from_the_other_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(500), np.ones(300), np.full(40, 2), np.full(200, -1)].astype(np.int64)
    labels = labels[rng.permutation(len(labels))]
    order = balanced_order(labels, 3, seed=4)
    assert len(order) == 840 and len(set(order)) == 840 and np.all(labels[order] >= 0)
    for n in (3, 10, 30, 120):  # while every class has events left, prefixes are balanced to within one
        counts = np.bincount(labels[order[:n]], minlength=3)
        assert counts.max() - counts.min() <= 1, (n, counts)
    counts = np.bincount(labels[order[:400]], minlength=3)  # the rare class runs out; the others fill in
    assert counts[2] == 40 and abs(counts[0] - counts[1]) <= 1 and counts.sum() == 400
    assert np.array_equal(order, balanced_order(labels, 3, seed=4))
    assert not np.array_equal(order, balanced_order(labels, 3, seed=5))


def test_subsets_are_nested_balanced_and_recorded(jet_dataset: Path, tmp_path: Path) -> None:
    manifest = make_subsets(jet_dataset, ["8", "40", "0.5", "all"], seed=1, out_dir=tmp_path / "s")
    labels, keys = read_labels(jet_dataset, "train")
    subsets = {spec: load_subset(tmp_path / "s", spec, jet_dataset) for spec in ("8", "40", "0.5", "all")}
    assert [len(subsets[s]) for s in ("8", "40", "all")] == [8, 40, int((labels >= 0).sum())]
    assert set(subsets["8"]) <= set(subsets["40"]) <= set(subsets["0.5"]) <= set(subsets["all"])
    for spec in ("8", "40"):
        entry = manifest["subsets"][spec]["seeds"]["1"]
        per = {c: entry["train"]["per_class"][c] + entry["val"]["per_class"][c] for c in entry["train"]["per_class"]}
        assert set(per.values()) == {int(spec) // 4}, per
        assert entry["digest"] == keys_digest(keys[subsets[spec]])
    loaded = load_arrays(jet_dataset, "train", features=["log_pt"], max_len=4, indices=subsets["40"])
    assert keys_digest(loaded["event_key"]) == manifest["subsets"]["40"]["seeds"]["1"]["digest"]
    again = make_subsets(jet_dataset, ["8", "40", "0.5", "all"], seed=1, out_dir=tmp_path / "again")
    other = make_subsets(jet_dataset, ["40"], seed=2, out_dir=tmp_path / "other")
    assert again["subsets_version"] == manifest["subsets_version"]
    assert other["subsets_version"] != manifest["subsets_version"]
    assert other["subsets"]["40"]["seeds"]["2"]["digest"] != manifest["subsets"]["40"]["seeds"]["1"]["digest"]
    f = "seed1/n8.train.npy"
    (tmp_path / "s" / f).write_bytes((tmp_path / "s" / "seed1/n40.train.npy").read_bytes())
    with pytest.raises(Exception, match="does not match"):
        load_subset(tmp_path / "s", "8")


def test_grid_cells_tokens_and_run_names() -> None:
    from physfm.finetune import grid

    specs = grid.label_specs([100, "1%", 0.5, "all"])
    assert specs == {"n100": "100", "f0.01": "1%", "f0.5": "0.5", "all": "all"}
    with pytest.raises(ValueError, match="twice"):
        grid.label_specs(["1%", 0.01])
    cells = grid.grid_cells(["mpm", "gpt"], ["n100"], ["scratch", "finetune", "frozen"], [1, 2])
    assert len(cells) == 2 * 2 + 2 * 2 + 2  # scratch once, with the first backbone's architecture
    assert {c[0] for c in cells if c[2] == "scratch"} == {"mpm"}
    assert len(grid.grid_cells(["mpm", "gpt"], ["n100"], ["scratch"], [1], scratch_per_backbone=True)) == 2
    # reference label counts: scratch only, once (first backbone), every seed, no duplicate cells
    ref = grid.grid_cells(["mpm", "gpt"], ["n100"], ["finetune", "scratch"], [1, 2], reference_tokens=["n100", "n3000"])
    assert sorted(c for c in ref if c[1] == "n3000") == [("mpm", "n3000", "scratch", 1), ("mpm", "n3000", "scratch", 2)]
    assert len(ref) == len(set(ref)) == 4 + 2 + 2
    assert grid.cell_run_name("mpm", "0.01", "frozen", 1, False) == "finetune frac=0.01 mode=frozen seed=1"
    assert grid.cell_run_name("gpt", "300", "finetune", 2, True) == "finetune gpt n=300 mode=finetune seed=2"


# --------------------------------------------------------------------------- modes
@pytest.fixture(scope="module")
def tiny_backbone(jet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_backbone(jet_dataset, tmp_path_factory.mktemp("bb") / "backbone")


def _cfg(mode: str, **kw: object) -> FinetuneConfig:
    base = {"labels": "40", "seed": 1, "max_steps": 16, "eval_every": 4, "patience": 10, "batch_size": 8}
    return FinetuneConfig(mode=mode, **{**base, **kw, "head": {"hidden": 16}})


def test_modes_share_the_subset_and_frozen_leaves_the_backbone_bit_identical(
    jet_dataset: Path, tiny_backbone: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    make_subsets(jet_dataset, ["40"], seed=1, out_dir=tmp_path / "subsets")
    pretrained, _ = load_backbone(tiny_backbone)
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    metas, models = {}, {}
    for mode in ("scratch", "finetune", "frozen"):
        metas[mode] = finetune(
            jet_dataset, tmp_path / mode, _cfg(mode), backbone_dir=tiny_backbone,
            subsets_dir=tmp_path / "subsets", progress=False,
        )  # fmt: skip
        models[mode], _, _ = load_model(tmp_path / mode)
    assert len({m["subset"]["digest"] for m in metas.values()}) == 1
    assert all(m["n_labels"] == 40 and set(m["subset"]["per_class"].values()) == {10} for m in metas.values())

    def same(state: dict[str, torch.Tensor]) -> list[bool]:
        return [torch.equal(state[k], before[k]) for k in before]

    frozen = {k[len("backbone.") :]: v for k, v in models["frozen"].state_dict().items() if k.startswith("backbone.")}
    tuned = {k[len("backbone.") :]: v for k, v in models["finetune"].state_dict().items() if k.startswith("backbone.")}
    scratch = {k[len("backbone.") :]: v for k, v in models["scratch"].state_dict().items() if k.startswith("backbone.")}
    assert all(same(frozen)), "frozen mode changed backbone weights"
    assert not all(same(tuned)), "finetune mode did not train the backbone"
    assert not any(same({k: v for k, v in scratch.items() if v.numel() > 1 and v.std() > 0}))
    head_frozen = models["frozen"].head.state_dict()
    assert any(not torch.equal(v, models["finetune"].head.state_dict()[k]) for k, v in head_frozen.items())
    assert metas["frozen"]["backbone"]["norm"] == metas["finetune"]["backbone"]["norm"]


def test_best_checkpoint_is_kept_and_training_is_deterministic(
    jet_dataset: Path, tiny_backbone: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    make_subsets(jet_dataset, ["40"], seed=1, out_dir=tmp_path / "subsets")
    cfg = _cfg("finetune", lr=3e-2, max_steps=40, eval_every=4, patience=3)  # a high LR overfits: early stop
    meta = finetune(jet_dataset, tmp_path / "a", cfg, backbone_dir=tiny_backbone, subsets_dir=tmp_path / "subsets",
                    progress=False)  # fmt: skip
    hist = meta["history"]
    best = min(hist, key=lambda h: h["val_loss"])
    assert meta["train"]["best_step"] == best["step"] and meta["train"]["best_val_loss"] == best["val_loss"]
    # the saved model is the best one, not the last: recompute its loss on the budget's validation part
    model, _, saved = load_model(tmp_path / "a")
    _, val_part = load_split(tmp_path / "subsets", "40", cfg.seed, jet_dataset)
    feats, max_len = saved["backbone"]["features"], saved["backbone"]["max_len"]
    val = load_arrays(jet_dataset, "train", features=feats, max_len=max_len, indices=val_part)
    from physfm.models.backbone import normalize

    with torch.no_grad():
        logits = model(
            torch.from_numpy(normalize(val["x"], val["mask"], saved["backbone"])), torch.from_numpy(val["mask"])
        )
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(val["label"].astype(np.int64)))
    assert float(loss) == pytest.approx(best["val_loss"], abs=1e-5)
    if meta["train"]["stopped_early"]:
        assert meta["train"]["steps"] - meta["train"]["best_step"] == cfg.patience * cfg.eval_every
    again = finetune(jet_dataset, tmp_path / "b", cfg, backbone_dir=tiny_backbone, subsets_dir=tmp_path / "subsets",
                     progress=False)  # fmt: skip
    assert again["history"] == hist
    assert open_artifact(tmp_path / "b", "finetuned").version == open_artifact(tmp_path / "a", "finetuned").version


def test_layerwise_learning_rates(tiny_backbone: Path) -> None:
    from physfm.finetune.model import Head, HeadConfig, TaskModel

    model, _ = load_backbone(tiny_backbone)
    clf = TaskModel(model, Head(model.config, 4, HeadConfig()))
    n_layers = model.config.n_layers

    def lr_of(groups: list[dict], param: torch.Tensor) -> float | None:
        return next((g["lr"] for g in groups if any(p is param for p in g["params"])), None)

    groups = param_groups(clf, "finetune", lr=1.0, backbone_lr_scale=0.1, layer_decay=0.5, weight_decay=0.01)
    assert lr_of(groups, clf.head.out[0].weight) == 1.0
    assert lr_of(groups, model.ln_f.weight) == pytest.approx(0.1)
    assert lr_of(groups, model.blocks[n_layers - 1].attn.qkv.weight) == pytest.approx(0.05)
    assert lr_of(groups, model.feature_embed[0].weight) == pytest.approx(0.1 * 0.5 ** (n_layers + 1))
    frozen = param_groups(clf, "frozen", lr=1.0, backbone_lr_scale=0.1, layer_decay=0.5, weight_decay=0.01)
    assert lr_of(frozen, model.ln_f.weight) is None and lr_of(frozen, clf.head.out[0].weight) == 1.0
    scratch = param_groups(clf, "scratch", lr=1.0, backbone_lr_scale=0.1, layer_decay=0.5, weight_decay=0.01)
    assert lr_of(scratch, model.feature_embed[0].weight) == 1.0


def test_scratch_without_backbone_and_clear_errors(jet_dataset: Path, tmp_path: Path) -> None:
    arch = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 32}
    meta = finetune(jet_dataset, tmp_path / "none", _cfg("scratch", max_steps=4), arch=arch, progress=False)
    assert meta["backbone"]["objective"] == "none" and meta["backbone"]["config"]["d_model"] == 16
    with pytest.raises(ValueError, match="needs a pretrained backbone"):
        finetune(jet_dataset, tmp_path / "x", _cfg("frozen"), progress=False)
    with pytest.raises(ValueError, match="mode"):
        FinetuneConfig(mode="linear-probe")


# --------------------------------------------------------------------------- the tiny study
@pytest.mark.slow
def test_tiny_study_end_to_end_with_nested_mlflow_runs(
    jet_dataset: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    from physfm.cli import main

    root = run_tiny_study(tmp_path_factory.mktemp("tiny_study"), jet_dataset)
    report = json.loads((root / "report" / "report.json").read_text())
    page = (root / "report" / "report.html").read_text()
    assert "Label-efficiency factor" in page and "k-NN accuracy" in page
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    assert f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs" in page  # the runs view, linked
    data_version = load_manifest(jet_dataset)["data_version"]
    parent_id = json.loads((root / "study_run.json").read_text())["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "study tiny"
    assert any(m.startswith("label_efficiency_finetune_n") for m in parent.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {"report/report.html", "report/report.json", "report/figures"} <= artifacts
    runs = client.search_runs([exp.experiment_id], "tags.`physfm.stage` = 'finetune'")
    assert len(runs) == len(LABELS) * len(MODES) * len(SEEDS)
    by_name = {r.info.run_name: r for r in runs}
    for labels in LABELS:
        digests = set()
        for mode in MODES:
            run = by_name[f"finetune n={labels} mode={mode} seed=1"]
            assert run.data.tags["mlflow.parentRunId"] == parent_id and run.info.status == "FINISHED"
            assert run.data.tags["data_version.in"] == data_version
            assert run.data.params["n_labels"] == labels and run.data.tags["mode"] == mode
            digests.add(run.data.tags["subset.digest"])
            for m in ("test_auc", "test_accuracy", "test_auc_Tbqq_vs_QCD", "test_rej50_Tbqq_vs_QCD", "best_val_loss"):
                assert m in run.data.metrics, m
        assert len(digests) == 1, "modes must share the label subset"
    # the report's numbers are the ones in MLflow
    for r in report["runs"]:
        assert client.get_run(r["run_id"]).data.metrics["test_auc"] == pytest.approx(r["metrics"]["auc"])
    # search: the query event comes back first, at distance 0
    capsys.readouterr()
    assert main(["search", "--index", str(root / "embed/pretrained/test"), "--row", "3", "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # a line with the latency, the table's header, then one row per neighbour
    assert len(lines) == 6 and lines[0].startswith("4 neighbours among")
    assert lines[2].split()[:2] == ["0", "3"] and float(lines[2].split()[-1]) < 1e-3
    knn = json.loads((root / "embed/pretrained/knn.json").read_text())
    assert 0 <= knn["accuracy"] <= 1 and knn["n_reference"] > knn["n_queries"] > 0
