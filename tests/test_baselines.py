"""The issue-18 baselines: jet observables against independent values, the budget's parts, the
bdt / pfn / cut CLI end to end on real Pythia jets with a real MLflow store, and the labels they read."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from physfm.baselines.observables import block_observables
from physfm.data.substructure import NAMES, jet_observables

REPO = Path(__file__).resolve().parents[1]


def _massless(pt: float, eta: float, phi: float) -> tuple[float, float, float, float]:
    px, py, pz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
    return px, py, pz, math.sqrt(px * px + py * py + pz * pz)


def _obs(*jets: list[tuple[float, float, float, float]]) -> list[dict[str, float]]:
    rows = [p for jet in jets for p in jet]
    offsets = np.concatenate([[0], np.cumsum([len(j) for j in jets])])
    cols = np.array(rows, dtype=np.float64).T
    values = jet_observables(offsets, *cols)
    return [dict(zip(NAMES, v, strict=True)) for v in values]


# --------------------------------------------------------------------------- observables, by hand
def test_two_particle_jet_matches_closed_forms() -> None:
    """Two equal-pT massless particles at (eta 0, phi +-a): every observable has a closed form."""
    pt, a = 250.0, 0.2
    (o,) = _obs([_massless(pt, 0.0, a), _massless(pt, 0.0, -a)])
    assert o["multiplicity"] == 2
    assert o["m"] == pytest.approx(2 * pt * math.sin(a), rel=1e-9)  # m^2 = 2 pT^2 (1 - cos 2a)
    assert o["m_sd"] == pytest.approx(o["m"], rel=1e-9)  # z = 0.5 > z_cut: nothing groomed
    assert o["pt"] == pytest.approx(2 * pt * math.cos(a), rel=1e-9)
    assert o["tau1"] == pytest.approx((2 * pt * a) / (2 * pt * 0.8), rel=1e-9)  # axis at phi 0, dR = a
    assert o["tau2"] == 0 and o["tau3"] == 0 and o["tau32"] == 0  # N >= multiplicity
    assert o["tau21"] == 0
    assert o["pt_d"] == pytest.approx(1 / math.sqrt(2), rel=1e-9)
    assert o["girth"] == pytest.approx(a / math.cos(a), rel=1e-9)  # 2 pT a / (2 pT cos a)


def test_tau_n_vanishes_at_multiplicity_and_general_values_match_a_direct_sum() -> None:
    single, triple = _obs(
        [_massless(500.0, 0.3, 1.0)],
        [_massless(300.0, 0.1, 0.0), _massless(150.0, -0.2, 0.25), _massless(60.0, 0.3, -0.3)],
    )
    assert single["m"] == pytest.approx(0.0, abs=1e-3) and single["m_sd"] == pytest.approx(0.0, abs=1e-3)
    assert single["tau1"] == single["tau2"] == single["tau3"] == 0.0 and single["pt_d"] == pytest.approx(1.0)
    assert triple["tau3"] == 0.0 and triple["tau1"] > triple["tau2"] > 0
    # tau1 and girth by a direct sum around the E-scheme jet axis (the single exclusive-kT jet)
    parts = [_massless(300.0, 0.1, 0.0), _massless(150.0, -0.2, 0.25), _massless(60.0, 0.3, -0.3)]
    px, py, pz, e = (sum(p[i] for p in parts) for i in range(4))
    y_j, phi_j, pt_j = 0.5 * math.log((e + pz) / (e - pz)), math.atan2(py, px), math.hypot(px, py)
    dr = [
        math.hypot(0.5 * math.log((p[3] + p[2]) / (p[3] - p[2])) - y_j, math.atan2(p[1], p[0]) - phi_j) for p in parts
    ]
    pts = [math.hypot(p[0], p[1]) for p in parts]
    assert triple["tau1"] == pytest.approx(
        sum(q * d for q, d in zip(pts, dr, strict=True)) / (sum(pts) * 0.8), rel=1e-9
    )
    assert triple["girth"] == pytest.approx(sum(q * d for q, d in zip(pts, dr, strict=True)) / pt_j, rel=1e-9)
    assert triple["m"] == pytest.approx(math.sqrt(e * e - px * px - py * py - pz * pz), rel=1e-9)


def test_soft_drop_grooms_a_soft_wide_branch_only() -> None:
    hard = [_massless(200.0, 0.0, 0.05), _massless(200.0, 0.0, -0.05)]
    m_pair = 400.0 * math.sin(0.05)
    soft, kept = _obs(hard + [_massless(10.0, 0.5, 0.4)], hard + [_massless(80.0, 0.5, 0.4)])
    assert soft["m_sd"] == pytest.approx(m_pair, rel=1e-9) and soft["m"] > 2 * m_pair  # z ~ 0.024: dropped
    assert kept["m_sd"] == pytest.approx(kept["m"], rel=1e-9)  # z ~ 0.17 > 0.1: kept


def _boosted(block, beta: float, rotate: float):
    """The block's particles boosted along z by ``beta`` and rotated in phi by ``rotate``."""
    from physfm.data.shards import EventBlock

    p = block.particles.astype(np.float64).copy()
    px, py, pz, e = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    g = 1 / math.sqrt(1 - beta * beta)
    c, s = math.cos(rotate), math.sin(rotate)
    out = p.copy()
    out[:, 0], out[:, 1] = c * px - s * py, s * px + c * py
    out[:, 2], out[:, 3] = g * (pz - beta * e), g * (e - beta * pz)
    return EventBlock(block.offsets, out, block.events, block.label, block.event_key)


def test_observables_are_invariant_under_longitudinal_boosts_and_rotations(jet_dataset: Path) -> None:
    from physfm.data.loader import open_split

    split = open_split(jet_dataset, "test")
    block = split.read(np.arange(20))
    assert split.manifest["particle_features"][0]["name"] == "part_px"  # columns 0..3 are px, py, pz, E
    ref = block_observables(block, split.manifest)
    moved = block_observables(_boosted(block, 0.6, 1.1), split.manifest)
    np.testing.assert_allclose(moved, ref, rtol=1e-6, atol=1e-6)
    # the soft-drop mass agrees with the generator's jet_sdmass, computed before the momenta were stored as
    # float32: light groomed jets lose digits to the rounding (m^2 = E^2 - p^2), and a z near z_cut may flip
    enames = [f["name"] for f in split.manifest["event_features"]]
    m_sd, stored = ref[:, NAMES.index("m_sd")], block.events[:, enames.index("jet_sdmass")]
    heavy = stored > 30
    assert heavy.sum() >= 5
    np.testing.assert_allclose(m_sd[heavy], stored[heavy], rtol=2e-3)
    assert np.mean(np.isclose(m_sd, stored, rtol=1e-2)) >= 0.8
    assert np.all(ref[:, NAMES.index("multiplicity")] == np.diff(block.offsets))


# --------------------------------------------------------------------------- budget and settings
def test_settings_dataclasses_match_the_schema_defaults() -> None:
    from snakemake.utils import validate

    from physfm.baselines.run import CONFIGS, method_config

    config: dict = {}
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    assert set(config["baselines"]) == set(CONFIGS)
    for method, cls in CONFIGS.items():
        assert method_config(method, config["baselines"][method]) == cls(), f"baselines.{method} differs"
    pfn, pretrain = CONFIGS["pfn"](), config["pretrain"]
    assert (pfn.features, pfn.max_len) == (pretrain["features"], pretrain["max_len"]), "the backbone's inputs"
    readme = (REPO / "config" / "README.md").read_text()
    for method, cls in CONFIGS.items():
        for name in cls.__dataclass_fields__:
            assert f"baselines.{method}" in readme and name in readme, (
                f"config/README.md lacks baselines.{method}.{name}"
            )
    with pytest.raises(ValueError, match="unknown setting.*baselines.bdt.max_iters"):
        method_config("bdt", {"max_iters": 3})


# --------------------------------------------------------------------------- end to end through the CLI
PFN_FAST = '{"max_steps": 240, "eval_every": 20, "patience": 4, "phi_sizes": [32, 32], "f_sizes": [32]}'


@pytest.fixture(scope="module")
def baseline_study(jet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """subsets + cached observables, then bdt, pfn and cut through `physfm`, logging to a real MLflow store;
    every read of the train and val splits during the baseline runs is recorded."""
    from tiny_study import tracking_env

    import physfm.baselines.run as run_mod
    from physfm.cli import main
    from physfm.data import loader

    root = tmp_path_factory.mktemp("baselines")
    assert (
        main(
            ["subsets", "--data", str(jet_dataset), "--labels", "40,200", "--seeds", "2,3", "--out", str(root / "sub")]
        )
        == 0
    )
    with tracking_env(root / "results", "baselines"):
        assert main(["observables", "--data", str(jet_dataset), "--out", str(root / "obs"), "--no-progress"]) == 0
        reads: list[tuple[str, object]] = []
        original_read, original_labels = loader.Split.read, run_mod.read_labels

        def spy_read(self, indices=None):
            reads.append((self.split, None if indices is None else np.asarray(indices).copy()))
            return original_read(self, indices)

        def spy_labels(data_dir, split="train"):
            reads.append((f"labels:{split}", None))
            return original_labels(data_dir, split)

        mp = pytest.MonkeyPatch()
        mp.setattr(loader.Split, "read", spy_read)
        mp.setattr(run_mod, "read_labels", spy_labels)
        try:
            common = ["--data", str(jet_dataset), "--eval-config", '{"bootstrap": 20}', "--threads", "1"]
            common.append("--no-progress")
            for method, extra in (
                ("bdt", ["--observables", str(root / "obs")]),
                ("pfn", ["--config", PFN_FAST]),
                ("cut", ["--observables", str(root / "obs")]),
            ):
                labelled = [] if method == "cut" else ["--subsets", str(root / "sub"), "--labels", "200", "--seed", "3"]
                args = ["baseline", "--method", method, *labelled, *extra, *common, "--out", str(root / method)]
                assert main([*args, "--tag", "study=tiny"]) == 0, method
        finally:
            mp.undo()
    return {"root": root, "reads": reads}


@pytest.mark.slow
def test_each_baseline_beats_chance_and_writes_evaluate_shaped_json(baseline_study: dict, jet_dataset: Path) -> None:
    from physfm.io import read_json

    root = baseline_study["root"]
    shape = read_json(root / "bdt" / "test.json")
    for method in ("bdt", "pfn", "cut"):
        r = read_json(root / method / "test.json")
        assert r["mode"] == method and r["split"] == "test" and r["backbone"] == "none"
        assert set(shape) == set(r), "every baseline writes the same keys"
        for key in ("metrics", "std", "lower_bounds", "n_events", "n_per_class", "n_bootstrap", "roc"):
            assert key in r  # physfm.evaluate.metrics.evaluate_scores's shape
        assert r["metrics"]["auc_Tbqq_vs_QCD"] > 0.6, (method, r["metrics"])
        assert r["metrics"]["auc"] > 0.55, (method, r["metrics"])
        expected = 0 if method == "cut" else 200
        assert r["n_labels"] == r["n_labels_used"] == expected
        if method != "cut":
            assert r["train"]["n_fit"] + r["train"]["n_val"] == 200 and r["train"]["n_val"] >= 4 * 2
    assert read_json(root / "pfn" / "test.json")["history"], "the PFN records its in-budget validation curve"


@pytest.mark.slow
def test_trained_baselines_read_no_label_outside_their_subset(baseline_study: dict, jet_dataset: Path) -> None:
    from physfm.finetune.subsets import load_split
    from physfm.io import read_json

    train_part, val_part = load_split(baseline_study["root"] / "sub", "200", 3, jet_dataset)  # the cells' seed
    subset = np.sort(np.concatenate([train_part, val_part]))
    reads = baseline_study["reads"]
    assert not [r for r in reads if r[0] in ("val", "labels:val")], "the val split is never read"
    train_reads = [idx for split, idx in reads if split == "train"]
    assert len(train_reads) == 2  # one for the BDT, one for the PFN
    for idx in train_reads:
        assert idx is not None and np.array_equal(np.unique(idx), subset)
    assert not [r for r in reads if r[0] == "labels:train"]
    for method in ("bdt", "pfn"):
        tr = read_json(baseline_study["root"] / method / "test.json")["train"]
        fit, val = np.array(tr["fit_indices"]), np.array(tr["val_indices"])
        assert np.array_equal(fit, train_part) and np.array_equal(val, val_part), "the budget protocol's parts"


@pytest.mark.slow
def test_baseline_runs_land_in_mlflow_with_fine_tuning_tags(baseline_study: dict, jet_dataset: Path) -> None:
    from mlflow import MlflowClient

    from physfm.data.shards import load_manifest

    root = baseline_study["root"]
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("baselines")
    runs = client.search_runs([exp.experiment_id], "tags.`physfm.stage` = 'baseline'")
    assert sorted(r.data.tags["mode"] for r in runs) == ["bdt", "cut", "pfn"]
    version = load_manifest(jet_dataset)["data_version"]
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        assert run.info.status == "FINISHED" and tags["data_version.in"] == version and tags["study"] == "tiny"
        for key in (
            "labels",
            "labels.name",
            "seed",
            "backbone",
            "subset.digest",
            "backbone.objective",
            "mlflow.source.git.commit",
        ):
            assert key in tags, key
        assert {"test_auc", "test_auc_std", "test_auc_Tbqq_vs_QCD", "n_labels_used"} <= set(metrics)
        assert metrics["n_labels_used"] == (0 if tags["mode"] == "cut" else 200)
    obs = client.search_runs([exp.experiment_id], "tags.`physfm.stage` = 'observables'")
    assert len(obs) == 1 and obs[0].data.metrics["jets_per_second"] > 0


def test_observables_cache_is_deterministic_and_checked_against_the_dataset(
    jet_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from physfm.baselines import observables
    from physfm.baselines.observables import FILE, compute_split, load_observables, write_observables
    from physfm.data.shards import DataError

    manifest = write_observables(jet_dataset, tmp_path / "obs", splits=["test"], progress=False)
    monkeypatch.setattr(observables, "UNIT_EVENTS", 10)  # several work units over two processes
    again = write_observables(jet_dataset, tmp_path / "obs2", splits=["test"], progress=False, workers=2)
    assert again == manifest, "same files whatever the number of workers"
    values, keys = load_observables(tmp_path / "obs", jet_dataset, "test")
    direct, direct_keys = compute_split(jet_dataset, "test")
    assert np.array_equal(keys, direct_keys) and np.array_equal(values, direct)
    assert manifest["n_events"] == {"test": len(keys)}
    with pytest.raises(KeyError, match="no 'train' split"):
        load_observables(tmp_path / "obs", jet_dataset, "train")
    (tmp_path / "obs" / FILE).write_bytes((tmp_path / "obs" / FILE).read_bytes() + b"x")
    with pytest.raises(DataError, match="does not match"):
        load_observables(tmp_path / "obs", jet_dataset, "test")


def test_bdt_grid_is_chosen_on_the_in_budget_validation_loss() -> None:
    from physfm.baselines.bdt import BDTConfig, fit_bdt

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0.5)
    cfg = BDTConfig(max_iter=30, n_iter_no_change=5, grid={"min_samples_leaf": [2, 60]})
    val = np.sort(np.concatenate([np.flatnonzero(y == c)[:5] for c in range(4)]))  # a stratified held-out part
    fit = np.setdiff1d(np.arange(len(y)), val)
    model, rec = fit_bdt(x, y, 4, cfg, seed=1, parts=(fit, val), threads=1)
    assert [c["params"]["min_samples_leaf"] for c in rec["candidates"]] == [2, 60]
    best = min(rec["candidates"], key=lambda c: c["val_loss"])
    assert rec["chosen"] == best["params"] and rec["best_val_loss"] == best["val_loss"]
    assert rec["val_positions"] == val.tolist() and rec["n_fit"] + rec["n_val"] == 200
    assert model.n_iter_ == rec["n_iter"] <= best["n_iter_grown"]  # cut back to the best iteration count
    staged = [p for p in model.staged_predict_proba(x[val])]
    losses = [-np.mean(np.log(np.clip(p[np.arange(len(val)), y[val]], 1e-15, 1))) for p in staged]
    assert losses[-1] == pytest.approx(rec["best_val_loss"], rel=1e-9)
    with pytest.raises(ValueError, match="cannot search over"):
        BDTConfig(grid={"max_depth": [3]})


def test_mass_window_scores() -> None:
    from physfm.baselines.cut import SCALE_GEV, CutConfig, class_scores, cut_probs

    m = np.array([20.0, 80.0, 175.0])
    s = class_scores(m, ["QCD", "Tbqq", "Wqq", "Zqq"], CutConfig())
    np.testing.assert_allclose(s[:, 0], -m)
    np.testing.assert_allclose(s[:, 1], -np.abs(m - 172.57))
    np.testing.assert_allclose(s[:, 2], -np.abs(m - 80.369))
    assert s.argmax(1).tolist() == [0, 2, 1]  # light -> QCD, 80 GeV -> W, 175 GeV -> top
    np.testing.assert_allclose(cut_probs(m, ["QCD", "Tbqq"], CutConfig()), np.exp(s[:, :2] / SCALE_GEV))
    with pytest.raises(ValueError, match="no mass for class 'Xbb'"):
        class_scores(m, ["QCD", "Xbb"], CutConfig())
