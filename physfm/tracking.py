"""The only module that talks to MLflow.

Every stage opens one run through :func:`stage_run`. Where it logs to:

* ``MLFLOW_TRACKING_URI`` if set (e.g. ``http://host:5000`` on a cluster), else
* SQLite at ``$PHYSFM_RESULTS/mlflow.db`` (default ``results/mlflow.db``) with artifacts in
  ``$PHYSFM_RESULTS/mlartifacts``.

The experiment is ``$PHYSFM_EXPERIMENT`` (default ``physfm``); the Snakefile sets it to the study
name and calls :func:`init_store` once before any job starts, because concurrent first-opens of a
new SQLite database race. ``PHYSFM_TRACKING=0`` turns tracking off (for quick runs by hand).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from physfm import __version__


def enabled() -> bool:
    return os.environ.get("PHYSFM_TRACKING", "1").lower() not in ("0", "false", "off", "no")


def results_dir() -> Path:
    return Path(os.environ.get("PHYSFM_RESULTS", "results")).resolve()


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{results_dir() / 'mlflow.db'}"


def experiment_name() -> str:
    return os.environ.get("PHYSFM_EXPERIMENT", "physfm")


def _mlflow() -> Any:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def configure(results: str | Path, experiment: str) -> None:
    """Set where this process and its child jobs log (used by the Snakefile)."""
    os.environ.setdefault("PHYSFM_RESULTS", str(Path(results).resolve()))
    os.environ["PHYSFM_EXPERIMENT"] = experiment


def init_store(experiment: str | None = None, retries: int = 20) -> str:
    """Create the tracking database and the experiment if missing; return the experiment id.

    Safe to call from several processes: a lost creation race is retried as a lookup.
    """
    experiment = experiment or experiment_name()
    mlflow = _mlflow()
    if tracking_uri().startswith("sqlite:///"):
        results_dir().mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient()
    last: Exception | None = None
    for attempt in range(retries):
        try:
            exp = client.get_experiment_by_name(experiment)
            if exp is not None:
                return exp.experiment_id
            artifacts = None
            if tracking_uri().startswith("sqlite:///"):
                artifacts = (results_dir() / "mlartifacts").as_uri()
            return client.create_experiment(experiment, artifact_location=artifacts)
        except Exception as exc:  # database locked / already exists: retry as a lookup
            last = exc
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not open MLflow store {tracking_uri()}: {last}")


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flat_params(v, key + "."))
        else:
            s = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
            flat[key] = s[:6000]
    return flat


@dataclass
class StageRun:
    """Handle on an open run; methods are no-ops when tracking is off."""

    run_id: str | None = None
    _mlflow: Any = None
    tags: dict[str, str] = field(default_factory=dict)

    def log_params(self, params: dict[str, Any]) -> None:
        if self._mlflow:
            self._mlflow.log_params(_flat_params(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._mlflow:
            clean = {k: float(v) for k, v in metrics.items() if v is not None}
            self._mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self._mlflow:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._mlflow and Path(path).exists():
            if Path(path).is_dir():
                self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
            else:
                self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dataset(self, data_dir: str | Path, manifest: dict[str, Any], context: str) -> None:
        """Record a physfm dataset as an MLflow input, with its data_version as digest."""
        if not self._mlflow:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        source = resolve_dataset_source(str(Path(data_dir).resolve()))
        name = f"{manifest.get('modality', 'data')}@{manifest['data_version']}"
        ds = MetaDataset(source=source, name=name, digest=manifest["data_version"])
        self._mlflow.log_input(ds, context=context)


@contextlib.contextmanager
def stage_run(
    stage: str,
    *,
    run_name: str | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[StageRun]:
    """Open one MLflow run for a pipeline stage, tagged with provenance; close it FAILED on error."""
    all_tags: dict[str, str] = {
        "physfm.stage": stage,
        "physfm.version": __version__,
    }
    if commit := git_commit():
        all_tags["mlflow.source.git.commit"] = commit
    for var, tag in (
        ("SLURM_JOB_ID", "slurm.job_id"),
        ("SLURM_JOB_PARTITION", "slurm.partition"),
        ("CUDA_VISIBLE_DEVICES", "cuda_visible_devices"),
    ):
        if os.environ.get(var):
            all_tags[tag] = os.environ[var]
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    if not enabled():
        yield StageRun(tags=all_tags)
        return
    mlflow = _mlflow()
    exp_id = init_store()
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name or stage, tags=all_tags) as run:
        handle = StageRun(run_id=run.info.run_id, _mlflow=mlflow, tags=all_tags)
        if params:
            handle.log_params(params)
        yield handle
