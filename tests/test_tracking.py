"""The MLflow store under concurrent jobs: nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import sys
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
