"""The MLflow store under concurrent jobs: nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import sys
import time
from physfm import tracking
i = int(sys.argv[1])
for r in range(2):
    with tracking.stage_run("worker", run_name=f"w{i}-r{r}", params={"worker": i, "rep": r},
                            tags={"rule": "concurrency"}) as run:
        for step in range(10):
            run.log_metrics({"loss": 1.0 / (step + 1), "worker": float(i)}, step=step)
"""


def test_eight_processes_log_at_once_and_nothing_is_lost(tmp_path: Path) -> None:
    env = {**os.environ, "PHYSFM_TRACKING": "1", "PHYSFM_RESULTS": str(tmp_path), "PHYSFM_EXPERIMENT": "conc"}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, "-m", "physfm", "tracking-init"], env=env, check=True, capture_output=True)
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(i)], env=env, stderr=subprocess.PIPE, text=True)
        for i in range(8)
    ]
    errors = [p.communicate()[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("conc")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == 16
    assert {r.info.run_name for r in runs} == {f"w{i}-r{r}" for i in range(8) for r in range(2)}
    for run in runs:
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(10))
        assert run.data.params["worker"] == run.info.run_name[1:].split("-")[0]


def test_tracking_off_writes_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PHYSFM_TRACKING": "0", "PHYSFM_RESULTS": str(tmp_path)}
    code = "from physfm import tracking\nwith tracking.stage_run('x', params={'a': 1}) as r: r.log_metrics({'m': 1})"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert not (tmp_path / "mlflow.db").exists()


STAGE_WITH_TORCH = r"""
import torch
from physfm import tracking
torch.set_num_threads(1)
with tracking.stage_run("torch-stage", run_name="with torch", params={"a": 1}) as run:
    run.log_metrics({"x": float(torch.ones(3).sum())})
"""


def _runs(results: Path, experiment: str) -> dict[str, object]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id], max_results=100)}


def test_stage_runs_record_what_decides_reproducibility(tmp_path: Path, jet_files: list[Path]) -> None:
    """Every stage run carries the facts that decide whether a rerun reproduces it (issue 17): library
    versions, BLAS/OpenMP and their threads, torch's threads and CPU kernels, CPU model, platform;
    and a real stage (`physfm convert`) still logs everything it did before the tracking worker."""
    import numpy
    import torch

    env = {**os.environ, "PHYSFM_TRACKING": "1", "PHYSFM_RESULTS": str(tmp_path), "PHYSFM_EXPERIMENT": "repro"}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, "-m", "physfm", "tracking-init"], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", STAGE_WITH_TORCH], env=env, check=True)
    out = tmp_path / "data"
    convert = [sys.executable, "-m", "physfm", "convert", "--format", "jetclass", "--input", str(jet_files[0]),
               "--out", str(out), "--config", '{"shard_events": 100}', "--no-progress",
               "--tag", "rule=convert"]  # fmt: skip
    subprocess.run(convert, env=env, check=True, capture_output=True)

    runs = _runs(tmp_path, "repro")
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    for run in runs.values():
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["env.cpu_model"] == cpu and tags["env.cpu_count"] == str(os.cpu_count())
        assert tags["env.numpy"] == numpy.__version__ and tags["env.torch"] == torch.__version__
        assert tags["env.python"] == sys.version.split()[0] and "Linux" in tags["env.platform"]
        assert "openblas" in tags["env.blas"] and " thread" in tags["env.blas"]
        assert len(tags["mlflow.source.git.commit"]) == 40
    with_torch = runs["with torch"].data.tags
    assert with_torch["env.torch.num_threads"] == "1"
    assert with_torch["env.torch.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert with_torch["env.torch.blas"].startswith(torch.__config__.show().split("BLAS_INFO=")[1].split(",")[0])
    assert with_torch["env.torch.deterministic_algorithms"] == "False"
    assert "libgomp" in with_torch["env.openmp"]
    assert runs["with torch"].data.metrics["x"] == 3.0 and runs["with torch"].data.params["a"] == "1"

    # the convert stage: params, tags, metrics, the manifest artifact and the dataset input, all there
    from mlflow import MlflowClient

    from physfm.data.shards import load_manifest

    conv = runs["convert jetclass"]
    manifest = load_manifest(out)
    assert conv.data.tags["env.torch.num_threads"] == "torch not used"
    assert conv.data.tags["data_version.out"] == manifest["data_version"] and conv.data.tags["rule"] == "convert"
    assert conv.data.tags["mlflow.source.name"].endswith("physfm/__main__.py")
    assert conv.data.params["shard_events"] == "100"
    assert conv.data.metrics["events_written"] == sum(manifest["n_events"].values())
    assert [d.dataset.digest for d in conv.inputs.dataset_inputs] == [manifest["data_version"]]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [a.path for a in client.list_artifacts(conv.info.run_id)] == ["manifest.json"]


KILLED_STAGE = r"""
import os, signal
from physfm import tracking
with tracking.stage_run("doomed", run_name="killed") as run:
    run.log_metrics({"before_kill": 1.0})
    print(run.run_id, flush=True)  # waits until the worker has created the run
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_stage_leaves_its_run_killed_with_what_it_logged(tmp_path: Path) -> None:
    env = {**os.environ, "PHYSFM_TRACKING": "1", "PHYSFM_RESULTS": str(tmp_path), "PHYSFM_EXPERIMENT": "kill"}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, "-m", "physfm", "tracking-init"], env=env, check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", KILLED_STAGE], env=env, capture_output=True, text=True)
    assert out.returncode == -9
    run_id = out.stdout.strip()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    deadline = time.monotonic() + 120  # the worker notices the closed pipe and ends the run
    while client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.metrics["before_kill"] == 1.0


FAILING_CALL = r"""
from physfm import tracking
with tracking.stage_run("bad", run_name="bad tag") as run:
    run.set_tags({"k" * 300: "v"})  # MLflow refuses keys over 250 characters
    run.log_metrics({"after": 1.0})
"""


def test_a_logging_call_that_fails_fails_the_stage_at_the_end_of_its_run(tmp_path: Path) -> None:
    """Calls are carried out asynchronously; an MLflow error is not dropped: the stage gets it when its run
    ends, and the run, missing a record, ends FAILED."""
    env = {**os.environ, "PHYSFM_TRACKING": "1", "PHYSFM_RESULTS": str(tmp_path), "PHYSFM_EXPERIMENT": "bad"}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, "-m", "physfm", "tracking-init"], env=env, check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", FAILING_CALL], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "MLflow logging failed" in out.stderr and "set_tags" in out.stderr
    (run,) = _runs(tmp_path, "bad").values()
    assert run.info.status == "FAILED" and run.data.metrics["after"] == 1.0
