"""Issue 19 lever 4, fine-tuning recipes: the probe warm start (``finetune.probe_steps``, LP-FT) and the untrained
model as a checkpoint candidate (``finetune.initial_candidate``), and how they reach a grid cell's config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_study import save_tiny_backbone

from physfm.finetune.grid import cell_settings
from physfm.finetune.model import load_model
from physfm.finetune.train import FinetuneConfig, finetune

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_probe_warm_start_trains_the_head_alone_then_fine_tunes_from_it(jet_dataset: Path, tmp_path: Path) -> None:
    backbone = save_tiny_backbone(jet_dataset, tmp_path / "bb")
    base = dict(mode="finetune", labels="40", seed=2, max_steps=2, eval_every=1, patience=20, batch_size=8,
                lr=3e-3, warmup_steps=0, initial_candidate=True)  # fmt: skip
    meta = finetune(jet_dataset, tmp_path / "lpft", FinetuneConfig(**base, probe_steps=6), backbone_dir=backbone,
                    progress=False)  # fmt: skip
    probe = meta["train"]["probe"]
    assert probe["steps"] == 6 and [h["step"] for h in meta["train"]["probe_history"]] == [1, 2, 3, 4, 5, 6]
    # the fine-tuning starts from the probe's best head: its step-0 validation loss is the probe's best
    assert meta["history"][0]["step"] == 0
    assert meta["history"][0]["val_loss"] == pytest.approx(probe["best_val_loss"], rel=1e-5)
    # the probe moved the head only: with the main stage at lr 0, the backbone ends as it was pretrained
    frozen_main = finetune(jet_dataset, tmp_path / "lp0", FinetuneConfig(**{**base, "lr": 0.0}, probe_steps=6),
                           backbone_dir=backbone, progress=False)  # fmt: skip
    assert frozen_main["train"]["probe"]["steps"] == 6
    model, _, _ = load_model(tmp_path / "lp0")
    fresh, _, _ = load_model(tmp_path / "lpft")
    from physfm.pretrain.checkpoints import load_backbone

    pretrained, _ = load_backbone(backbone)
    for (name, a), (_, b) in zip(model.backbone.state_dict().items(), pretrained.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(fresh.backbone.state_dict().values(),
                                                       pretrained.state_dict().values(), strict=True))  # fmt: skip
    # scratch and frozen ignore it
    other = finetune(jet_dataset, tmp_path / "frz", FinetuneConfig(**{**base, "mode": "frozen"}, probe_steps=6),
                     backbone_dir=backbone, progress=False)  # fmt: skip
    assert "probe" not in other["train"]
    with pytest.raises(ValueError, match="probe_steps must be >= 0"):
        FinetuneConfig(probe_steps=-1)


def test_recipe_keys_reach_only_the_cells_they_change() -> None:
    """Off (their defaults), the new keys leave every cell's config as before they existed (no rerun of an
    existing study); the probe warm start reaches finetune cells only."""
    section = {"lr": 1e-3, "head": {"hidden": 8}, "initial_candidate": False, "probe_steps": 0, "seeds": [1]}
    for mode in ("scratch", "finetune", "frozen", "linear"):
        assert set(cell_settings(section, mode, {})) == {"lr", "head", "global_aux_weight"}
    on = {**section, "initial_candidate": True, "probe_steps": 100}
    assert cell_settings(on, "finetune", {})["probe_steps"] == 100
    assert "probe_steps" not in cell_settings(on, "scratch", {}) and "probe_steps" not in cell_settings(
        on, "frozen", {}
    )
    assert all(cell_settings(on, m, {})["initial_candidate"] is True for m in ("scratch", "finetune", "frozen"))


def test_weight_averaging_is_one_more_candidate_chosen_on_the_budget_validation(
    jet_dataset: Path, tmp_path: Path
) -> None:
    from physfm.finetune.loop import average_states

    a, b = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(2)}, {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(7)}
    avg = average_states([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and int(avg["n"]) == 7  # integers: the last state's

    backbone = save_tiny_backbone(jet_dataset, tmp_path / "bb")
    for mode in ("finetune", "frozen", "scratch"):
        cfg = FinetuneConfig(mode=mode, labels="40", seed=2, max_steps=6, eval_every=1, patience=20, batch_size=8,
                             lr=3e-3, average_last=3)  # fmt: skip
        meta = finetune(jet_dataset, tmp_path / mode, cfg, backbone_dir=None if mode == "scratch" else backbone,
                        arch={"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 48}, progress=False)  # fmt: skip
        hist = meta["history"]
        assert [h["step"] for h in hist] == [1, 2, 3, 4, 5, 6, 6] and hist[-1]["averaged"] == 3
        # the kept model is the candidate with the lowest in-budget validation loss, the average included
        assert meta["train"]["best_val_loss"] == pytest.approx(min(h["val_loss"] for h in hist))
        chosen = min(hist, key=lambda h: h["val_loss"])
        assert (meta["train"].get("best_averaged") == 3) == ("averaged" in chosen)
    with pytest.raises(ValueError, match="average_last must be >= 0"):
        FinetuneConfig(average_last=-1)


def test_the_report_draws_histories_with_a_step_0_and_an_averaged_record(tmp_path: Path) -> None:
    from test_report_factors import _record

    from physfm.evaluate.report import build_report

    runs = []
    for mode in ("scratch", "finetune"):
        for seed in (1, 2):
            r = _record(mode, 100, seed, 0.5 if mode == "finetune" else 0.0)
            r["history"] = [
                {"step": 0, "val_loss": 1.4},
                {"step": 25, "train_loss": 1.2, "val_loss": 1.1},
                {"step": 50, "train_loss": 0.9, "val_loss": 1.0},
                {"step": 50, "averaged": 2, "val_loss": 0.95},
            ]
            runs.append(r)
    data = build_report(tmp_path / "report.html", runs, n_bootstrap=5)
    assert (tmp_path / "figures" / "finetune_curves.png").stat().st_size > 0 and data["figures"]["finetune-curves"]
