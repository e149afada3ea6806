"""The task interface (issue 13, item 2): one loop, one save/load, one evaluate, for every task.

Classification, IceCube direction and a jet regression (log jet mass from all the constituents) are
trained by the same entry point and loop, saved and evaluated the same way; a per-particle task
(segmentation) trains through the same loop on a small hand-made example; the PFN baseline, a
different network, trains through it too. Each task's evaluation streams the split and gives the
record and predictions file of the whole split read at once (segmentation: on simulated LArTPC events).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from physfm.data.dataset import open_dataset
from physfm.finetune import loop
from physfm.finetune.task import Scoring
from physfm.finetune.train import FinetuneConfig, finetune

PROMETHEUS = Path(__file__).parent / "data" / "graphnet" / "examples" / "parquet" / "prometheus" / "merged"
TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 32}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def icecube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from physfm.data.convert import convert

    out = tmp_path_factory.mktemp("icecube") / "data"
    convert("prometheus", PROMETHEUS, out, shard_events=20, progress=False)
    return out


@pytest.fixture
def fits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the tasks :func:`physfm.finetune.loop.fit` trained (spied where the entry point calls it)."""
    import physfm.finetune.train as train

    seen: list[str] = []
    real = loop.fit

    def spy(model: Any, task: Any, *args: Any, **kwargs: Any) -> loop.FitResult:
        seen.append(task.name)
        return real(model, task, *args, **kwargs)

    monkeypatch.setattr(train, "fit", spy)
    return seen


@pytest.mark.parametrize(
    ("task", "labels", "metric"),
    [
        ("classification", "40", "auc"),
        ("regression:log_mass", "40", "rmse"),
        ("direction", "12", "mean_angular_error_deg"),
        ("segmentation", "8", "macro_f1"),
    ],
)
def test_each_task_trains_saves_and_evaluates_through_the_one_loop(
    task: str,
    labels: str,
    metric: str,
    jet_dataset: Path,
    icecube: Path,
    lartpc_dataset: Path,
    tmp_path: Path,
    fits: list[str],
) -> None:
    from physfm.artifacts import open_artifact
    from physfm.evaluate.evaluate import evaluate_model
    from physfm.finetune.model import load_model
    from physfm.finetune.task import make_task

    data = {"direction": icecube, "segmentation": lartpc_dataset}.get(task, jet_dataset)
    cfg = FinetuneConfig(mode="scratch", labels=labels, seed=1, max_steps=6, eval_every=3, batch_size=8, device="cpu")
    meta = finetune(data, tmp_path / "m", cfg, arch=TINY, progress=False, task=task)
    name = make_task(task, open_dataset(data)).name
    assert fits == [name], "the entry point trains every task through loop.fit"
    assert meta["task"] == name and meta["n_labels"] == int(labels)
    assert meta["train"]["best_step"] in (3, 6) and np.isfinite(meta["train"]["best_val_loss"])
    assert [h["step"] for h in meta["history"]] == [3, 6]
    if name == "regression":  # validation targets are standardised with the train part's scale, as training's
        assert 0 < meta["train"]["best_val_rmse"] < 2 * meta["target"]["std"]
    assert open_artifact(tmp_path / "m", "finetuned").info["meta"] == make_task(task, open_dataset(data)).files[1]

    model, loaded, saved = load_model(tmp_path / "m")
    assert loaded.name == name and saved["history"] == meta["history"]
    result = evaluate_model(tmp_path / "m", data, "test", n_bootstrap=5, predictions=tmp_path / "p.npz")
    assert result["task"] == name and result["split"] == "test"
    assert result["n_events"] == open_dataset(data).manifest["n_events"]["test"]
    assert np.isfinite(result["metrics"][metric]) and result["std"][metric] >= 0
    assert result["train"] == meta["train"] and result["subset_digest"] == meta["subset"]["digest"]
    assert np.load(tmp_path / "p.npz")["event_key"].shape == (result["n_events"],)

    # evaluation streams the split (issue 20): one event per block it gives the record and predictions
    # file that the whole split read into memory at once (task.inputs, one call of the model) gives
    streamed = evaluate_model(
        tmp_path / "m", data, "test", n_bootstrap=5, predictions=tmp_path / "s.npz", block_events=1
    )
    whole, arrays = _whole_split_record(tmp_path / "m", data, "test", Scoring(n_bootstrap=5, seed=0))
    assert result["n_events"] > 1  # so several blocks were read
    assert json.dumps({k: streamed[k] for k in whole}, sort_keys=True) == json.dumps(whole, sort_keys=True)
    assert json.dumps(streamed, sort_keys=True) == json.dumps(result, sort_keys=True)
    with open(tmp_path / "w.npz", "wb") as f:
        np.savez_compressed(f, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})  # the layout may differ
    saved = np.load(tmp_path / "s.npz")
    assert sorted(saved.files) == sorted(arrays) and all(np.array_equal(saved[k], v) for k, v in arrays.items())
    assert (tmp_path / "s.npz").read_bytes() == (tmp_path / "w.npz").read_bytes() == (tmp_path / "p.npz").read_bytes()


def _whole_split_record(model_dir: Path, data: Path, split: str, how: Scoring) -> tuple[dict[str, Any], dict]:
    """The evaluation of a saved model with the whole split in memory (the path before streaming)."""
    from physfm.finetune.model import batched, load_model

    model, task, meta = load_model(model_dir)
    ds = open_dataset(data)
    inp = task.inputs(ds, split, meta["backbone"], None)
    out = batched(model, inp["x"], inp["mask"], meta["backbone"], 256, torch.device("cpu"), tokens=inp.get("tokens"))
    return task.evaluate(out, inp, ds, how)


def test_auto_task_follows_the_dataset(jet_dataset: Path, icecube: Path) -> None:
    from physfm.finetune.task import make_task, tasks

    assert make_task("auto", open_dataset(jet_dataset)).name == "classification"
    assert make_task(None, open_dataset(icecube)).name == "direction"
    assert {"classification", "direction", "regression", "segmentation"} <= set(tasks())
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_task("nope", open_dataset(jet_dataset))
    with pytest.raises(ValueError, match="unknown regression target"):
        make_task("regression:nope", open_dataset(jet_dataset))
    with pytest.raises(Exception, match="at least two"):
        make_task("classification", open_dataset(icecube))


def test_jet_regression_target_is_the_mass_of_all_constituents(jet_dataset: Path) -> None:
    """log(1 + m_jet) from every stored particle (not the backbone's first max_len) equals the jet's four-vector."""
    from physfm.finetune.regression import RegressionTask

    ds = open_dataset(jet_dataset)
    task = RegressionTask.for_dataset(ds, "log_mass")
    bmeta = {"features": ["log_pt"], "max_len": 4, "config": {}}  # the backbone reads 4 particles only
    inp = task.inputs(ds, "test", bmeta, None)
    names = ds.feature_names("event")
    ev = inp["events"].astype(np.float64)
    e, pt, eta = (ev[:, names.index(k)] for k in ("jet_energy", "jet_pt", "jet_eta"))
    m = np.sqrt(np.maximum(e**2 - (pt * np.cosh(eta)) ** 2, 0.0))
    np.testing.assert_allclose(inp["truth"], np.log1p(m), rtol=0, atol=2e-3)
    assert inp["x"].shape[1] == 4 and inp["n_particles"].max() > 4
    # the standardisation is fitted on the train part and recorded, so a loaded task predicts in GeV units
    task.fit(inp)
    again = RegressionTask.from_meta(task.to_meta())
    assert again.mean == pytest.approx(inp["truth"].mean()) and again.std == pytest.approx(inp["truth"].std())
    out = ((inp["truth"] - again.mean) / again.std)[:, None].astype(np.float32)  # a perfect prediction
    record, _ = again.evaluate(out, inp, ds, Scoring(n_bootstrap=3))
    assert record["metrics"]["rmse"] < 1e-5 and record["lower_is_better"]


def _seg_example(n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Hand-made per-particle task: a particle is class 1 when its first feature is positive; padding is junk."""
    x = rng.normal(size=(n, 10, 2)).astype(np.float32)
    mask = np.arange(10)[None, :] < rng.integers(3, 11, size=(n, 1))
    target = (x[..., 0] > 0).astype(np.int64)
    target[~mask] = 1  # never read: the loss and the scores see real particles only
    x[~mask] = 0.0
    return {"x": torch.from_numpy(x), "mask": torch.from_numpy(mask), "target": torch.from_numpy(target)}


def test_per_particle_segmentation_fits_the_same_loop() -> None:
    from physfm.finetune.model import TaskModel
    from physfm.finetune.segmentation import SegmentationTask
    from physfm.models.backbone import Backbone, BackboneConfig

    rng = np.random.default_rng(0)
    train, val = _seg_example(256, rng), _seg_example(64, rng)
    task = SegmentationTask(["negative", "positive"], column="hand_made")
    torch.manual_seed(0)
    backbone = Backbone(BackboneConfig(n_features=2, d_model=16, n_layers=1, n_heads=2, max_len=10))
    model = TaskModel(backbone, task.head(backbone.config, {"hidden": 16, "dropout": 0.0}))
    with torch.no_grad():
        out = model(train["x"][:3], train["mask"][:3])
    assert out.shape == (3, 10, 2), "a per-particle head gives logits for every particle"
    # the loss ignores padding: changing the padded labels does not change it
    t2 = train["target"][:3].clone()
    t2[~train["mask"][:3]] = 0
    assert float(task.loss(out, train["target"][:3], train["mask"][:3])) == float(task.loss(out, t2, train["mask"][:3]))

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    settings = loop.LoopSettings(max_steps=150, eval_every=25, patience=100, batch_size=32, seed=1)
    result = loop.fit(model, task, train, val, opt, settings, device=torch.device("cpu"), progress=False)
    assert result.history[0]["val_loss"] > result.best["val_loss"]
    assert result.best["val_macro_f1"] > 0.85 and result.best["val_accuracy"] > 0.85

    with torch.no_grad():
        logits = model(val["x"], val["mask"]).numpy()
    inp = {k: v.numpy() for k, v in val.items()} | {"event_key": np.arange(64)}
    record, arrays = task.evaluate(logits, inp, None, Scoring(n_bootstrap=5))  # type: ignore[arg-type]
    assert record["metrics"]["n_points"] == int(val["mask"].sum()) and record["metrics"]["macro_f1"] > 0.85
    assert np.array(record["segmentation"]["confusion"]).sum() == int(val["mask"].sum())
    assert arrays["pred"].shape == (64, 10)


class _Built:
    """A part that builds its batches (``len`` + ``rows``), as ragged LArTPC events do; here over tensors."""

    def __init__(self, part: dict[str, torch.Tensor]) -> None:
        self.part, self.calls = part, 0

    def __len__(self) -> int:
        return len(self.part["target"])

    def rows(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {k: v[idx] for k, v in self.part.items()}


@pytest.mark.parametrize("frozen", [False, True])
def test_a_part_may_build_its_batches(frozen: bool) -> None:
    """fit() reads a part only through rows(): a built part trains the model bit-identically to the dict
    it wraps, frozen (the cache of ``model.encode``, trained through ``model.decode``) included."""
    from physfm.finetune.model import TaskModel
    from physfm.finetune.segmentation import SegmentationTask
    from physfm.models.backbone import Backbone, BackboneConfig

    rng = np.random.default_rng(3)
    train, val = _seg_example(48, rng), _seg_example(16, rng)
    task = SegmentationTask(["negative", "positive"], column="hand_made")
    states = []
    for built in (False, True):
        torch.manual_seed(0)
        backbone = Backbone(BackboneConfig(n_features=2, d_model=16, n_layers=1, n_heads=2, max_len=10))
        model = TaskModel(backbone, task.head(backbone.config, {"hidden": 16, "dropout": 0.0}))
        before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        params = model.head.parameters() if frozen else model.parameters()
        opt = torch.optim.AdamW(params, lr=3e-3)
        settings = loop.LoopSettings(max_steps=12, eval_every=4, patience=100, batch_size=8, seed=1, eval_batch=5)
        tr, va = (_Built(train), _Built(val)) if built else (train, val)
        result = loop.fit(model, task, tr, va, opt, settings, frozen=frozen, device=torch.device("cpu"), progress=False)
        if built:
            assert tr.calls > 0 and va.calls > 0  # type: ignore[union-attr]
        assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items()) == frozen
        states.append((model.state_dict(), result.history))
    (a, ha), (b, hb) = states
    assert ha == hb and all(torch.equal(a[k], b[k]) for k in a)


def test_the_pfn_baseline_trains_through_the_same_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from physfm.baselines.pfn import PFNConfig, pfn_probs, train_pfn

    calls: list[str] = []
    real = loop.fit

    def spy(model: Any, task: Any, *args: Any, **kwargs: Any) -> loop.FitResult:
        calls.append(type(model).__name__)
        return real(model, task, *args, **kwargs)

    monkeypatch.setattr(loop, "fit", spy)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)
    x = rng.normal(size=(120, 8, 2)).astype(np.float32)
    x[..., 0] += 1.5 * y[:, None]  # class 1 is shifted: learnable
    mask = np.ones((120, 8), dtype=bool)
    parts = (np.arange(100), np.arange(100, 120))
    cfg = PFNConfig(features=["a", "b"], max_len=8, phi_sizes=[8], f_sizes=[8], max_steps=40, eval_every=10, patience=5)
    model, meta, record = train_pfn(x, mask, y, 2, cfg, seed=3, parts=parts, device="cpu")
    assert calls == ["PFN"], "the PFN, another network, trains in loop.fit"
    assert record["n_fit"] == 100 and record["n_val"] == 20 and record["history"]
    assert record["best_val_loss"] == min(h["val_loss"] for h in record["history"])
    acc = (pfn_probs(model, meta, x[100:], mask[100:]).argmax(1) == y[100:]).mean()
    assert acc > 0.7


def test_tasks_own_their_report_data() -> None:
    from physfm.evaluate.report import LOWER_IS_BETTER, METRIC_LABELS

    assert {"mean_angular_error_deg", "rmse"} <= set(LOWER_IS_BETTER) and "auc" not in LOWER_IS_BETTER
    assert METRIC_LABELS["auc"].startswith("ROC AUC") and "rmse" in METRIC_LABELS and "macro_f1" in METRIC_LABELS
