"""The only module that talks to MLflow.

Every stage opens one run through :func:`stage_run`. Where it logs to:

* ``MLFLOW_TRACKING_URI`` if set (e.g. ``http://host:5000`` on a cluster), else
* SQLite at ``$PHYSFM_RESULTS/mlflow.db`` (default ``results/mlflow.db``) with artifacts in
  ``$PHYSFM_RESULTS/mlartifacts``.

The experiment is ``$PHYSFM_EXPERIMENT`` (default ``physfm``); the Snakefile sets it to the study
name and calls :func:`init_store` once before any job starts, because concurrent first-opens of a
new SQLite database race. ``PHYSFM_TRACKING=0`` turns tracking off (for quick runs by hand).

**The tracking server.** Importing MLflow and opening its store costs about 2.5 CPU seconds per
process (``import mlflow`` ~1.3 s, the SQLAlchemy store with alembic and its ORM ~0.9 s, the first
run's context ~0.2 s), more than a small stage's own work. So a stage process never imports MLflow.
The first stage that tracks starts a small server on this machine (:func:`serve_tracking`, one per user,
physfm code and SLURM job, behind a Unix socket in the temporary directory) that imports MLflow
once and forks a session process for each stage process that connects; the session opens its own
store connection and runs the stage's calls (start, params, tags, metrics, artifacts, inputs, end),
sent as JSON lines in order. A logging call costs the stage microseconds, and ``physfm`` connects as
soon as its command line is parsed (:func:`prestart`), so the session gets ready while the stage
works. Nothing is lost: the end of every run (:func:`stage_run`, :func:`resume_run`) waits until the
session has written everything of that run to the store, and raises if any of it failed; a stage
killed outright leaves its run KILLED (the session sees the socket close). The server exits after
:data:`IDLE_SECONDS` without a new stage.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

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

    Safe to call from several processes: a lost creation race is retried as a lookup. Runs in the
    calling process (``physfm tracking-init`` and the Snakefile's ``onstart`` call it).
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


def job_tags() -> dict[str, str]:
    """Where this process runs: SLURM job id and partition, and the GPUs it was given."""
    names = (
        ("SLURM_JOB_ID", "slurm.job_id"),
        ("SLURM_JOB_PARTITION", "slurm.partition"),
        ("CUDA_VISIBLE_DEVICES", "cuda_visible_devices"),
    )
    return {tag: os.environ[var] for var, tag in names if os.environ.get(var)}


# --------------------------------------------------------------------------- reproducibility facts (issue 17)
def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_tags() -> dict[str, str]:
    """What the machine and installation are: CPU model, cores, platform, Python and library versions."""
    return {
        "env.cpu_model": _cpu_model(),
        "env.cpu_count": str(os.cpu_count()),
        "env.platform": platform.platform(),
        "env.python": platform.python_version(),
        "env.numpy": _version("numpy"),
        "env.torch": _version("torch"),
    }


def runtime_tags() -> dict[str, str]:
    """How this process computed: its BLAS / OpenMP libraries and their threads, and, if the stage
    used torch, torch's version, BLAS, CPU kernels (capability), threads and determinism settings.

    Taken at the end of a run, in the stage's own process (thread counts are set by the stage)."""
    tags: dict[str, str] = {}
    from threadpoolctl import threadpool_info

    libs = sorted(threadpool_info(), key=lambda i: (i["user_api"], i["internal_api"], i.get("prefix", "")))
    for api in ("blas", "openmp"):
        found = []
        for i in (i for i in libs if i["user_api"] == api):
            what = " ".join(str(x) for x in (i["internal_api"], i.get("version")) if x)
            where = ", ".join(str(x) for x in (i.get("prefix"), i.get("architecture")) if x)
            found.append(f"{what} ({where}): {i['num_threads']} thread{'s' if i['num_threads'] != 1 else ''}")
        tags[f"env.{api}"] = "; ".join(found) or "none loaded"
    torch = sys.modules.get("torch")
    if torch is None:
        tags["env.torch.num_threads"] = "torch not used"
        return tags
    import re

    config = torch.__config__.show()
    blas = dict(re.findall(r"(BLAS_INFO|LAPACK_INFO)=(\w+)", config))
    tags.update(
        {
            "env.torch": torch.__version__,
            "env.torch.blas": f"{blas.get('BLAS_INFO', '?')} (LAPACK {blas.get('LAPACK_INFO', '?')})",
            "env.torch.cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "env.torch.num_threads": str(torch.get_num_threads()),
            "env.torch.num_interop_threads": str(torch.get_num_interop_threads()),
            "env.torch.deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled()),
        }
    )
    if torch.cuda.is_initialized():  # the stage used the GPU
        tags["env.torch.cuda"] = f"{torch.version.cuda}, {torch.cuda.get_device_name()}"
        cudnn = torch.backends.cudnn
        tags["env.torch.cudnn"] = f"deterministic={cudnn.deterministic}, benchmark={cudnn.benchmark}"
    return tags


# --------------------------------------------------------------------------- the worker, seen from the stage
_TRACKING_ENV = ("MLFLOW_", "PHYSFM_")


class _Worker:
    """This process's session with the tracking server (:func:`serve_tracking`): JSON lines over a Unix
    socket, in order."""

    _current: _Worker | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.sock = _connect()
        try:  # the session's MLflow messages go to this stage's stderr
            socket.send_fds(self.sock, [b"\n"], [2])
        except OSError:  # no stderr to share
            self.sock.sendall(b"\n")
        self.reader = self.sock.makefile("r", encoding="utf-8")
        self.pid = os.getpid()  # a forked child must not write into its parent's session
        self._next = 0
        self._io = threading.RLock()  # one call's line, and a call's answer, at a time

    @classmethod
    def get(cls) -> _Worker:
        with cls._lock:
            w = cls._current
            if w is None or w.pid != os.getpid():
                w = cls._current = _Worker()
            return w

    def send(self, op: str, **payload: Any) -> None:
        """Queue one call; the session runs it after the previous ones."""
        payload["env"] = {k: v for k, v in os.environ.items() if k.startswith(_TRACKING_ENV)}
        payload["cwd"] = os.getcwd()  # relative paths (default results/) are the stage's
        line = json.dumps({"op": op, **payload}, default=str) + "\n"
        try:
            with self._io:
                self.sock.sendall(line.encode())
        except OSError as exc:
            raise RuntimeError(f"the MLflow tracking session ended ({exc}); its error is above in stderr") from exc

    def call(self, op: str, **payload: Any) -> Any:
        """Run one call and wait for its result (and for everything queued before it)."""
        with self._io:
            self._next += 1
            self.send(op, id=self._next, **payload)
            while True:
                line = self.reader.readline()
                if not line:
                    raise RuntimeError(f"the MLflow tracking session ended before answering '{op}'; see stderr above")
                reply = json.loads(line)
                if reply.get("id") == self._next:
                    break
        if reply.get("errors"):
            raise RuntimeError(f"MLflow logging failed ({tracking_uri()}):\n" + "\n".join(reply["errors"]))
        return reply.get("result")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.send("exit")
        with contextlib.suppress(OSError):
            self.sock.close()


def _server_path() -> Path:
    """The tracking server's socket: one per user, installation, physfm code and SLURM job, on this machine."""
    import hashlib
    import tempfile

    key = hashlib.sha256()
    for part in (sys.executable, __file__, os.environ.get("SLURM_JOB_ID", "")):
        key.update(part.encode() + b"\0")
    key.update(Path(__file__).read_bytes())
    tmp = tempfile.gettempdir()
    if len(tmp) > 60:  # a socket path has at most 107 bytes (a cluster's per-job TMPDIR can be long)
        tmp = "/tmp"
    base = Path(tmp) / f"physfm-tracking-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    return base / f"{key.hexdigest()[:16]}.sock"


def _connect(timeout: float = 300.0) -> socket.socket:
    """Connect to the tracking server, starting it if none is listening."""
    path = _server_path()
    server: subprocess.Popen[bytes] | None = None
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError as exc:
            sock.close()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"cannot reach the MLflow tracking server at {path} ({exc}); see {path}.log"
                ) from exc
        if server is not None and server.poll() is not None:
            if server.returncode != 0:
                log = Path(f"{path}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the MLflow tracking server failed to start (exit {server.returncode}):\n{log}")
            server = None  # it found another server listening: connect to that one (or start anew)
        if server is None:
            package_root = str(Path(__file__).resolve().parent.parent)
            code = (
                f"import sys; sys.path.insert(0, {package_root!r}); "
                "from physfm.tracking import serve_tracking; serve_tracking()"
            )
            with open(f"{path}.log", "ab") as log:
                server = subprocess.Popen(
                    [sys.executable, "-c", code, str(path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # outlives this stage; Ctrl-C of the workflow does not reach it
                )
        time.sleep(0.02)


@atexit.register
def _close_worker() -> None:
    w = _Worker._current
    if w is not None and w.pid == os.getpid():
        w.close()


def prestart() -> None:
    """Start this process's tracking worker now, so that it imports MLflow and opens the store while
    the stage works (``physfm`` calls it for every stage that tracks). No-op when tracking is off
    and on DDP ranks other than 0 (only rank 0 logs)."""
    if enabled() and os.environ.get("RANK", "0") == "0":
        _Worker.get()


class StageRun:
    """Handle on an open run; methods are no-ops when tracking is off.

    Calls return at once: the tracking worker carries them out in order, and the end of the run
    waits for all of them. ``run_id`` waits until the worker has created the run."""

    def __init__(
        self, worker: _Worker | None = None, tags: dict[str, str] | None = None, resumed: bool = False
    ) -> None:
        self._worker = worker
        self._run_id: str | None = None
        self._resumed = resumed  # a resumed run keeps the runtime facts of the process that started it
        self.tags: dict[str, str] = dict(tags or {})

    @property
    def active(self) -> bool:
        return self._worker is not None

    @property
    def run_id(self) -> str | None:
        if self._run_id is None and self._worker is not None:
            self._run_id = self._worker.call("run_id")
        return self._run_id

    def _send(self, op: str, **payload: Any) -> None:
        if self._worker is not None:
            self._worker.send(op, **payload)

    def log_params(self, params: dict[str, Any]) -> None:
        self._send("log_params", params=_flat_params(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._worker is not None:
            clean = {k: float(v) for k, v in metrics.items() if v is not None}
            self._send("log_metrics", metrics=clean, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._send("set_tags", tags={k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._worker is not None and Path(path).exists():
            self._send("log_artifact", path=str(Path(path).resolve()), artifact_path=artifact_path)

    def log_dataset(self, data_dir: str | Path, manifest: dict[str, Any], context: str) -> None:
        """Record a physfm dataset as an MLflow input, with its data_version as digest."""
        name = f"{manifest.get('modality', 'data')}@{manifest['data_version']}"
        self._send(
            "log_dataset",
            source=str(Path(data_dir).resolve()),
            name=name,
            digest=manifest["data_version"],
            context=context,
        )

    def _end(self, status: str) -> None:
        """Close the run with ``status`` once everything sent before is in the store; raise if any of it failed."""
        if self._worker is not None:
            run_id = self._worker.call("end", status=status, tags={} if self._resumed else runtime_tags())
            self._run_id = self._run_id or run_id
            self._worker = None  # the run is over: later calls on this handle do nothing


@contextlib.contextmanager
def _open(run: StageRun) -> Iterator[StageRun]:
    """Yield ``run``; end it FINISHED, or FAILED when the block raised (the error is kept)."""
    try:
        yield run
    except BaseException:
        with contextlib.suppress(Exception):  # the stage's own error is the one to report
            run._end("FAILED")
        raise
    run._end("FINISHED")


@contextlib.contextmanager
def stage_run(
    stage: str,
    *,
    run_name: str | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[StageRun]:
    """Open one MLflow run for a pipeline stage, tagged with provenance; close it FAILED on error.

    Tags: the stage, physfm version, git commit, SLURM job and GPUs (:func:`job_tags`), the facts
    that decide whether a rerun reproduces it (:func:`machine_tags`, :func:`runtime_tags`), and ``tags``.
    """
    all_tags: dict[str, str] = {"physfm.stage": stage, "physfm.version": __version__, **job_tags()}
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    if not enabled():
        yield StageRun(tags=all_tags)
        return
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    # what MLflow would record in this process (the worker's own command line is not the stage's)
    all_tags.setdefault("mlflow.source.name", sys.argv[0] if sys.argv and sys.argv[0] else "<console>")
    worker = _Worker.get()
    params_flat = _flat_params(params) if params else {}
    worker.send("start", run_name=run_name or stage, tags=all_tags, params=params_flat)
    with _open(StageRun(worker, all_tags)) as run:
        yield run


# --------------------------------------------------------------------------- study parent runs (issue 5)
def start_parent_run(
    run_name: str, *, tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None
) -> str | None:
    """Create a run that stays open as the parent of a study's jobs; return its id (None when tracking is off).

    Jobs nest under it by passing ``parent_run_id`` to :func:`stage_run`; close it with :func:`end_run`.
    """
    if not enabled():
        return None
    all_tags = {"physfm.stage": "study", "physfm.version": __version__, **job_tags()}
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    return _Worker.get().call("start_parent_run", run_name=run_name, tags=all_tags, params=_flat_params(params or {}))


def end_run(run_id: str | None, status: str = "FINISHED") -> None:
    """Mark a run (e.g. a study parent) as finished; no-op when tracking is off or ``run_id`` is None."""
    if enabled() and run_id:
        _Worker.get().call("terminate", run_id=run_id, status=status)


@contextlib.contextmanager
def resume_run(run_id: str | None) -> Iterator[StageRun]:
    """Log more into an existing run (evaluation adds test metrics to its fine-tuning run).

    With tracking off, or no ``run_id``, yields a handle whose methods do nothing.
    """
    if not enabled() or not run_id:
        yield StageRun()
        return
    worker = _Worker.get()
    worker.send("resume", run_id=run_id)
    run = StageRun(worker, resumed=True)
    run._run_id = run_id
    with _open(run) as handle:
        yield handle


def runs_view_url() -> str | None:
    """Address of the experiment's runs in the MLflow UI (``.../#/experiments/<id>/runs``); None when
    tracking is off. For a SQLite store it is the address of the README's ``mlflow ui`` command
    (http://127.0.0.1:5000), for a tracking server the server's."""
    if not enabled():
        return None
    experiment_id = _Worker.get().call("experiment_id")
    uri = tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs"


def run_metrics(run_id: str) -> dict[str, float]:
    """Latest value of every metric of a run (used to check reports against the store)."""
    return dict(_Worker.get().call("run_metrics", run_id=run_id))


# --------------------------------------------------------------------------- pretraining (issue 4)
def run_exists(run_id: str | None) -> bool:
    """Whether ``run_id`` is a run of the current store (a resumed job continues its own run)."""
    if not enabled() or not run_id:
        return False
    return bool(_Worker.get().call("run_exists", run_id=run_id))


def enable_system_metrics(interval_seconds: float = 10.0) -> None:
    """Make runs started afterwards in this process log CPU/memory (and GPU, with pynvml) metrics.

    The tracking worker samples them (system-wide, as MLflow does) while the run is open."""
    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "true"
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = str(interval_seconds)


def register_backbone(
    run: StageRun, directory: str | Path, name: str, skip: tuple[str, ...] = ("checkpoints",)
) -> None:
    """Log a backbone directory as the run's ``backbone/`` artifacts and register it as a new version
    of model ``name`` in the MLflow model registry, tagged with its data and tokenizer versions.

    Queued like every other call (done when the run ends); no-op when tracking is off."""
    if run.active:
        run._send("register_backbone", directory=str(Path(directory).resolve()), name=name, skip=list(skip))


def registered_backbone(name: str, version: str, dst: str | Path | None = None) -> dict[str, Any]:
    """Look up version ``version`` (a number, ``latest`` or ``@alias``) of registered model ``name``
        in the store (:func:`tracking_uri`) and, with ``dst``, download its files into the empty directory
        ``dst``. Returns ``{"version", "run_id", "source", "tags", "path"}`` (``path``: where the files
    are, below ``dst``), or ``{"error": ...}`` saying what is
        not there (the registered models, or the model's versions). Reading the registry works with
        tracking off too (``PHYSFM_TRACKING=0`` only stops logging)."""
    return dict(
        _Worker.get().call("registered_backbone", name=name, version=version, dst=None if dst is None else str(dst))
    )


# --------------------------------------------------------------------------- the worker process
class _Server:
    """Runs the calls of one stage process against MLflow (in the worker process)."""

    def __init__(self, reply: IO[str]) -> None:
        self.reply = reply
        self.errors: list[str] = []
        self.mlflow = _mlflow()
        self.fixed: dict[str, str] = {}  # git commit and machine facts, the same for every run
        self.cwd: str | None = None

    def apply_env(self, env: dict[str, str], cwd: str | None) -> None:
        if cwd and cwd != self.cwd:
            os.chdir(cwd)
            self.cwd = cwd
        for k in [k for k in os.environ if k.startswith(_TRACKING_ENV) and k not in env]:
            del os.environ[k]
        os.environ.update(env)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.mlflow.set_tracking_uri(tracking_uri())

    def provenance(self) -> dict[str, str]:
        if not self.fixed:
            if commit := git_commit():
                self.fixed["mlflow.source.git.commit"] = commit
            self.fixed.update(machine_tags())
        return dict(self.fixed)

    # ---- calls
    def start(self, run_name: str, tags: dict[str, str], params: dict[str, str]) -> None:
        exp_id = init_store()
        run = self.mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags={**self.provenance(), **tags})
        del run
        if params:
            self.mlflow.log_params(params)

    def resume(self, run_id: str) -> None:
        self.mlflow.start_run(run_id=run_id)

    def run_id(self) -> str | None:
        run = self.mlflow.active_run()
        return run.info.run_id if run else None

    def log_params(self, params: dict[str, str]) -> None:
        self.mlflow.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)

    def log_artifact(self, path: str, artifact_path: str | None) -> None:
        if Path(path).is_dir():
            self.mlflow.log_artifacts(path, artifact_path=artifact_path)
        else:
            self.mlflow.log_artifact(path, artifact_path=artifact_path)

    def log_dataset(self, source: str, name: str, digest: str, context: str) -> None:
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
            warnings.simplefilter("ignore", UserWarning)
            ds = MetaDataset(source=resolve_dataset_source(source), name=name, digest=digest)
        self.mlflow.log_input(ds, context=context)

    def register_backbone(self, directory: str, name: str, skip: list[str]) -> None:
        run_id = self.run_id()
        for item in sorted(Path(directory).iterdir()):
            if item.name in skip or item.name.startswith("."):
                continue
            self.log_artifact(str(item), f"backbone/{item.name}" if item.is_dir() else "backbone")
        from physfm.artifacts import open_artifact

        artifact = open_artifact(directory, "backbone")
        client = self.mlflow.MlflowClient()
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
        artifact_uri = client.get_run(run_id).info.artifact_uri
        client.create_model_version(name, source=f"{artifact_uri}/backbone", run_id=run_id, tags=tags)

    def registered_backbone(self, name: str, version: str, dst: str | None) -> dict[str, Any]:
        client = self.mlflow.MlflowClient()
        try:
            client.get_registered_model(name)
        except Exception:
            known = sorted(m.name for m in client.search_registered_models())
            listed = ", ".join(known) or "none"
            return {"error": f"no registered model '{name}' in {tracking_uri()} (registered: {listed})"}
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        try:
            if version == "latest":
                if not versions:
                    raise LookupError
                mv = client.get_model_version(name, str(versions[-1]))
            elif version.startswith("@"):
                mv = client.get_model_version_by_alias(name, version[1:])
            else:
                mv = client.get_model_version(name, version)
        except Exception:
            return {
                "error": f"registered model '{name}' has no version {version} "
                f"(versions: {', '.join(map(str, versions)) or 'none'})"
            }
        path = None
        if dst is not None:
            path = self.mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=dst)
        info = {"version": str(mv.version), "run_id": mv.run_id, "source": mv.source, "tags": dict(mv.tags)}
        return {**info, "path": path}

    def end(self, status: str, tags: dict[str, str]) -> str | None:
        run_id = self.run_id()
        if run_id is not None:
            if tags:
                self.mlflow.set_tags(tags)
            self.mlflow.end_run(status="FAILED" if self.errors else status)  # a run missing records failed
        return run_id

    def start_parent_run(self, run_name: str, tags: dict[str, str], params: dict[str, str]) -> str:
        client = self.mlflow.MlflowClient()
        exp_id = init_store()
        exp = client.get_experiment(exp_id)
        if "mlflow.experimentKind" not in exp.tags:  # open the UI on training runs, not the GenAI overview
            client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
        run = client.create_run(exp_id, run_name=run_name, tags={**self.provenance(), **tags})
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        return run.info.run_id

    def experiment_id(self) -> str:
        return init_store()

    def terminate(self, run_id: str, status: str) -> None:
        self.mlflow.MlflowClient().set_terminated(run_id, status=status)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.mlflow.MlflowClient().get_run(run_id).data.metrics)

    def run_exists(self, run_id: str) -> bool:
        try:
            self.mlflow.MlflowClient().get_run(run_id)
        except Exception:
            return False
        return True

    # ---- the loop
    def handle(self, msg: dict[str, Any]) -> bool:
        op, ident = msg.pop("op"), msg.pop("id", None)
        if op == "exit":
            return False
        self.apply_env(msg.pop("env", {}), msg.pop("cwd", None))
        result = None
        try:
            result = getattr(self, op)(**msg)
        except Exception:
            self.errors.append(f"{op}: {traceback.format_exc(limit=4)}")
            if op == "start":  # no run: the calls that follow would land in another run or fail
                self.errors.append("start failed: later calls of this run were not logged")
        if ident is not None:
            self.reply.write(json.dumps({"id": ident, "result": result, "errors": self.errors}, default=str) + "\n")
            self.reply.flush()
            self.errors = []
        return True


def _session(conn: socket.socket) -> None:
    """One stage process's calls, run in a process forked from the tracking server (see :func:`serve_tracking`)."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # the stage decides when its runs end; EOF ends the rest
        signal.signal(sig, signal.SIG_IGN)
    _, fds, _, _ = socket.recv_fds(conn, 1, 1)
    if fds:  # write MLflow's messages where the stage writes its own
        os.dup2(fds[0], 2)
        os.close(fds[0])
    server = _Server(conn.makefile("w", encoding="utf-8"))
    for line in conn.makefile("r", encoding="utf-8"):
        if not server.handle(json.loads(line)):
            break
    else:  # the stage process ended without closing its run (killed)
        if server.mlflow.active_run() is not None:
            server.mlflow.end_run(status="KILLED")


#: seconds the tracking server waits for a new stage before it exits
IDLE_SECONDS = 120.0


def serve_tracking() -> None:
    """The tracking server: imports MLflow once, then forks one session process per stage process.

    Started by the first stage that tracks (:func:`_connect`) in its own session, so it serves the
    later stages of a study on this machine too (a SLURM job gets its own). Each session process
    starts with MLflow imported (fork) and opens its own store connection, so a stage pays neither
    the import nor the store's set-up. Exits after :data:`IDLE_SECONDS` without a new stage.
    """
    import fcntl

    path = Path(sys.argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.chdir("/")  # each session works in its stage's directory; this one may be deleted meanwhile
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            return  # another server is already listening
        except OSError:
            path.unlink(missing_ok=True)  # a dead server's socket
        finally:
            probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
        except OSError:
            return  # another server bound it meanwhile
        listener.listen(64)
    # everything a session needs, imported once (the run's git context, alembic's migration check)
    _mlflow()
    import importlib

    for module in ("mlflow.store.tracking.sqlalchemy_store", "mlflow.data.dataset_source_registry",
                   "mlflow.data.meta_dataset", "alembic.command", "alembic.config", "git"):  # fmt: skip
        with contextlib.suppress(ImportError):
            importlib.import_module(module)

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # sessions are reaped automatically
    listener.settimeout(IDLE_SECONDS)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            with open(f"{path}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                path.unlink(missing_ok=True)  # from now on new stages start a new server
            listener.setblocking(False)
            while True:  # stages that connected just before: serve them, then stop
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    log = Path(f"{path}.log")
                    if log.exists() and log.stat().st_size == 0:
                        log.unlink(missing_ok=True)
                    return
                _fork_session(listener, conn)
        _fork_session(listener, conn)


def _fork_session(listener: socket.socket, conn: socket.socket) -> None:
    if os.fork() == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        listener.close()
        conn.setblocking(True)
        try:
            _session(conn)
        finally:
            os._exit(0)
    conn.close()
