"""The Snakemake workflow end to end on the smoke study: outputs, MLflow runs, reruns, lint, CLI help."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from physfm.data.shards import load_manifest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _study_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PHYSFM_RESULTS", "PHYSFM_EXPERIMENT")
    }
    env["PHYSFM_TRACKING"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _copy_workflow(dest: Path) -> Path:
    for item in ("Snakefile", "workflow", "profiles", "config", "envs"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    return dest


def _snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*SNAKEMAKE, *args], cwd=workdir, env=_study_env(), capture_output=True, text=True)
    if check and out.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in workdir.glob("results/*/logs/**/*.log"))
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}\n{logs}")
    return out


def _scheduled(workdir: Path, configfile: Path) -> dict[str, int]:
    """Jobs a dry run would execute, by rule, parsed from Snakemake's job-stats table."""
    out = _snakemake(workdir, "-n", "--cores", "2", "all", "--configfile", str(configfile)).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    jobs = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def _descendants(workdir: Path, configfile: Path, rule: str) -> set[str]:
    """The rule and every rule downstream of it in the study's DAG (from `snakemake --rulegraph`)."""
    dot = _snakemake(workdir, "--rulegraph", "dot", "all", "--configfile", str(configfile)).stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, re.M))
    edges = re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)
    found, frontier = {rule}, [k for k, v in names.items() if v == rule]
    while frontier:
        node = frontier.pop()
        for a, b in edges:
            if a == node and names[b] not in found:
                found.add(names[b])
                frontier.append(b)
    return found


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke study run once with `snakemake all` in a temporary copy of the workflow."""
    work = _copy_workflow(tmp_path_factory.mktemp("study"))
    _snakemake(work, "--cores", "2", "all", "--configfile", "config/smoke.yaml")
    return work


@pytest.mark.slow
def test_smoke_study_produces_versioned_data_and_summary(smoke_study: Path) -> None:
    data = smoke_study / "results/smoke/data"
    manifest = load_manifest(data, verify=True)
    smoke = yaml.safe_load((smoke_study / "config/smoke.yaml").read_text())
    generated = smoke["data"]["generate"]["n_jets"]
    assert sum(manifest["n_events"].values()) == generated
    assert manifest["config"]["shard_events"] == smoke["data"]["convert"]["shard_events"]
    summary = yaml.safe_load((smoke_study / "results/smoke/summary/summary.json").read_text())
    assert summary["data_version"] == manifest["data_version"]
    assert set(summary["class_counts_sampled"]) == {"QCD", "Tbqq", "Wqq", "Zqq"}
    for png in summary["plots"]:
        assert (smoke_study / "results/smoke/summary" / png).stat().st_size > 5000
    assert _scheduled(smoke_study, Path("config/smoke.yaml")) == {}, "a finished study must be up to date"


@pytest.mark.slow
def test_every_stage_logged_an_mlflow_run_with_provenance(smoke_study: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_study / 'results/mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_rule = {}
    for r in runs:
        by_rule.setdefault(r.data.tags.get("rule"), []).append(r)
    data_version = load_manifest(smoke_study / "results/smoke/data")["data_version"]
    for rule in ("generate", "convert", "summarize"):
        assert len(by_rule.get(rule, [])) == 1, f"expected one MLflow run for rule {rule}, got {by_rule.keys()}"
        run = by_rule[rule][0]
        assert run.info.status == "FINISHED"
        assert run.data.tags["study"] == "smoke"
        assert len(run.data.tags["mlflow.source.git.commit"]) == 40
        assert run.data.tags["physfm.stage"] == rule
    convert = by_rule["convert"][0]
    assert convert.data.tags["data_version.out"] == data_version
    assert convert.data.metrics["events_written"] > 0 and convert.data.metrics["events_per_second"] > 0
    assert convert.data.params["shard_events"] == "150"
    assert [d.dataset.digest for d in convert.inputs.dataset_inputs] == [data_version]
    artifacts = [a.path for a in client.list_artifacts(convert.info.run_id)]
    assert "manifest.json" in artifacts
    assert by_rule["summarize"][0].data.tags["data_version.in"] == data_version


def _report_numbers(report_json: Path) -> dict[str, object]:
    """Every number of a study's report.json; run ids and figure paths differ between workdirs."""
    report = json.loads(report_json.read_text())
    runs = sorted(
        ({k: v for k, v in r.items() if k != "run_id"} for r in report["runs"]),
        key=lambda r: (str(r["backbone"]), r["mode"], r["n_labels"], r["seed"]),
    )
    # a method row's pretraining cost carries the wall time of the last pretraining process (and whether it
    # resumed): clock readings, not results
    clock = ("wall_seconds", "resumed_from")
    methods = [
        {**row, "cost": {k: v for k, v in (row.get("cost") or {}).items() if k not in clock}}
        for row in report.get("methods", [])
    ]
    return {**{k: v for k, v in report.items() if k not in ("runs", "figures")}, "runs": runs, "methods": methods}


def _pretrain_pid(work: Path, backbone: str) -> int | None:
    """Process id of the `physfm pretrain` process of ``backbone`` in ``work``, if it is running."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = cmdline.read_bytes().split(b"\0")
            if (
                b"pretrain" not in cmd
                or b"--backbone" not in cmd
                or cmd[cmd.index(b"--backbone") + 1] != backbone.encode()
            ):
                continue
            if Path(os.readlink(cmdline.parent / "cwd")) == work:
                return int(cmdline.parent.name)
        except (OSError, IndexError, ValueError):
            continue  # the process ended or is not ours to read
    return None


@pytest.mark.slow
def test_interrupted_study_resumes_with_the_plain_command(smoke_study: Path, tmp_path: Path) -> None:
    """Ctrl-C during pretraining, then the README's command again (no --rerun-incomplete): the
    workflow's default profile (profiles/default) reruns the incomplete jobs, pretraining resumes from
    its checkpoint, and the report has the numbers of the uninterrupted `smoke_study`."""
    work = _copy_workflow(tmp_path).resolve()
    command = ["--cores", "2", "all", "--configfile", "config/smoke.yaml"]
    rng = random.Random(17)  # the seeded moment: which backbone, and how long after its first checkpoint
    backbone = rng.choice(sorted(yaml.safe_load((work / "config/smoke.yaml").read_text())["pretrain"]["backbones"]))
    delay = rng.uniform(0.0, 0.3)
    checkpoint = work / "results/smoke/pretrain/.checkpoints" / backbone / "last.json"
    with open(work / "interrupted.log", "wb") as log:
        proc = subprocess.Popen(
            [*SNAKEMAKE, *command], cwd=work, env=_study_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 900
            while not checkpoint.exists():
                assert proc.poll() is None and time.monotonic() < deadline, "no pretraining checkpoint appeared"
                time.sleep(0.02)
            time.sleep(delay)
            pid = _pretrain_pid(work, backbone)
            assert pid is not None, f"pretraining of {backbone} ended before the interrupt"
            os.kill(pid, signal.SIGSTOP)  # hold it mid-training while the interrupt is delivered
            try:
                assert not (work / f"results/smoke/pretrain/{backbone}/backbone.safetensors").exists()
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
            finally:
                os.kill(pid, signal.SIGCONT)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    interrupted = (work / "interrupted.log").read_text(errors="replace")
    assert proc.returncode != 0, interrupted[-3000:]
    assert not (work / "results/smoke/report/report.json").exists()
    assert not (work / f"results/smoke/pretrain/{backbone}/backbone.safetensors").exists(), interrupted[-3000:]

    out = _snakemake(work, *command)  # the plain command again
    assert "IncompleteFilesException" not in out.stdout + out.stderr
    log_text = (work / f"results/smoke/logs/pretrain/{backbone}.log").read_text()
    resumed = re.search(r"resuming from step (\d+)", log_text)
    assert resumed and int(resumed.group(1)) > 0, log_text[-3000:]
    assert _report_numbers(work / "results/smoke/report/report.json") == _report_numbers(
        smoke_study / "results/smoke/report/report.json"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rule", "key", "value"),
    [
        ("summarize", ("data", "summary", "max_events"), 999),
        ("convert", ("data", "convert", "shard_events"), 77),
        ("generate", ("data", "generate", "seed"), 99),
    ],
)
def test_config_edit_reruns_exactly_that_stage_and_its_descendants(
    smoke_study: Path, rule: str, key: tuple[str, ...], value: int
) -> None:
    config = yaml.safe_load((smoke_study / "config/smoke.yaml").read_text())
    node = config
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    edited = smoke_study / f"edited_{rule}.yaml"
    edited.write_text(yaml.safe_dump(config))
    scheduled = set(_scheduled(smoke_study, edited))
    expected = _descendants(smoke_study, Path("config/smoke.yaml"), rule)
    assert scheduled == expected
    assert "generate" not in scheduled or rule == "generate"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("objective", "option", "value", "backbone", "other"),
    [("mpm", "mask_fraction", 0.4, "mpm", "gpt"), ("next_token", "quantized_inputs", True, "gpt", "mpm")],
)
def test_editing_one_backbones_objective_reruns_that_backbone_only(
    smoke_study: Path, objective: str, option: str, value: object, backbone: str, other: str
) -> None:
    """Each pretraining job gets its own objective's options: a neighbour's edit does not retrain it."""
    config = yaml.safe_load((smoke_study / "config/smoke.yaml").read_text())
    config["pretrain"].setdefault("objectives", {})[objective] = {option: value}
    edited = smoke_study / f"edited_{objective}.yaml"
    edited.write_text(yaml.safe_dump(config))
    out = _snakemake(smoke_study, "-n", "--cores", "2", "all", "--configfile", str(edited)).stdout
    reruns = set(re.findall(r"output: results/smoke/pretrain/(\w+)\s*$", out, re.M))
    assert reruns == {backbone}, out[-3000:]
    scheduled = _scheduled(smoke_study, edited)
    assert scheduled.get("pretrain") == 1
    if backbone == "gpt":  # sampling follows the next-token backbone; the fine-tuning grid uses mpm only
        assert scheduled.get("sample") == 1 and "finetune" not in scheduled
    else:
        assert "sample" not in scheduled and scheduled.get("finetune", 0) > 0
    assert other not in reruns


def test_lint_is_clean() -> None:
    out = subprocess.run([*SNAKEMAKE, "--lint"], cwd=REPO, env=_study_env(), capture_output=True, text=True)
    assert "Congratulations, your workflow is in a good condition!" in out.stdout + out.stderr, out.stdout + out.stderr


def test_bad_config_names_the_key_and_allowed_values(tmp_path: Path) -> None:
    work = _copy_workflow(tmp_path)
    (work / "bad.yaml").write_text("data:\n  source: download\n")
    out = _snakemake(work, "-n", "all", "--configfile", "bad.yaml", check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "download" in text and "'generate'" in text and "'files'" in text


def test_every_cli_stage_explains_itself() -> None:
    from physfm.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = [[name] for name in sub.choices]
    for name, p in sub.choices.items():
        for a in p._actions:
            if getattr(a, "choices", None) and a.dest in ("what", "action", "subcommand"):
                commands += [[name, child] for child in a.choices]
    assert ["convert"] in commands and ["generate", "jets"] in commands
    for cmd in [[], *commands]:
        out = subprocess.run([sys.executable, "-m", "physfm", *cmd, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, (cmd, out.stderr)
        assert "usage: physfm" in out.stdout and len(out.stdout) > 200, cmd
