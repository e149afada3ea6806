"""Backbones from elsewhere (another study's directory, the MLflow model registry) fine-tuned on a
kinematics-only JetClass-schema set with other labels; missing inputs; feature dropout (issue 13)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from tiny_study import save_tiny_backbone, tracking_env

from physfm.artifacts import ArtifactError
from physfm.data.convert import convert
from physfm.data.jetclass import JET_BRANCHES, OPTIONAL_GROUPS, PARTICLE_BRANCHES, TREE_NAME
from physfm.data.shards import DataError, load_manifest
from physfm.finetune.backbone_source import MissingInputsError, parse_registry_uri, resolve
from physfm.finetune.backbone_source import load as load_backbone_source
from physfm.finetune.train import FinetuneConfig, finetune
from physfm.pretrain.train import PretrainConfig, pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRETRAIN = {
    "objective": "regression",
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2},
    "max_len": 32,
    "batch_size": 32,
    "steps": 4,
    "warmup_steps": 1,
    "val_every": 4,
    "log_every": 2,
    "checkpoint_every": 100,
    "norm_events": 500,
    "global_targets": ["log_mass"],
}
FINETUNE = {"labels": "24", "max_steps": 6, "eval_every": 3, "patience": 5, "batch_size": 8, "head": {"hidden": 8}}
OPTIONAL = [b for group in OPTIONAL_GROUPS.values() for b in group]


def _kinematics_only(src: Path, out: Path, zeros: bool) -> Path:
    """A JetClass-schema file of top vs QCD jets (labels label_top, label_qcd) with four-momenta only:
    the charge/PID/IP branches absent (``zeros`` False) or present and all zero."""
    tree = uproot.open(src)[TREE_NAME]
    arrays = tree.arrays(list(PARTICLE_BRANCHES) + list(JET_BRANCHES) + ["label_Tbqq", "label_QCD"])
    keep = (arrays["label_Tbqq"] != 0) | (arrays["label_QCD"] != 0)
    arrays = arrays[keep]
    branches = {b: arrays[b] for b in PARTICLE_BRANCHES if b not in OPTIONAL}
    if zeros:
        branches.update({b: arrays[b] * 0 for b in OPTIONAL})
    branches.update({b: np.asarray(arrays[b]) for b in JET_BRANCHES})
    branches["label_top"] = np.asarray(arrays["label_Tbqq"])
    branches["label_qcd"] = np.asarray(arrays["label_QCD"])
    with uproot.recreate(out) as f:
        f[TREE_NAME] = {k: (v if isinstance(v, np.ndarray) else ak.Array(v)) for k, v in branches.items()}
    return out


@pytest.fixture(scope="module")
def kin_dataset(jet_files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kinematics-only top/QCD set: one file without the optional branches, one with them all zero."""
    raw = tmp_path_factory.mktemp("kin_raw")
    files = [_kinematics_only(jet_files[0], raw / "absent.root", False)]
    files.append(_kinematics_only(jet_files[1], raw / "zero.root", True))
    out = tmp_path_factory.mktemp("kin") / "data"
    convert(
        "jetclass", files, out, shard_events=100, reader_options={"labels": ["label_top", "label_qcd"]}, progress=False
    )
    return out


@pytest.fixture(scope="module")
def study_a(jet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another study's backbone directory: really pretrained (a few steps) with feature dropout."""
    out = tmp_path_factory.mktemp("study_a") / "pretrain" / "reg"
    pretrain(PretrainConfig.from_dict({**PRETRAIN, "feature_dropout": 0.5}), jet_dataset, None, out, progress=False)
    return out


def test_kinematics_only_files_convert_and_their_manifest_names_the_missing_inputs(
    kin_dataset: Path, jet_dataset: Path, jet_files: list[Path], tmp_path: Path
) -> None:
    m = load_manifest(kin_dataset, verify=True)
    assert m["classes"] == ["top", "qcd"] and m["n_filtered_by_label"] == 0
    assert m["missing_inputs"]["groups"] == ["charge", "impact_parameters", "pid"]
    assert m["missing_inputs"]["absent_in_files"]["part_charge"] == ["absent.root"]  # zero.root has it (zeros)
    generated = load_manifest(jet_dataset)["missing_inputs"]  # Pythia jets: no detector, no impact parameters
    assert generated["groups"] == ["impact_parameters"] and generated["absent_in_files"] == {}
    # only the optional branches may be absent
    tree = uproot.open(jet_files[0])[TREE_NAME]
    arrays = tree.arrays([b for b in list(PARTICLE_BRANCHES) + list(JET_BRANCHES) if b != "part_deta"])
    with uproot.recreate(tmp_path / "bad.root") as f:
        f[TREE_NAME] = {k: arrays[k] for k in arrays.fields} | {"label_QCD": np.ones(len(arrays))}
    with pytest.raises(DataError, match="missing branches: part_deta"):
        convert("jetclass", [tmp_path / "bad.root"], tmp_path / "o", reader_options={"labels": ["label_QCD"]})


def test_feature_dropout_fires_in_training_only(jet_dataset: Path, study_a: Path) -> None:
    from physfm.models.objectives import OBJECTIVES
    from physfm.pretrain.checkpoints import load_backbone
    from physfm.pretrain.data import PretrainShards, fit_stats

    _, meta = load_backbone(study_a)
    assert meta["feature_dropout"]["p"] == 0.5 and meta["pretrain"]["feature_dropout"] == 0.5
    assert meta["feature_dropout"]["groups"] == ["charge", "pid"]  # the default features carry no impact parameters
    features = meta["features"]
    dropped_cols = [features.index(f) for f in meta["feature_dropout"]["features"]]
    objective = OBJECTIVES["regression"](16, {}, n_features=len(features), features=features)
    stats = fit_stats(
        jet_dataset, features=features, raw_features=features, global_names=[], tokenizer=None, max_len=32,
        n_events=500, seed=0,
    )  # fmt: skip

    def batches(split: str, p: float) -> list[dict]:
        ds = PretrainShards(
            jet_dataset, split, stats=stats, raw_features=features, objective=objective, tokenizer=None,
            max_len=32, batch_size=64, seed=0, shuffle=False, feature_dropout=p,
        )  # fmt: skip
        return list(ds)

    fill = -np.asarray(stats["norm"]["mean"])[dropped_cols] / np.asarray(stats["norm"]["std"])[dropped_cols]
    n_dropped = n_events = 0
    for plain, drop in zip(batches("train", 0.0), batches("train", 0.5), strict=True):
        x0, x1, mask = plain["x"].numpy(), drop["x"].numpy(), plain["mask"].numpy()
        keep = [j for j in range(len(features)) if j not in dropped_cols]
        assert np.array_equal(x0[..., keep], x1[..., keep])  # kinematics untouched
        changed = (x0 != x1).any(axis=(1, 2))
        for i in np.flatnonzero(changed):  # a dropped jet: the block is the normalised raw zero on every particle
            np.testing.assert_allclose(
                x1[i][mask[i]][:, dropped_cols], np.broadcast_to(fill, (mask[i].sum(), len(fill))), rtol=1e-5
            )
        assert not x1[~mask].any()  # padding stays zero
        n_dropped, n_events = n_dropped + int(changed.sum()), n_events + len(changed)
    assert 0.3 < n_dropped / n_events < 0.7, (n_dropped, n_events)
    for plain, drop in zip(batches("val", 0.0), batches("val", 1.0), strict=True):  # never on validation
        assert np.array_equal(plain["x"].numpy(), drop["x"].numpy())
    with pytest.raises(ValueError, match="probability"):
        PretrainConfig.from_dict({"feature_dropout": 1.5})


def test_finetune_another_studys_backbone_on_a_kinematics_only_set(
    kin_dataset: Path, study_a: Path, jet_dataset: Path, tmp_path: Path
) -> None:
    from physfm.evaluate.evaluate import evaluate_model

    cfg = FinetuneConfig(mode="finetune", **FINETUNE)
    meta = finetune(kin_dataset, tmp_path / "ft", cfg, backbone_dir=study_a, progress=False)
    fill = meta["backbone"]["input_fill"]
    assert fill["reason"] == "feature_dropout" and fill["data_lacks"] == ["charge", "impact_parameters", "pid"]
    assert fill["features"] == [
        "charge",
        "is_charged_hadron",
        "is_neutral_hadron",
        "is_photon",
        "is_electron",
        "is_muon",
    ]
    assert meta["backbone"]["source"] == {"spec": str(study_a), "kind": "directory", "path": str(study_a)}
    assert meta["classes"] == ["top", "qcd"]
    # the backbone's own normalisation is applied, not one refitted on the downstream set
    assert meta["backbone"]["norm"] == json.loads((study_a / "backbone.json").read_text())["norm"]
    record = evaluate_model(tmp_path / "ft", kin_dataset, "test", pairs=[("top", "qcd")], n_bootstrap=0)
    assert record["input_fill"] == fill and record["backbone_source"]["kind"] == "directory"
    assert 0.0 <= record["metrics"]["auc"] <= 1.0 and record["n_per_class"]["top"] > 0
    from physfm.evaluate.report import build_report

    data = build_report(tmp_path / "report.html", [{**record, "backbone": "reg"}], n_bootstrap=10)
    page = (tmp_path / "report.html").read_text()
    assert "Inputs the data set lacks" in page and "pretrained with feature dropout" in page
    assert data["input_fill"] == [
        "1 run(s): the data lacks charge, impact_parameters, pid; charge, is_charged_hadron, is_neutral_hadron, "
        "is_photon, is_electron, is_muon set to zero "
        "(the backbone's convention: it was pretrained with feature dropout)"
    ]

    # a backbone pretrained without feature dropout is refused, unless the user allows it
    plain = save_tiny_backbone(jet_dataset, tmp_path / "plain")
    with pytest.raises(MissingInputsError, match=r"lacks the input group\(s\) charge, pid.*--allow-missing-inputs"):
        finetune(kin_dataset, tmp_path / "x", cfg, backbone_dir=plain, progress=False)
    allowed = FinetuneConfig(mode="finetune", allow_missing_inputs=True, **FINETUNE)
    meta = finetune(kin_dataset, tmp_path / "allowed", allowed, backbone_dir=plain, progress=False)
    assert meta["backbone"]["input_fill"]["reason"] == "allowed_by_user"
    scratch = finetune(
        kin_dataset, tmp_path / "s", FinetuneConfig(mode="scratch", **FINETUNE), backbone_dir=plain, progress=False
    )
    assert scratch["backbone"]["input_fill"]["reason"] == "scratch"
    # the complete training set needs no fill (its impact parameters are not among the backbone's inputs)
    full = finetune(jet_dataset, tmp_path / "full", cfg, backbone_dir=plain, progress=False)
    assert full["backbone"]["input_fill"]["reason"] == "complete" and full["backbone"]["input_fill"]["features"] == []


def test_normalize_applies_the_fill() -> None:
    from physfm.models.backbone import normalize

    meta = {"features": ["a", "b"], "norm": {"mean": [1.0, 2.0], "std": [1.0, 4.0]}, "input_fill": {"features": ["b"]}}
    x, mask = np.full((1, 2, 2), 6.0, np.float32), np.array([[True, False]])
    out = normalize(x, mask, meta)
    assert out[0, 0].tolist() == [5.0, -0.5] and not out[0, 1].any() and x[0, 0, 1] == 6.0  # input untouched


@pytest.mark.slow
def test_finetune_a_registered_backbone_from_a_models_uri(
    kin_dataset: Path, jet_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    from physfm.cli import main

    results = tmp_path / "results"
    config = json.dumps({**PRETRAIN, "feature_dropout": 0.5})
    with tracking_env(results, "other"):
        assert main(["pretrain", "--data", str(jet_dataset), "--out", str(tmp_path / "bb"), "--config", config,
                     "--no-progress", "--threads", "1"]) == 0  # fmt: skip
        settings = json.dumps({k: v for k, v in FINETUNE.items() if k != "labels"})
        ft = ["finetune", "--data", str(kin_dataset), "--mode", "finetune", "--labels", "24", "--no-progress",
              "--config", settings, "--threads", "1"]  # fmt: skip
        assert main([*ft, "--backbone", "models:/other.regression/1", "--out", str(tmp_path / "m")]) == 0
        meta = json.loads((tmp_path / "m" / "classifier.json").read_text())
        source = meta["backbone"]["source"]
        assert source["kind"] == "registry" and source["name"] == "other.regression" and source["version"] == "1"
        assert Path(source["path"]) == results / "registry" / "other.regression" / "v1"
        assert meta["backbone"]["input_fill"]["reason"] == "feature_dropout"
        client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
        exp = client.get_experiment_by_name("other")
        (run,) = client.search_runs([exp.experiment_id], "tags.`physfm.stage` = 'finetune'")
        tags = run.data.tags
        assert tags["backbone.source"] == "registry" and tags["backbone.registry"] == "other.regression/1"
        assert (
            tags["inputs.fill_reason"] == "feature_dropout"
            and tags["inputs.data_lacks"] == "charge,impact_parameters,pid"
        )
        # clear errors: unknown model, missing version, not a URI physfm reads, tampered files
        with pytest.raises(LookupError, match=r"no registered model 'nope'.*registered: other.regression"):
            resolve("models:/nope/1")
        with pytest.raises(LookupError, match=r"has no version 7 \(versions: 1\)"):
            resolve("models:/other.regression/7")
        with pytest.raises(ValueError, match="models:/<name>/<version>"):
            parse_registry_uri("models:/other.regression")
        assert parse_registry_uri("models:/other.regression/latest") == ("other.regression", "latest")
        cached = results / "registry" / "other.regression" / "v1"
        weights = cached / "backbone.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
        capsys.readouterr()
        assert main([*ft, "--backbone", "models:/other.regression/latest", "--out", str(tmp_path / "m2")]) != 0
        err = capsys.readouterr().err
        assert "registered backbone's files do not verify" in err and "backbone.safetensors: sha256" in err
        with pytest.raises(ArtifactError, match="do not verify"):
            load_backbone_source("models:/other.regression/1")
        shutil.rmtree(cached)  # deleted: downloaded again from the store, and verifies
        assert main([*ft, "--backbone", "models:/other.regression/latest", "--out", str(tmp_path / "m3")]) == 0
