"""Weakly supervised anomaly detection (CWoLa, docs/anomaly.md): the dijet generator's resonance peak, the SR/SB
labelling, the disjoint injected and evaluation signal sets, SIC by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from physfm.evaluate.anomaly import event_scores, sic_metrics
from physfm.finetune.cwola import CwolaConfig, partition, prepare_cwola, region_labels


def test_sic_on_a_hand_made_score_vector_equals_the_hand_computation() -> None:
    # 4 signal, 8 background; cut above 0.85 keeps 3 signal (TPR 0.75) and 1 background (FPR 1/8)
    scores = np.array([0.9, 0.95, 0.99, 0.3, 0.88, 0.1, 0.2, 0.4, 0.5, 0.6, 0.7, 0.05])
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    m = sic_metrics(scores, truth)
    # cuts: 0.99 (1/4, 0), 0.95 (2/4, 0), 0.9 (3/4, 0), 0.88 (3/4, 1/8): FPR 0 is excluded; best 0.75/sqrt(1/8)
    assert m["max_sic"] == pytest.approx(0.75 / np.sqrt(1 / 8))
    assert m["max_sic_fpr"] == pytest.approx(1 / 8)
    # FPR = 1 % lies between the cuts at FPR 0 (TPR 3/4) and FPR 1/8 (TPR 3/4): TPR 3/4
    assert m["sic_at_1pct"] == pytest.approx(0.75 / 0.1)
    assert m["auc"] == pytest.approx((3 * 8 + 3) / 32)  # the 0.3 signal beats 0.05, 0.1 and 0.2


def test_event_scores_average_the_two_jets_log_odds() -> None:
    logits = np.array([[0.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 0.0]])
    events = np.array([[7.0], [7.0], [7.0], [7.0]])  # the same event id in background and in signal
    scores, truth = event_scores(logits, events, ["event_id"], np.array([0, 0, 1, 1]))
    assert scores.tolist() == [2.0, -0.5] and truth.tolist() == [0, 1]


def test_region_labels_from_mjj() -> None:
    mjj = np.array([1000.0, 1100.0, 1349.9, 1350.0, 1649.9, 1650.0, 1999.9, 2000.0])
    assert region_labels(mjj, [1350, 1650], [1100, 2000]).tolist() == [-1, 0, 0, 1, 1, 0, 0, -1]


def test_the_pools_are_disjoint_and_fixed() -> None:
    truth = np.repeat([0, 1], 500)
    ids = np.tile(np.arange(500), 2)
    pools = partition(truth, ids, CwolaConfig())
    total = sum(p.astype(int) for p in pools.values())
    assert np.all(total == 1)  # every event in exactly one pool
    assert not np.any(pools["inject"] & pools["eval_sig"])
    assert 150 < pools["inject"].sum() < 350 and 250 < pools["data"].sum() < 450


@pytest.fixture(scope="module")
def dijet_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dijet dataset: 30 background and 30 signal events, converted with the dijet event branches."""
    from physfm.data.convert import convert
    from physfm.data.generate_jets import generate_jets

    root = tmp_path_factory.mktemp("dijet")
    generate_jets(root / "raw", 120, 5, processes=["dijet", "resonance"], n_files=1, workers=1, progress=False)
    options = {"labels": ["label_QCD", "label_Resonance"], "event_branches": ["event_id", "jet_index", "event_mjj"]}
    split = {"train": 1.0, "val": 0.0, "test": 0.0}
    convert("jetclass", root / "raw", root / "data", shard_events=500, split_fractions=split, reader_options=options)
    return root / "data"


def test_the_resonance_peaks_at_its_configured_mass(dijet_data: Path) -> None:
    from physfm.data.dataset import open_dataset
    from physfm.data.loader import read_block

    ds = open_dataset(dijet_data)
    block = read_block(ds.shards("train")[0][0])
    names = ds.feature_names("event")
    signal = block.label == ds.classes.index("Resonance")
    mjj = block.events[signal, names.index("event_mjj")]
    assert abs(np.median(mjj) - 1500.0) < 150.0  # m_A = 1500 GeV (the default resonance)
    assert set(block.events[:, names.index("jet_index")].tolist()) == {0.0, 1.0}


def test_injected_and_evaluation_signal_events_are_disjoint(dijet_data: Path, tmp_path: Path) -> None:
    from physfm.data.dataset import open_dataset
    from physfm.data.loader import read_block

    cfg = CwolaConfig(signal_region=[1300.0, 1700.0], sidebands=[1000.0, 2500.0])
    manifest = prepare_cwola(dijet_data, tmp_path / "sb", 0.5, 1, cfg)
    cw = manifest["cwola"]
    assert cw["injected_ids"] and cw["eval_signal_ids"]
    assert not set(cw["injected_ids"]) & set(cw["eval_signal_ids"])
    assert cw["n_sig_sr"] == round(0.5 * cw["n_bkg_sr"])
    ds = open_dataset(tmp_path / "sb", verify=True)
    names = ds.feature_names("event")
    train = read_block(ds.shards("train")[0][0])
    # region labels, never truth: a training jet's label is its event's m_jj region
    expected = region_labels(train.events[:, names.index("event_mjj")], cfg.signal_region, cfg.sidebands)
    assert np.array_equal(train.label, expected)
    test = read_block(ds.shards("test")[0][0])
    assert np.all(region_labels(test.events[:, names.index("event_mjj")], cfg.signal_region, cfg.sidebands) == 1)
    # the signal event ids of the two splits (by the source's truth: the injected ones in train, labels in test)
    test_sig = set(test.events[test.label == 1, names.index("event_id")].astype(int).tolist())
    assert test_sig == set(cw["eval_signal_ids"]) and not test_sig & set(cw["injected_ids"])


def test_the_anomaly_study_schedules_its_jobs(tmp_path: Path) -> None:
    from test_workflow import _copy_workflow, _snakemake

    work = _copy_workflow(tmp_path)
    out = _snakemake(work, "-n", "--cores", "2", "all", "--configfile", "config/anomaly.yaml").stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.startswith("anomaly_")}
    # 3 S/B x 2 seeds sets; x 2 modes classifiers and evaluations; one sample, conversion and report
    assert counts == {
        "anomaly_generate": 1,
        "anomaly_convert": 1,
        "anomaly_prepare": 6,
        "anomaly_subsets": 6,
        "anomaly_finetune": 12,
        "anomaly_evaluate": 12,
        "anomaly_report": 1,
    }
    assert "\nfinetune " not in out and "rule report:" not in out  # nothing fine-tuned on the corpus


@pytest.mark.slow
def test_tiny_anomaly_study_end_to_end(tmp_path: Path) -> None:
    import json

    from test_workflow import _copy_workflow, _snakemake

    work = _copy_workflow(tmp_path)
    (work / "tests" / "data").mkdir(parents=True)
    (work / "tests" / "data" / "anomaly_tiny.yaml").write_text(Path("tests/data/anomaly_tiny.yaml").read_text())
    _snakemake(work, "--cores", "2", "all", "--configfile", "tests/data/anomaly_tiny.yaml")
    report = work / "results" / "anomaly_tiny" / "anomaly" / "report"
    rows = json.loads((report / "anomaly.json").read_text())["rows"]
    assert {r["mode"] for r in rows} == {"scratch", "finetune"}
    assert all(np.isfinite(r["sic_at_1pct"]) for r in rows)
    assert "SIC" in (report / "report.html").read_text()
