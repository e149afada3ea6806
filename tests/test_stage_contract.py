"""The stage contract (issue 12): each stage's settings dataclass is the one home of its defaults,
and equals the defaults of its section in workflow/schemas/config.schema.yaml."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from physfm.evaluate.evaluate import EmbedConfig, EvaluateConfig
from physfm.evaluate.report import ReportConfig
from physfm.evaluate.sample import SampleConfig
from physfm.finetune.train import CELL_KEYS, FinetuneConfig, settings_slice
from physfm.stage import build, to_dict
from physfm.tokenizers.fit import TokenizerFitConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def schema_defaults() -> dict[str, Any]:
    from snakemake.utils import validate

    config: dict[str, Any] = {}
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    return config


def test_finetune_defaults_equal_the_schema(schema_defaults: dict[str, Any]) -> None:
    ours = {k: v for k, v in to_dict(FinetuneConfig()).items() if k not in CELL_KEYS}
    assert ours == settings_slice(schema_defaults["finetune"])


def test_subsets_defaults_equal_the_schema(schema_defaults: dict[str, Any]) -> None:
    from physfm.finetune.subsets import SubsetsConfig

    ft, cfg = schema_defaults["finetune"], to_dict(SubsetsConfig())
    assert cfg["labels"] == ft["labels"] and cfg["seeds"] == ft["seeds"]
    assert cfg["budget"] == ft["budget"]


def test_evaluate_embed_report_sample_defaults_equal_the_schema(schema_defaults: dict[str, Any]) -> None:
    ev = schema_defaults["evaluate"]
    assert to_dict(EvaluateConfig()) == {k: ev[k] for k in ("split", "bootstrap", "pairs", "effs")}
    assert to_dict(EmbedConfig()) == {k: v for k, v in ev["knn"].items() if k != "enabled"}
    assert to_dict(ReportConfig()) == {"metric": ev["metric"], **ev["report"]}
    assert to_dict(SampleConfig()) == schema_defaults["pretrain"]["sample"]


def test_tokenizer_fit_defaults_equal_the_schema(schema_defaults: dict[str, Any]) -> None:
    tok = schema_defaults["tokenizer"]
    fields = {f.name for f in dataclasses.fields(TokenizerFitConfig)} - {"options"}
    assert {k: v for k, v in to_dict(TokenizerFitConfig()).items() if k in fields} == {k: tok[k] for k in fields}


def test_build_refuses_unknown_keys_and_builds_nested_settings() -> None:
    cfg = build(FinetuneConfig, {"lr": 0.01, "head": {"hidden": 8}})
    assert cfg.lr == 0.01 and cfg.head.hidden == 8 and cfg.head.pool == "cls"
    with pytest.raises(ValueError, match="unknown setting.*lrr"):
        build(FinetuneConfig, {"lrr": 0.01})
    with pytest.raises(ValueError, match="unknown setting.*head.width"):
        build(FinetuneConfig, {"head": {"width": 8}})


def test_the_workflow_passes_every_stage_its_settings_as_one_json(schema_defaults: dict[str, Any]) -> None:
    """No stage rule passes settings as separate flags (paths, threads and grid wildcards excepted)."""
    rules = {p.stem: p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk")}
    for flag in ("--lr ", "--patience", "--pool", "--bootstrap", "--pairs", "--metric", "--option", "--eval-split"):
        for name, text in rules.items():
            assert flag not in text, f"{name}.smk still passes {flag.strip()}: pass it inside --config"
    for name in ("finetune", "pretrain", "tokenizer"):
        assert "--config {params.config:q}" in rules[name]


def test_data_stage_defaults_equal_the_schema(schema_defaults: dict[str, Any]) -> None:
    from physfm.data.convert import ConvertConfig
    from physfm.data.generate_icecube import IceCubeGenConfig
    from physfm.data.generate_jets import JetGenConfig
    from physfm.data.generate_lartpc import LArTPCGenConfig
    from physfm.data.summary import SummaryConfig

    data = schema_defaults["data"]
    assert to_dict(ConvertConfig()) == data["convert"]
    assert to_dict(SummaryConfig()) == data["summary"]
    jets, icecube, lartpc = to_dict(JetGenConfig()), to_dict(IceCubeGenConfig()), to_dict(LArTPCGenConfig())
    assert {**jets, **icecube, **lartpc} == data["generate"], "data.generate holds the keys of every generator"
    assert jets["seed"] == icecube["seed"] == lartpc["seed"]
    assert icecube["n_events"] == lartpc["n_events"]


def test_a_stage_reads_its_datasets_manifest_once(jet_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """finetune() opens the dataset once: manifest.json is read and parsed once, not by every helper."""
    import pathlib

    from physfm.finetune.train import finetune

    manifest, reads = jet_dataset / "manifest.json", []
    original = pathlib.Path.read_text

    def counting(self: pathlib.Path, *args: Any, **kwargs: Any) -> str:
        if self.resolve() == manifest.resolve():
            reads.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", counting)
    cfg = build(FinetuneConfig, {"mode": "scratch", "labels": "40", "max_steps": 2, "eval_every": 1, "batch_size": 8})
    arch = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16}
    finetune(jet_dataset, tmp_path / "model", cfg, arch=arch, progress=False)
    assert len(reads) == 1, f"manifest.json of the dataset read {len(reads)} times"


def test_pretrain_model_and_new_objective_defaults_equal_the_schema(schema_defaults: dict[str, Any]) -> None:
    """pretrain.model (with PET's local block) and the flow / mpm2 options: one set of defaults."""
    from physfm.models import OBJECTIVES, BackboneConfig
    from physfm.pretrain.config import DEFAULT_MODEL

    model = schema_defaults["pretrain"]["model"]
    assert model == DEFAULT_MODEL
    backbone = to_dict(BackboneConfig())
    assert {k: model[k] for k in ("local", "local_k", "local_coords")} == {
        k: backbone[k] for k in ("local", "local_k", "local_coords")
    }
    for name in ("flow", "mpm2"):
        assert OBJECTIVES[name].Options().to_dict() == schema_defaults["pretrain"]["objectives"][name]


def test_lartpc_defaults_equal_the_schema(schema_defaults: dict[str, Any]) -> None:
    from physfm.finetune.patch_segmentation import SegmentationConfig
    from physfm.models.polarmae_objective import PolarMAEOptions

    assert to_dict(SegmentationConfig()) == schema_defaults["segmentation"]
    assert PolarMAEOptions().to_dict() == schema_defaults["pretrain"]["objectives"]["polarmae"]
