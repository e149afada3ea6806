"""Downstream sets (issue 13): their jobs in the DAG (`snakemake -n`), reruns after an edit of one entry, the
process weights of the generator, and a tiny transfer study end to end through `snakemake all`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_workflow import _copy_workflow, _scheduled, _snakemake

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "downstream_tiny.yaml"


def _jobs(workdir: Path, configfile: Path | str) -> set[tuple[str, str]]:
    """``(rule, outputs)`` of every job a dry run would execute."""
    out = _snakemake(workdir, "-n", "--cores", "2", "all", "--configfile", str(configfile)).stdout
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        head = re.match(r"(?:local)?rule (\w+):", block)
        outputs = re.search(r"^\s+output: (.+)$", block, re.M)
        if head:
            jobs.add((head.group(1), outputs.group(1) if outputs else ""))
    return jobs


def _with_downstream(work: Path, name: str, downstream: dict, **finetune: object) -> Path:
    config = yaml.safe_load((work / "config/smoke.yaml").read_text())
    config["downstream"] = downstream
    config["finetune"].update(finetune)
    path = work / name
    path.write_text(yaml.safe_dump(config))
    return path


TWO_SETS = {
    "shift": {
        "data": {"generate": {"n_jets": 300, "tune": 21, "smear_energy": 0.1}},
        "labels": [20],
        "modes": ["scratch", "finetune"],
        "seeds": [1, 2],
        "baselines": ["bdt", "cut"],
        "evaluate_on": ["data"],
    },
    "twoclass": {
        "data": {
            "generate": {"processes": ["qcd", "tbqq"], "n_jets": 200},
            "convert": {"labels": ["label_QCD", "label_Tbqq"]},
        },
        "task": "regression:log_mass",
        "baselines": [],
    },
}


def test_without_downstream_the_study_keeps_its_jobs_and_two_sets_add_theirs(tmp_path: Path) -> None:
    work = _copy_workflow(tmp_path)
    base = _jobs(work, "config/smoke.yaml")
    with_sets = _jobs(work, _with_downstream(work, "two.yaml", TWO_SETS))
    # every job of the study is still there, unchanged (its outputs too); the new ones are the downstream rules
    assert base <= with_sets
    added = with_sets - base
    rules = {r for r, _ in added}
    assert all(r.startswith("downstream_") for r in rules), rules
    by_rule: dict[str, list[str]] = {}
    for rule, outputs in added:
        by_rule.setdefault(rule, []).append(outputs)
    assert len(by_rule["downstream_generate"]) == len(by_rule["downstream_convert"]) == 2
    assert all("results/smoke/downstream/" in o for outs in by_rule.values() for o in outs)
    # shift: 1 label count x 2 modes x 2 seeds; twoclass: the finetune section's grid (20, 80 labels; 3 modes; seed 1)
    cells = sorted(o for o in by_rule["downstream_finetune"])
    assert sum("/shift/" in o for o in cells) == 4
    assert sum("/twoclass/" in o for o in cells) == 2 * 3
    assert len(by_rule["downstream_evaluate"]) == len(cells)
    assert len(by_rule["downstream_evaluate_on"]) == 4  # shift's cells, scored on the corpus's test split too
    assert all("/on_data/" in o for o in by_rule["downstream_evaluate_on"])
    # shift's baselines: bdt at 20 labels x 2 seeds + the zero-label cut, each also on the corpus
    assert len(by_rule["downstream_baseline"]) == 3 and len(by_rule["downstream_baseline_on"]) == 3
    assert {o.split("/downstream/")[1].split("/")[0] for o in by_rule["downstream_observables"]} == {"shift"}
    assert len(by_rule["downstream_label_subsets"]) == 2


def test_a_downstream_entry_takes_the_task_and_backbone_sources_to_its_jobs(tmp_path: Path) -> None:
    work = _copy_workflow(tmp_path)
    other = work / "results/other/pretrain/mpm"
    other.mkdir(parents=True)
    sets = {
        "reuse": {
            "backbones": [
                {"name": "theirs", "source": "results/other/pretrain/mpm"},
                {"name": "registered", "source": "models:/default.mpm/1"},
            ],  # fmt: skip
            "modes": ["finetune"],
            "labels": [20],
            "task": "regression:log_mass",
            "baselines": [],
        }
    }
    config = _with_downstream(work, "reuse.yaml", sets)
    run = _snakemake(work, "-n", "-p", "--cores", "2", "all", "--configfile", str(config))
    commands = re.findall(r"^Shell command: (physfm finetune .*)$", run.stdout + run.stderr, re.M)
    reuse = [c for c in commands if "downstream/reuse" in c]
    assert len(reuse) == 2
    assert any("--backbone results/other/pretrain/mpm --backbone-name theirs" in c for c in reuse)
    assert any("--backbone models:/default.mpm/1 --backbone-name registered" in c for c in reuse)
    assert all("--task regression:log_mass" in c for c in reuse)
    assert all("--tag downstream=reuse" in c for c in reuse)
    corpus = [c for c in commands if "downstream/" not in c]
    assert corpus and all("--task auto" in c for c in corpus)


def test_bad_downstream_entries_are_refused(tmp_path: Path) -> None:
    work = _copy_workflow(tmp_path)
    cases = {
        "unknown.yaml": {"x": {"backbones": ["nope"]}},
        "evaluate_on.yaml": {"x": {"evaluate_on": ["missing"]}},
        "files.yaml": {"x": {"data": {"source": "files"}}},
        "key.yaml": {"x": {"data": {"generate": {"n_jet": 3}}}},
    }
    for name, sets in cases.items():
        out = _snakemake(work, "-n", "all", "--configfile", str(_with_downstream(work, name, sets)), check=False)
        assert out.returncode != 0, name
        text = out.stdout + out.stderr
        assert {"unknown.yaml": "nope", "evaluate_on.yaml": "missing", "files.yaml": "data.input",
                "key.yaml": "n_jet"}[name] in text, text[-2000:]  # fmt: skip


def test_process_weights_split_the_jets() -> None:
    from physfm.data.generate_jets import plan_units, split_evenly, split_weighted

    assert split_weighted(12000, [9, 1]) == [10800, 1200]
    assert split_weighted(10, [1, 1, 1]) == split_evenly(10, 3)
    assert sum(split_weighted(1001, [0.7, 0.2, 0.1])) == 1001
    units = plan_units(1000, 1, ["qcd", "tbqq"], 2, [3, 1])
    per = {p: sum(u.n_jets for u in units if u.process == p) for p in ("qcd", "tbqq")}
    assert per == {"qcd": 750, "tbqq": 250}
    with pytest.raises(ValueError, match="positive"):
        split_weighted(10, [1, 0])


@pytest.fixture(scope="module")
def tiny_transfer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/data/downstream_tiny.yaml run once with `snakemake all`."""
    work = _copy_workflow(tmp_path_factory.mktemp("transfer"))
    (work / "tests/data").mkdir(parents=True)
    (work / "tests/data/downstream_tiny.yaml").write_text(TINY.read_text())
    _snakemake(work, "--cores", "2", "all", "--configfile", "tests/data/downstream_tiny.yaml")
    return work


@pytest.mark.slow
def test_tiny_transfer_study_end_to_end(tiny_transfer: Path) -> None:
    from mlflow import MlflowClient

    from physfm.data.shards import load_manifest

    study = tiny_transfer / "results/transfer_tiny"
    corpus = load_manifest(study / "data")["data_version"]
    shifted = load_manifest(study / "downstream/shift/data", verify=True)
    assert shifted["data_version"] != corpus
    assert not (study / "finetune/mpm").exists(), "on_corpus false: no grid on the corpus"
    assert (study / "downstream/other/finetune/mpm/n16/scratch/seed1/test.json").is_file()
    cell = study / "downstream/shift/finetune/mpm/n40/finetune/seed1"
    own, on_data = (json.loads(p.read_text()) for p in (cell / "test.json", cell / "on_data/test.json"))
    assert own["test_data_version"] == shifted["data_version"] and own["data_version"] == shifted["data_version"]
    assert on_data["test_data_version"] == corpus and on_data["tested_on"] == "data"
    assert own["backbone_data_version"] == corpus
    bdt = json.loads((study / "downstream/shift/baselines/bdt/n40/seed1/on_data/test.json").read_text())
    assert bdt["test_data_version"] == corpus and bdt["data_version"] == shifted["data_version"]

    report = json.loads((study / "report/report.json").read_text())
    section = report["downstream"]["shift"]
    assert set(section["tested_on"]) == {"shift", "data"}
    for group in section["tested_on"].values():
        assert {c["mode"] for c in group["cells"]} == {"scratch", "finetune", "bdt"}
        assert any(e["against"] == "best" for e in group["best_method"])
    html = (study / "report/report.html").read_text()
    assert 'id="downstream-shift"' in html and "Tested on the test split of data" in html

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_transfer / 'results/mlflow.db'}")
    exp = client.get_experiment_by_name("transfer_tiny")
    runs = client.search_runs(
        [exp.experiment_id], "tags.rule = 'downstream_finetune' and tags.downstream = 'shift'", max_results=100
    )
    assert len(runs) == 4
    for r in runs:
        assert r.data.tags["downstream"] == "shift"
        assert r.data.tags["data_version.in"] == shifted["data_version"]
        assert r.data.tags["backbone.data_version"] == corpus
        if r.data.tags["mode"] == "finetune":
            assert "data.test_auc" in r.data.metrics and "test_auc" in r.data.metrics
    assert _scheduled(tiny_transfer, Path("tests/data/downstream_tiny.yaml")) == {}


@pytest.mark.slow
def test_editing_one_downstream_entry_reruns_its_jobs_only(tiny_transfer: Path) -> None:
    config = yaml.safe_load(TINY.read_text())
    config["downstream"]["shift"]["data"]["generate"]["smear_angle"] = 0.03
    edited = tiny_transfer / "edited.yaml"
    edited.write_text(yaml.safe_dump(config))
    scheduled = _scheduled(tiny_transfer, edited)
    assert set(scheduled) - {"report", "all"} <= {r for r in scheduled if r.startswith("downstream_")}
    assert scheduled["downstream_generate"] == 1 and "pretrain" not in scheduled and "generate" not in scheduled
    outputs = {o for _, o in _jobs(tiny_transfer, edited)}
    assert not [o for o in outputs if "/downstream/other/" in o], "the other set's jobs must not rerun"
    assert any("/downstream/shift/finetune/" in o for o in outputs)


def test_report_has_a_section_per_downstream_set_and_a_part_per_test_set(tmp_path: Path) -> None:
    from test_report import _fake_results

    from physfm.artifacts import open_artifact
    from physfm.evaluate.report import build_report

    own = _fake_results()
    on_data = [{**r, "tested_on": "data", "test_data_version": "corpus"} for r in own if r["mode"] != "frozen"]
    out = tmp_path / "report" / "report.html"
    data = build_report(out, [], downstream={"shift": own + on_data, "other": own[:6]}, n_bootstrap=20)
    page = out.read_text()
    assert 'id="downstream-shift"' in page and 'id="downstream-other"' in page
    assert "Tested on the test split of data (trained on shift)" in page
    shift = data["downstream"]["shift"]["tested_on"]
    assert set(shift) == {"shift", "data"}
    assert {c["mode"] for c in shift["data"]["cells"]} == {"scratch", "finetune"}
    cell = next(c for c in shift["data"]["cells"] if c["mode"] == "finetune" and c["n_labels"] == 300)
    assert cell["auc"] == pytest.approx(
        np.mean([r["metrics"]["auc"] for r in on_data if r["mode"] == "finetune" and r["n_labels"] == 300])
    )
    assert {e["against"] for e in shift["shift"]["best_method"]} == {"best", "scratch"}
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").glob("downstream_*.png"))
    assert figures == [
        "downstream_other_efficiency.png",
        "downstream_other_roc.png",
        "downstream_shift_efficiency.png",
        "downstream_shift_on_data_efficiency.png",
        "downstream_shift_on_data_roc.png",
        "downstream_shift_roc.png",
    ]
    assert data["cells"] == [] and "no grid on the corpus" not in page  # the corpus's placeholder is a figure
    open_artifact(tmp_path / "report", "report")  # every figure listed in the manifest: it verifies
