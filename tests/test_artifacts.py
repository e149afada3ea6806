"""One artefact format (issue 12): every kind a study writes is checked by `physfm verify` and by its loader.

Each kind is built small and real (shards, a k-means tokenizer, two steps of pretraining, label
subsets, a frozen classifier and a scratch direction model, embeddings, a report), then copied and
broken: one flipped byte in each kind, plus a missing file, an unlisted file and an edited manifest.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from physfm.artifacts import open_artifact, write_artifact
from physfm.cli import main
from physfm.data.shards import DataError, load_manifest

PROMETHEUS = Path(__file__).parent / "data" / "graphnet" / "examples" / "parquet" / "prometheus" / "merged"
TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _build(jet_dataset: Path, root: Path) -> dict[str, Path]:
    """kind -> a directory of that kind under ``root``, written by the library call its stage makes."""
    from physfm.data.convert import convert
    from physfm.evaluate.evaluate import embed_split, evaluate_model, load_embedder
    from physfm.evaluate.report import build_report
    from physfm.evaluate.search import write_embeddings
    from physfm.finetune.subsets import make_subsets
    from physfm.finetune.train import FinetuneConfig, finetune
    from physfm.pretrain.train import PretrainConfig, pretrain
    from physfm.tokenizers import make_tokenizer

    out = {"dataset": jet_dataset, "tokenizer": root / "tokenizer", "backbone": root / "backbone"}
    make_tokenizer(jet_dataset, out["tokenizer"], "kmeans", 8, progress=False, eval_events=100)
    cfg = {"model": TINY, "max_len": 32, "batch_size": 16, "steps": 2, "warmup_steps": 1, "norm_events": 100}
    tok, bb = out["tokenizer"], out["backbone"]
    pretrain(PretrainConfig.from_dict(cfg), jet_dataset, tok, bb, progress=False, device="cpu")
    out["subsets"] = root / "subsets"
    make_subsets(jet_dataset, ["40"], seed=1, out_dir=out["subsets"])
    out["finetuned"] = root / "classifier"
    ft = FinetuneConfig(mode="frozen", labels="40", max_steps=2, eval_every=1, device="cpu")
    finetune(jet_dataset, out["finetuned"], ft, backbone_dir=bb, subsets_dir=out["subsets"], progress=False)
    icecube = root / "icecube"
    convert("prometheus", PROMETHEUS, icecube, shard_events=20, progress=False)
    out["direction"] = root / "direction"
    ft = FinetuneConfig(mode="scratch", labels="12", max_steps=2, eval_every=1, batch_size=8, device="cpu")
    finetune(icecube, out["direction"], ft, arch={**TINY, "max_len": 32}, progress=False)  # task auto: direction
    model, bmeta = load_embedder(out["backbone"])
    emb, labels, keys, meta = embed_split(model, bmeta, jet_dataset, "val", device="cpu")
    out["embeddings"] = root / "embed" / "val"
    write_embeddings(out["embeddings"], emb, labels, keys, meta, kind="flat")
    result = {**evaluate_model(out["finetuned"], jet_dataset, "test", n_bootstrap=5), "backbone": "mpm"}
    out["report"] = root / "report"
    build_report(out["report"] / "report.html", [result], pretrain={"mpm": out["backbone"]}, n_bootstrap=10)
    return out


@pytest.fixture(scope="module")
def built(jet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests that rebuild: the same summation order, the same weights
    yield _build(jet_dataset, tmp_path_factory.mktemp("kinds"))
    torch.set_num_threads(n)


def _loaders() -> dict[str, Callable[[Path], Any]]:
    """kind -> what a downstream stage opens it with."""
    from physfm.evaluate.search import open_index
    from physfm.finetune.model import load_model
    from physfm.finetune.subsets import load_subset
    from physfm.pretrain.checkpoints import load_backbone
    from physfm.tokenizers import load_tokenizer

    return {
        "dataset": lambda d: load_manifest(d, verify=True),
        "tokenizer": load_tokenizer,
        "backbone": load_backbone,
        "subsets": lambda d: load_subset(d, "40"),
        "finetuned": load_model,
        "direction": load_model,
        "embeddings": open_index,
        "report": lambda d: open_artifact(d, "report"),
    }


#: kind -> the file whose byte is flipped (a backbone's nested tokenizer is checked through it).
TARGETS = {
    "dataset": "train/shard_00000.h5",
    "tokenizer": "weights.safetensors",
    "backbone": "tokenizer/weights.safetensors",
    "subsets": "seed1/n40.train.npy",
    "finetuned": "classifier.safetensors",
    "direction": "direction.safetensors",
    "embeddings": "index.faiss",
    "report": "report.json",
}


def _verify(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["verify", str(path)])
    return rc, capsys.readouterr().out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_every_kind_verifies_and_loads(built: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    loaders = _loaders()
    for name, path in built.items():
        rc, out = _verify(path, capsys)
        kind = "finetuned" if name == "direction" else name
        assert rc == 0 and f"{kind} OK" in out, out
        loaders[name](path)
        if kind != "dataset":
            manifest = json.loads((path / "manifest.json").read_text())
            assert manifest["kind"] == kind and len(manifest["version"]) == 16
            assert manifest["inputs"]["data_version"] and manifest["physfm_version"]
            listed = TARGETS[name].replace("tokenizer/weights.safetensors", "tokenizer/manifest.json")  # nested
            assert listed in manifest["files"]
    backbone = open_artifact(built["backbone"], "backbone")
    tokenizer = open_artifact(built["tokenizer"], "tokenizer")
    assert backbone.inputs["tokenizer_version"] == tokenizer.version
    classifier = open_artifact(built["finetuned"], "finetuned")
    assert classifier.inputs["backbone_version"] == backbone.version
    assert open_artifact(built["embeddings"], "embeddings").inputs["backbone_version"] == backbone.version
    report = open_artifact(built["report"], "report")
    assert report.inputs["data_version"] == classifier.inputs["data_version"]
    assert report.inputs["backbone_version"] == backbone.version


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_one_flipped_byte_is_refused_by_verify_and_the_loader(
    name: str, built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _copy(built[name], tmp_path / name)
    target = bad / TARGETS[name]
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))
    rc, out = _verify(bad, capsys)
    assert rc == 1 and f"{TARGETS[name]}: sha256" in out, out
    with pytest.raises(DataError, match=rf"{TARGETS[name]}: sha256(.|\n)*physfm verify"):
        _loaders()[name](bad)


def test_missing_unlisted_and_edited_are_refused_naming_the_file_and_the_stage(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from physfm.finetune.model import load_model

    missing = _copy(built["finetuned"], tmp_path / "missing")
    (missing / "classifier.json").unlink()
    rc, out = _verify(missing, capsys)
    assert rc == 1 and "finetuned" in out and "classifier.json: missing" in out
    with pytest.raises(DataError, match=r"classifier.json: missing(.|\n)*rerun `physfm finetune`"):
        load_model(missing)

    extra = _copy(built["backbone"], tmp_path / "extra")
    (extra / "notes.txt").write_text("added by hand")
    (extra / "tokenizer" / "plots" / "mine.png").write_bytes(b"png")
    (extra / "checkpoints").mkdir(exist_ok=True)
    (extra / "checkpoints" / "last.json").write_text("{}")  # excluded: checkpoints are not part of a backbone
    (extra / ".snakemake_timestamp").touch()  # what Snakemake adds to every directory output
    rc, out = _verify(extra, capsys)
    assert rc == 1 and "notes.txt: not listed" in out and "tokenizer/plots/mine.png: not listed" in out, out
    assert "checkpoints" not in out and "snakemake" not in out

    edited = _copy(built["subsets"], tmp_path / "edited")
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["inputs"]["data_version"] = "0" * 16
    (edited / "manifest.json").write_text(json.dumps(manifest))
    rc, out = _verify(edited, capsys)
    assert rc == 1 and "version does not match" in out

    with pytest.raises(DataError, match="does not describe a backbone .*a tokenizer.*physfm pretrain"):
        open_artifact(built["tokenizer"], "backbone")
    with pytest.raises(ValueError, match="holds the manifest of a dataset"):
        write_artifact(_copy(built["dataset"], tmp_path / "data"), "report", [], {})


def test_same_inputs_and_settings_give_the_same_versions(
    built: dict[str, Path], jet_dataset: Path, tmp_path: Path
) -> None:
    """Every kind built a second time, in another directory and at another time: the same versions
    (what differs is only in records: timings, MLflow run ids, the report's date)."""
    again = _build(jet_dataset, tmp_path)
    for name, path in built.items():
        if name != "dataset":
            kind = "finetuned" if name == "direction" else name
            assert open_artifact(again[name], kind).version == open_artifact(path, kind).version, name


def test_versions_follow_content_not_time(tmp_path: Path) -> None:
    """A record (timings) does not enter the version; inputs and content do."""
    d = tmp_path / "a"
    d.mkdir()
    np.save(d / "x.npy", np.arange(3))
    (d / "log.json").write_text('{"seconds": 1.0}')
    first = write_artifact(d, "embeddings", None, {"data_version": "v1"}, records=["log.json"])
    (d / "log.json").write_text('{"seconds": 2.0}')
    assert write_artifact(d, "embeddings", None, {"data_version": "v1"}, records=["log.json"]).version == first.version
    assert write_artifact(d, "embeddings", None, {"data_version": "v2"}, records=["log.json"]).version != first.version
    np.save(d / "x.npy", np.arange(4))
    assert write_artifact(d, "embeddings", None, {"data_version": "v1"}, records=["log.json"]).version != first.version
