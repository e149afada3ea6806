"""Head inputs (issue 19 levers 2 and 6(b)): event-level side inputs of the fine-tuning head."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from tiny_study import save_tiny_backbone, simulated_icecube

from physfm.baselines.observables import write_observables
from physfm.data.substructure import NAMES
from physfm.evaluate.evaluate import evaluate_model
from physfm.finetune import head_inputs
from physfm.finetune.model import Head, HeadConfig, TaskModel, load_model
from physfm.finetune.subsets import make_subsets
from physfm.finetune.train import FinetuneConfig, finetune
from physfm.models.backbone import Backbone, BackboneConfig, normalize


@pytest.fixture(scope="module")
def jets(jet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("head_inputs")
    write_observables(jet_dataset, root / "observables", progress=False)
    make_subsets(jet_dataset, ["40", "60"], seed=1, out_dir=root / "subsets")
    return {"data": jet_dataset, "obs": root / "observables", "subsets": root / "subsets", "root": root,
            "backbone": save_tiny_backbone(jet_dataset, root / "backbone")}  # fmt: skip


def _cfg(mode: str, labels: str = "40", inputs: tuple[str, ...] = ("observables",)) -> FinetuneConfig:
    return FinetuneConfig(
        mode=mode, labels=labels, seed=1, max_steps=8, eval_every=4, patience=10, batch_size=8,
        head={"hidden": 16, "inputs": list(inputs)},
    )  # fmt: skip


def test_classification_reads_the_observables_saves_reloads_and_evaluates(
    jets: dict[str, Path], tmp_path: Path, one_torch_thread: None
) -> None:
    where = head_inputs.Sources(observables=jets["obs"])
    meta = finetune(
        jets["data"], tmp_path / "m", _cfg("finetune"), backbone_dir=jets["backbone"],
        subsets_dir=jets["subsets"], progress=False, sources=where,
    )  # fmt: skip
    assert meta["head"]["inputs"] == ["observables"] and meta["head"]["side"]["columns"] == list(NAMES)
    model, task, saved = load_model(tmp_path / "m")
    assert saved["head"] == meta["head"]
    assert model.head.out[0].in_features == model.backbone.config.d_model + len(NAMES) == 16 + 11

    # evaluation rebuilds the side inputs for the test split: from the cache, or computed, alike
    cached = evaluate_model(tmp_path / "m", jets["data"], "test", n_bootstrap=3, sources=where)
    computed = evaluate_model(tmp_path / "m", jets["data"], "test", n_bootstrap=3)
    assert cached["metrics"] == computed["metrics"] and 0.0 <= cached["metrics"]["auc"] <= 1.0

    # the observables are really used: changing one changes the output
    inp = task.inputs(jets["data"], "test", saved["backbone"], None)
    head_inputs.attach(["observables"], inp, jets["data"], "test", None, where)
    x = torch.from_numpy(normalize(inp["x"], inp["mask"], saved["backbone"]))
    mask, side = torch.from_numpy(inp["mask"]), torch.from_numpy(inp["side"])
    with torch.no_grad():
        out = model(x, mask, side=side)
        changed = side.clone()
        changed[:, NAMES.index("m")] *= 3.0
        assert not torch.allclose(out, model(x, mask, side=changed))
    with pytest.raises(ValueError, match="side inputs"):
        model(x, mask)


def test_standardisation_reads_no_label(jets: dict[str, Path], tmp_path: Path) -> None:
    """The statistics come from unlabelled train events: the same whatever the labels, the label subset,
    the mode or the seed; the cache and the computed observables give the same ones."""
    relabelled = tmp_path / "relabelled"
    shutil.copytree(jets["data"], relabelled)
    for shard in relabelled.rglob("*.h5"):
        with h5py.File(shard, "r+") as f:
            if "label" in f:
                f["label"][...] = np.roll(f["label"][...], 1) if len(f["label"]) > 1 else 0
    ours = head_inputs.fit_norm(["observables"], jets["data"])
    assert head_inputs.fit_norm(["observables"], relabelled) == ours
    cached = head_inputs.fit_norm(["observables"], jets["data"], head_inputs.Sources(jets["obs"]))
    np.testing.assert_allclose(cached["mean"], ours["mean"])
    np.testing.assert_allclose(cached["std"], ours["std"])
    assert all(s > 0 for s in ours["std"]) and ours["columns"] == list(NAMES)


def test_frozen_caches_backbone_states_only_and_equals_an_uncached_pass(
    jets: dict[str, Path], tmp_path: Path, one_torch_thread: None
) -> None:
    torch.manual_seed(0)
    bcfg = BackboneConfig(n_features=4, d_model=16, n_layers=1, n_heads=2, max_len=12)
    side_meta = {"columns": ["a", "b", "c"], "mean": [1.0, 0.0, -2.0], "std": [2.0, 1.0, 0.5]}
    head = Head.from_meta(bcfg, 4, {"hidden": 8, "inputs": ["observables"], "side": side_meta})
    model = TaskModel(Backbone(bcfg), head).eval()
    x, mask = torch.randn(5, 12, 4), torch.rand(5, 12) > 0.3
    side = torch.randn(5, 3)
    with torch.no_grad():
        states = model.encode(x, mask, side=side)
        assert torch.equal(states, model.encode(x, mask, side=side + 1.0)), "the cache depends on side inputs"
        assert states.shape == (5, 1, 16)  # the class token's state only: no side input in it
        torch.testing.assert_close(model.decode(states, x, mask, side=side), model(x, mask, side=side))
        assert not torch.allclose(model.decode(states, x, mask, side=side + 1.0), model(x, mask, side=side))

    # a frozen and a finetune run, other label counts: same side statistics (no label, no subset in them)
    metas = [
        finetune(
            jets["data"],
            tmp_path / f"{mode}{n}",
            _cfg(mode, n),
            backbone_dir=jets["backbone"],
            subsets_dir=jets["subsets"],
            progress=False,
        )  # fmt: skip
        for mode, n in (("frozen", "40"), ("finetune", "60"))
    ]
    assert metas[0]["head"]["side"] == metas[1]["head"]["side"]
    frozen, _, _ = load_model(tmp_path / "frozen40")
    assert frozen.head.out[0].in_features == 16 + 11


@pytest.fixture(scope="module")
def icecube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 simulated IceCube-86 events, converted to shards."""
    return simulated_icecube(tmp_path_factory.mktemp("head_linefit"), 60, seed=3, shard_events=30)


def test_linefit_seeded_direction_head_starts_at_linefit(icecube: Path, tmp_path: Path, one_torch_thread: None) -> None:
    from physfm.baselines.linefit import predict_linefit, read_pulses
    from physfm.finetune.direction import DirectionTask

    cfg = FinetuneConfig(
        mode="scratch", labels="20", seed=1, max_steps=2, eval_every=1, patience=5, batch_size=8,
        head={"hidden": 8, "inputs": ["linefit"]},
    )  # fmt: skip
    arch = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16}
    meta = finetune(icecube, tmp_path / "m", cfg, arch=arch, task="direction", progress=False)
    assert meta["head"]["side"]["columns"][:3] == ["lf_dir_x", "lf_dir_y", "lf_dir_z"]

    # a fresh head of the saved meta is LineFit itself, before any training
    _, task, saved = load_model(tmp_path / "m")
    torch.manual_seed(0)
    bcfg = BackboneConfig.from_dict(saved["backbone"]["config"])
    fresh = TaskModel(Backbone(bcfg), DirectionTask().head(bcfg, saved["head"])).eval()
    assert fresh.head.seed == [0, 1, 2]
    inp = task.inputs(icecube, "test", saved["backbone"], None)
    head_inputs.attach(["linefit"], inp, icecube, "test", None)
    with torch.no_grad():
        pred = fresh(torch.from_numpy(normalize(inp["x"], inp["mask"], saved["backbone"])),
                     torch.from_numpy(inp["mask"]), side=torch.from_numpy(inp["side"])).numpy()  # fmt: skip
    pulses = read_pulses(icecube, "test")
    linefit_dir, _ = predict_linefit(pulses)
    order = {int(k): i for i, k in enumerate(pulses["event_key"])}
    np.testing.assert_allclose(pred, linefit_dir[[order[int(k)] for k in inp["event_key"]]], atol=1e-5)

    # the trained model evaluates with LineFit rebuilt for the test split
    res = evaluate_model(tmp_path / "m", icecube, "test", n_bootstrap=3)
    assert res["metrics"]["n_events"] == len(pred) and 0 <= res["metrics"]["mean_angular_error_deg"] <= 180


def test_unknown_or_per_particle_head_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        HeadConfig(inputs=["tau21"])
    with pytest.raises(ValueError, match="twice"):
        HeadConfig(inputs=["linefit", "linefit"])
    from physfm.finetune.segmentation import SegmentationTask

    with pytest.raises(ValueError, match="per-particle"):
        SegmentationTask(["a", "b"]).head_meta(HeadConfig(inputs=["observables"]))


def test_initial_candidate_keeps_the_untrained_linefit_head_unless_a_step_beats_it(
    icecube: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    """finetune.initial_candidate: the model before any step is validated at step 0 and is a checkpoint
    candidate. With lr 0 no step can beat it, so the kept model is the untrained head: LineFit itself."""
    from physfm.baselines.linefit import predict_linefit, read_pulses

    base = dict(mode="scratch", labels="20", seed=1, max_steps=4, eval_every=1, patience=2, batch_size=8, lr=0.0,
                warmup_steps=0, head={"hidden": 8, "inputs": ["linefit"]})  # fmt: skip
    arch = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16}
    with_initial = finetune(icecube, tmp_path / "a", FinetuneConfig(**base, initial_candidate=True), arch=arch,
                            task="direction", progress=False)  # fmt: skip
    without = finetune(icecube, tmp_path / "b", FinetuneConfig(**base), arch=arch, task="direction", progress=False)
    assert with_initial["history"][0]["step"] == 0 and with_initial["train"]["best_step"] == 0
    assert without["history"][0]["step"] == 1 and without["train"]["best_step"] == 1
    assert with_initial["train"]["best_val_loss"] == pytest.approx(without["train"]["best_val_loss"], rel=1e-5)
    # a step size that only spoils the head: the untrained head (LineFit) is restored at the end
    spoiled = finetune(icecube, tmp_path / "c", FinetuneConfig(**{**base, "lr": 5.0}, initial_candidate=True),
                       arch=arch, task="direction", progress=False)  # fmt: skip
    assert spoiled["train"]["best_step"] == 0 and spoiled["train"]["steps"] == 2  # stopped after patience 2
    assert all(h["val_loss"] > spoiled["history"][0]["val_loss"] for h in spoiled["history"][1:])
    model, task, saved = load_model(tmp_path / "c")
    inp = task.inputs(icecube, "test", saved["backbone"], None)
    head_inputs.attach(["linefit"], inp, icecube, "test", None)
    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(normalize(inp["x"], inp["mask"], saved["backbone"])),
                            torch.from_numpy(inp["mask"]), side=torch.from_numpy(inp["side"])).numpy()  # fmt: skip
    pulses = read_pulses(icecube, "test")
    linefit_dir, _ = predict_linefit(pulses)
    order = {int(k): i for i, k in enumerate(pulses["event_key"])}
    np.testing.assert_allclose(pred, linefit_dir[[order[int(k)] for k in inp["event_key"]]], atol=1e-5)
