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
    """Commit of the physfm checkout that runs this code (None outside a git checkout)."""
    cwd = cwd or Path(__file__).resolve().parent
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


def job_tags() -> dict[str, str]:
    """Where this process runs: SLURM job id and partition, and the GPUs it was given."""
    names = (
        ("SLURM_JOB_ID", "slurm.job_id"),
        ("SLURM_JOB_PARTITION", "slurm.partition"),
        ("CUDA_VISIBLE_DEVICES", "cuda_visible_devices"),
    )
    return {tag: os.environ[var] for var, tag in names if os.environ.get(var)}


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
    all_tags.update(job_tags())
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


# --------------------------------------------------------------------------- study parent runs (issue 5)
def start_parent_run(
    run_name: str, *, tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None
) -> str | None:
    """Create a run that stays open as the parent of a study's jobs; return its id (None when tracking is off).

    Jobs nest under it by passing ``parent_run_id`` to :func:`stage_run`; close it with :func:`end_run`.
    """
    if not enabled():
        return None
    mlflow = _mlflow()
    all_tags = {"physfm.stage": "study", "physfm.version": __version__, **job_tags()}
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    if commit := git_commit():
        all_tags["mlflow.source.git.commit"] = commit
    client = mlflow.MlflowClient()
    exp_id = init_store()
    exp = client.get_experiment(exp_id)
    if "mlflow.experimentKind" not in exp.tags:  # open the UI on training runs, not the GenAI overview
        client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    for key, value in _flat_params(params or {}).items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def end_run(run_id: str | None, status: str = "FINISHED") -> None:
    """Mark a run (e.g. a study parent) as finished; no-op when tracking is off or ``run_id`` is None."""
    if enabled() and run_id:
        _mlflow().MlflowClient().set_terminated(run_id, status=status)


@contextlib.contextmanager
def resume_run(run_id: str | None) -> Iterator[StageRun]:
    """Log more into an existing run (evaluation adds test metrics to its fine-tuning run).

    With tracking off, or no ``run_id``, yields a handle whose methods do nothing.
    """
    if not enabled() or not run_id:
        yield StageRun()
        return
    mlflow = _mlflow()
    with mlflow.start_run(run_id=run_id) as run:
        yield StageRun(run_id=run.info.run_id, _mlflow=mlflow)


def run_metrics(run_id: str) -> dict[str, float]:
    """Latest value of every metric of a run (used to check reports against the store)."""
    return dict(_mlflow().MlflowClient().get_run(run_id).data.metrics)


# --------------------------------------------------------------------------- pretraining (issue 4)
def run_exists(run_id: str | None) -> bool:
    """Whether ``run_id`` is a run of the current store (a resumed job continues its own run)."""
    if not enabled() or not run_id:
        return False
    try:
        _mlflow().MlflowClient().get_run(run_id)
    except Exception:
        return False
    return True


def enable_system_metrics(interval_seconds: float = 10.0) -> None:
    """Make runs started afterwards in this process log CPU/memory (and GPU, with pynvml) metrics."""
    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "true"
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = str(interval_seconds)


def register_backbone(run: StageRun, directory: str | Path, name: str, skip: tuple[str, ...] = ("checkpoints",)) -> Any:
    """Log a backbone directory as the run's ``backbone/`` artifacts and register it as a new version
    of model ``name`` in the MLflow model registry, tagged with its data and tokenizer versions.

    Returns the model version (None when tracking is off)."""
    if not run._mlflow or not run.run_id:
        return None
    directory = Path(directory)
    for item in sorted(directory.iterdir()):
        if item.name in skip or item.name.startswith("."):
            continue
        run.log_artifact(item, artifact_path=f"backbone/{item.name}" if item.is_dir() else "backbone")
    from physfm.artifacts import open_artifact

    artifact = open_artifact(directory, "backbone")
    client = run._mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except Exception:
        with contextlib.suppress(Exception):  # created meanwhile by a parallel job
            client.create_registered_model(name, description="physfm pretrained backbones")
    tags = {
        "data_version": artifact.inputs.get("data_version"),
        "tokenizer_version": artifact.inputs.get("tokenizer_version"),
        "objective": artifact.info.get("objective"),
        "backbone_version": artifact.version,
    }
    tags = {k: str(v) for k, v in tags.items()}
    artifact_uri = client.get_run(run.run_id).info.artifact_uri
    return client.create_model_version(name, source=f"{artifact_uri}/backbone", run_id=run.run_id, tags=tags)
