"""Issue 18: the in-budget hyperparameter search, the ablation modes and their wiring in the DAG."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from read_spy import ReadSpy

from physfm.finetune.search import apply, candidates, mlflow_params, search
from physfm.finetune.subsets import load_split, make_subsets
from physfm.finetune.train import FinetuneConfig, finetune
from physfm.finetune.variants import resolve

ARCH = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16}


def test_candidates_expand_the_grid_and_refuse_bad_keys() -> None:
    grid = {"lr": [1e-3, 1e-2], "head.dropout": [0.0, 0.3], "max_steps": [4]}
    cands = candidates(grid)
    assert len(cands) == 4 and {c["lr"] for c in cands} == {1e-3, 1e-2} and all(c["max_steps"] == 4 for c in cands)
    assert candidates({}) == [{}]
    declared = [{"lr": 1e-3, "max_steps": 8}, {"weight_decay": 0.1, "lr": 1e-2}]
    assert candidates(declared) == [{"lr": 1e-3, "max_steps": 8}, {"lr": 1e-2, "weight_decay": 0.1}]
    assert mlflow_params({"grid": declared, "candidates": [{"settings": declared[0]}], "chosen": 0})["search.c1"]
    with pytest.raises(ValueError, match="cannot search over"):
        candidates({"dropuot": [0.1]})
    with pytest.raises(ValueError, match="non-empty list"):
        candidates({"lr": []})
    cfg = apply(FinetuneConfig(), {"lr": "0.01", "head.dropout": 0.3, "max_steps": "7"})  # strings: from a CLI
    assert cfg.lr == 0.01 and cfg.head.dropout == 0.3 and cfg.max_steps == 7 and cfg.head.hidden == 128


def test_search_keeps_the_lowest_in_budget_val_loss_and_reads_only_the_subset(
    jet_dataset: Path, tmp_path: Path, spy_reads: Callable[..., ReadSpy], one_torch_thread: None
) -> None:
    import physfm.finetune.task as ft_task  # the tasks' reads of the subset's events
    import physfm.finetune.train as ft  # scratch's input-norm fit

    subsets = tmp_path / "subsets"
    make_subsets(jet_dataset, ["40"], [3], subsets)
    train_part, val_part = load_split(subsets, "40", 3, jet_dataset)
    spy = spy_reads(ft, ft_task)
    cfg = FinetuneConfig(mode="scratch", labels="40", seed=3, max_steps=6, eval_every=2, batch_size=8, warmup_steps=1)
    grid = {"lr": [1e-6, 3e-3], "weight_decay": [0.0, 0.1]}
    logged: list[dict[str, float]] = []

    class Run:
        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            logged.append(metrics)

    meta = search(finetune, jet_dataset, tmp_path / "m", cfg, grid, run=Run(), subsets_dir=subsets, arch=ARCH,
                  progress=False)  # fmt: skip
    rec = meta["search"]
    losses = [c["val_loss"] for c in rec["candidates"]]
    assert len(losses) == 4 and rec["chosen"] == int(np.argmin(losses))
    assert meta["train"]["best_val_loss"] == min(losses)
    assert meta["config"]["lr"] == rec["candidates"][rec["chosen"]]["settings"]["lr"]
    saved = json.loads((tmp_path / "m" / "classifier.json").read_text())
    assert saved["search"]["chosen"] == rec["chosen"] and not (tmp_path / "m.search").exists()
    assert any("search.c3.best_val_loss" in m for m in logged) and any("val_loss" in m for m in logged)
    params = mlflow_params(rec)
    assert params["search.n_candidates"] == 4 and params["search.grid.lr"] == "1e-06,0.003"
    # every labelled event the search touched is in the budget; the val and test splits were never read
    assert spy.splits() == {"train"}
    assert not spy.outside(train_part, val_part, norm_fit=True)


def test_search_refuses_several_candidates_without_a_validation_part(jet_dataset: Path, tmp_path: Path) -> None:
    from physfm.finetune.subsets import BudgetProtocol

    subsets = tmp_path / "subsets"
    make_subsets(jet_dataset, ["20"], [1], subsets, protocol=BudgetProtocol(name="fixed"))
    cfg = FinetuneConfig(mode="scratch", labels="20", seed=1, max_steps=2, eval_every=1, batch_size=8)
    with pytest.raises(ValueError, match="no validation part"):
        search(finetune, jet_dataset, tmp_path / "m", cfg, {"lr": [1e-3, 1e-2]}, subsets_dir=subsets, arch=ARCH,
               progress=False)  # fmt: skip


def test_variants_resolve_to_their_base_mode() -> None:
    assert resolve("linear", {"head": {"hidden": 8}}) == ("frozen", {"head": {"hidden": 8, "kind": "linear"}})
    assert resolve("scratch_global", {"global_aux_weight": 0.5})[0] == "scratch"
    with pytest.raises(ValueError, match="global_aux_weight > 0"):
        resolve("scratch_global", {"global_aux_weight": 0.0})
    with pytest.raises(ValueError, match="scratch_global ablation"):
        resolve("finetune", {"global_aux_weight": 0.5})


def test_scratch_global_trains_with_the_auxiliary_loss(
    jet_dataset: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    """The auxiliary loss changes the trained weights; the saved classifier is an ordinary one."""
    from physfm.finetune.model import load_model

    subsets = tmp_path / "subsets"
    make_subsets(jet_dataset, ["40"], [1], subsets)
    base = dict(mode="scratch", labels="40", seed=1, max_steps=4, eval_every=2, batch_size=8)
    finetune(jet_dataset, tmp_path / "plain", FinetuneConfig(**base), subsets_dir=subsets, arch=ARCH, progress=False)
    cfg = FinetuneConfig(**base, global_aux_weight=1.0)
    meta = finetune(jet_dataset, tmp_path / "aux", cfg, subsets_dir=subsets, arch=ARCH, progress=False)
    assert meta["config"]["global_aux_weight"] == 1.0
    a, _, _ = load_model(tmp_path / "plain")
    b, _, _ = load_model(tmp_path / "aux")
    assert a.state_dict().keys() == b.state_dict().keys()
    assert any(not torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    with pytest.raises(ValueError, match="scratch"):
        finetune(jet_dataset, tmp_path / "bad", FinetuneConfig(**{**base, "mode": "frozen"}, global_aux_weight=1.0),
                 subsets_dir=subsets, arch=ARCH, progress=False)  # fmt: skip


def test_ablations_and_search_are_wired_into_the_dag(tmp_path: Path) -> None:
    """snakemake -n: the ablation cells are scheduled, the ablation backbone is pretrained, the grid reaches
    every fine-tuning job, and seeds_at thins the seeds of a label count."""
    repo = Path(__file__).resolve().parents[1]
    override = {
        "labels": [20, 80],
        "seeds": [1, 2],
        "seeds_at": {"80": 1},
        "search": {"lr": [0.001, 0.003]},
        "ablation": {"modes": ["scratch_global", "linear"], "backbones": ["nog"]},
    }
    import yaml

    study = yaml.safe_load((repo / "config" / "smoke.yaml").read_text())
    study["pretrain"]["backbones"]["nog"] = {"objective": "mpm", "tokenizer": "kmeans-64", "set": {"global_weight": 0}}
    study["finetune"].update(override)
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump(study))
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "all", "--configfile", str(tmp_path / "abl.yaml")],
        cwd=repo, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = [line.split("physfm finetune", 1)[1] for line in out.stdout.splitlines() if "physfm finetune " in line]

    def cell(job: str) -> tuple[str, str, str]:
        def arg(flag: str) -> str:
            return job.split(flag)[1].split()[0].strip("'")

        return arg("--labels "), arg("--mode "), arg("--backbone-name ")

    modes = [cell(j) for j in jobs]
    # n20: 2 seeds; n80: 1 seed; 3 modes + 2 ablation modes + the ablation backbone's finetune
    assert len(jobs) == 6 * 2 + 6 * 1, modes
    assert ("20", "scratch_global", "mpm") in modes and ("80", "linear", "mpm") in modes
    assert ("20", "finetune", "nog") in modes and ("20", "frozen", "nog") not in modes
    assert all("--search" in j for j in jobs)
    assert all('"global_aux_weight": 0.5' in j for j in jobs if "scratch_global" in j)
    assert all('"global_aux_weight": 0.0' in j for j in jobs if "scratch_global" not in j)
    assert "physfm pretrain" in out.stdout and "--backbone nog" in out.stdout


def test_full_config_repeats_pretraining_and_runs_every_ablation() -> None:
    """config/full.yaml: two pretraining seeds pooled in the report, the global-targets-off backbone, both
    ablation modes and the 12-candidate grid (snakemake -n)."""
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "all", "--configfile", "config/full.yaml"],
        cwd=repo, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for backbone in ("mpm", "mpm_s1", "mpm_noglobal"):
        assert f"--backbone {backbone} " in text  # pretrained
    assert "--mode scratch_global" in text and "--mode linear" in text and "--backbone-name mpm_noglobal" in text
    report = next(line for line in text.splitlines() if "physfm report" in line)
    assert "--ablation-backbone mpm_noglobal" in report and "mpm_pooled" in report and "mean over mpm, mpm_s1" in report
    # the corpus-scaling curve (issue 19): two smaller corpora, fine-tuned only, and the report's curve
    assert "--scaling-backbone mpm --scaling-backbone mpm_c6000 --scaling-backbone mpm_c20000" in report
    assert "--backbone-name mpm_c6000" in text and "--backbone mpm_c20000 " in text


def test_corpus_scaling_overlay_adds_its_backbones_in_finetune_mode_only() -> None:
    """config/levers/corpus_scaling.yaml over the default study: 3 smaller corpora, each fine-tuned at 100 and
    300 labels with 5 seeds and at 1000 with 3 (39 cells), the default grid untouched, the report given the curve's
    backbones."""
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "all", "--configfile", "config/config.yaml"]
    base = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    out = subprocess.run([*cmd, "config/levers/corpus_scaling.yaml"], cwd=repo, capture_output=True, text=True)
    assert base.returncode == 0 and out.returncode == 0, out.stderr[-3000:]

    def finetune_jobs(text: str) -> list[str]:
        return [line.split("physfm finetune", 1)[1] for line in text.splitlines() if "physfm finetune " in line]

    new = [j for j in finetune_jobs(out.stdout) if j not in finetune_jobs(base.stdout)]
    assert len(new) == 39 and all("--mode finetune" in j for j in new)
    for name in ("mpm_c1000", "mpm_c3000", "mpm_c7000"):
        assert sum(f"--backbone-name {name}" in j for j in new) == 13
        assert f"--backbone {name} " in out.stdout and '"corpus_events": ' in out.stdout
    assert len(finetune_jobs(out.stdout)) == len(finetune_jobs(base.stdout)) + 39
    report = next(line for line in out.stdout.splitlines() if "physfm report" in line)
    assert "--scaling-backbone mpm --scaling-backbone mpm_c1000" in report
    assert "--scaling-backbone" not in next(line for line in base.stdout.splitlines() if "physfm report" in line)
