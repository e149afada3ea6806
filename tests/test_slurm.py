"""The study on a real SLURM cluster: `snakemake --profile <profile> all` submits every job with sbatch.

The cluster tests (marker ``slurm``) start a single-node cluster with tests/slurm/start-cluster.sh
(slurmctld + slurmd + munged, partitions cpu and gpu, fake GPUs), run the smoke study through the
SLURM executor with MLflow behind ``physfm tracking-server``, compare it with a local run, pre-empt a
pretraining job and check that the rerun resumes from its checkpoint, and always stop the cluster.
They skip only where SLURM cannot be installed (not root, no apt-get); with ``CI`` or
``PHYSFM_REQUIRE_SLURM`` set they fail instead. The other tests check the profiles without a cluster.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "slurm"
PROFILE = SCRIPTS / "profile"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SMOKE = ["all", "--configfile", "config/smoke.yaml"]
#: Rules the profiles pin to the GPU partition.
GPU_RULES = ("pretrain", "finetune")


# --------------------------------------------------------------------------- helpers
def _env(**extra: str) -> dict[str, str]:
    """The test's environment for Snakemake: tracking on, no inherited store or SLURM job context."""
    drop = ("MLFLOW_TRACKING_URI", "PHYSFM_RESULTS", "PHYSFM_EXPERIMENT", "SLURM_CONF")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env["PHYSFM_TRACKING"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _copy_workflow(dest: Path) -> Path:
    for item in ("Snakefile", "workflow", "config", "envs", "slurm", "local"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    return dest


def _snakemake(work: Path, *args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [*SNAKEMAKE, *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed in {work}:\n{_diagnostics(work, out)}")
    return out


def _diagnostics(work: Path, out: subprocess.CompletedProcess[str] | None = None) -> str:
    parts = [out.stderr[-6000:]] if out is not None else []
    for pattern in ("results/*/logs/**/*.log", ".snakemake/slurm_logs/**/*.log"):
        for p in sorted(work.glob(pattern))[-6:]:
            parts.append(f"--- {p.relative_to(work)}\n{p.read_text(errors='replace')[-2500:]}")
    return "\n".join(parts)


def _rules_in_workflow() -> set[str]:
    text = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    return set(re.findall(r"^rule (\w+):", text, re.M))


def _must_run() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("PHYSFM_REQUIRE_SLURM"))


def _unavailable(reason: str) -> None:
    if _must_run():
        pytest.fail(f"SLURM cluster tests must run here (CI / PHYSFM_REQUIRE_SLURM set) but: {reason}")
    pytest.skip(reason)


@dataclass
class Job:
    """One job of a Snakemake run, from its log."""

    rule: str
    jobid: str
    gpus: int
    slurm_id: str | None = None


def _jobs(log: str) -> list[Job]:
    """The jobs Snakemake ran (local rules such as `all` excluded) and the SLURM job id of each, from
    its log: a "rule X:" block with "jobid: N" and "resources: ..." lines, then "Job N has been
    submitted with SLURM jobid M"."""
    jobs = {}
    for rule, block in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n)+)", log, re.M):
        jobid = re.search(r"^\s+jobid: (\d+)", block, re.M).group(1)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        gpus = re.search(r"\bgpu=(\d+)", resources.group(1)) if resources else None
        jobs[jobid] = Job(rule, jobid, int(gpus.group(1)) if gpus else 0)
    for jobid, slurm_id in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log):
        jobs[jobid].slurm_id = slurm_id
    return list(jobs.values())


#: Outputs that must be byte-identical between two runs of the same study (weights, indices, shards).
BYTE_EXACT = (".safetensors", ".npy", ".npz", ".faiss", ".h5")
#: JSON keys that legitimately differ between runs: timings, MLflow run ids and hashes of files that
#: hold timings (the files themselves are compared). ``backbone_version`` no longer hashes the
#: timings, but stays listed: the weights are compared byte for byte anyway.
VOLATILE_KEYS = re.compile(r"seconds|per_second|run_id|^files$|sha256|backbone_version|time|date|created|host")


def _json_leaves(node: object, where: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if not VOLATILE_KEYS.search(str(k)):
                yield from _json_leaves(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _json_leaves(v, f"{where}[{i}]")
    else:
        yield where, node


def _differences(a: Path, b: Path) -> list[str]:
    """What differs between two results trees: binary artefacts byte for byte, JSON value by value
    (floats to 1e-9 relative: summation order may differ in the last bit)."""
    diffs = []
    for path in sorted(a.rglob("*")):
        rel = path.relative_to(a)
        if "logs" in rel.parts or not path.is_file():
            continue
        if path.suffix in BYTE_EXACT and path.read_bytes() != (b / rel).read_bytes():
            diffs.append(f"{rel}: bytes differ")
        elif path.suffix == ".json":
            left = dict(_json_leaves(json.loads(path.read_text())))
            right = dict(_json_leaves(json.loads((b / rel).read_text())))
            for key in sorted(left.keys() | right.keys()):
                x, y = left.get(key, "<missing>"), right.get(key, "<missing>")
                if isinstance(x, float) and isinstance(y, float):  # NaN (an undefined interval) equals NaN
                    same = math.isclose(x, y, rel_tol=1e-9) or (math.isnan(x) and math.isnan(y))
                else:
                    same = x == y
                if not same:
                    diffs.append(f"{rel}{key}: {x!r} != {y!r}")
    return diffs


def _outputs(root: Path) -> set[str]:
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "logs" not in p.relative_to(root).parts
    }


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[None]:
    """A running single-node SLURM cluster, stopped afterwards whatever happens."""
    if os.name != "posix" or os.geteuid() != 0:
        _unavailable("starting slurmctld/slurmd needs root")
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        _unavailable("SLURM is not installed and there is no apt-get to install slurm-wlm")
    # One cluster per machine: a second test session waits here instead of stopping ours.
    lock = open("/tmp/physfm-slurm.lock", "a")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    scripts_env = {**os.environ, "PHYSFM_SLURM_LOCKED": "1"}  # we hold the lock the scripts check
    try:
        out = subprocess.run(
            [str(SCRIPTS / "start-cluster.sh")],
            env=scripts_env,
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        if out.returncode == 3:
            _unavailable(f"SLURM cannot be installed here: {out.stderr.strip()[-800:]}")
        assert out.returncode == 0, f"start-cluster.sh failed:\n{out.stdout}\n{out.stderr}"
        yield
    finally:
        subprocess.run([str(SCRIPTS / "stop-cluster.sh")], env=scripts_env, timeout=300, check=False)
        lock.close()


@dataclass
class Server:
    """A `physfm tracking-server` process started by the tests."""

    uri: str
    proc: subprocess.Popen[bytes]
    log: Path

    def ready(self, timeout: float = 240) -> str:
        """Wait until the server answers /health; return its URI."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as r:
                    if r.status == 200:
                        return self.uri
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"tracking server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(1)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`physfm tracking-server` on a free port (the MLflow recipe of docs/cluster.md), started without
    waiting, so that it comes up while the cluster starts; call `.ready()` before use."""
    store = tmp_path_factory.mktemp("mlflow_server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(store / "server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "physfm", "tracking-server", "--port", str(port), "--workers", "1"],
            env=_env(PHYSFM_RESULTS=str(store)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so its workers stop with it
        )
    try:
        yield Server(f"http://127.0.0.1:{port}", proc, store / "server.log")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@dataclass
class Study:
    work: Path
    log: str

    @property
    def results(self) -> Path:
        return self.work / "results" / "smoke"


@pytest.fixture(scope="module")
def studies(
    tracking_server: Server,
    slurm_cluster: None,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Study, Study]:
    """The smoke study run through the SLURM executor with the test profile, and the same study run
    locally as the reference it must reproduce. The local run is a session-wide `smoke_study` fixture
    (a workdir where `snakemake --cores 2 all --configfile config/smoke.yaml` ran) when conftest.py
    provides one; else it runs here, beside the cluster run, whose jobs leave the CPUs idle while
    Snakemake polls SLURM."""
    local: subprocess.Popen[bytes] | None = None
    try:
        local_work = Path(request.getfixturevalue("smoke_study"))
    except pytest.FixtureLookupError:
        local_work = _copy_workflow(tmp_path_factory.mktemp("local_study"))
        with open(local_work / "snakemake.log", "w") as log:  # a file: a pipe nobody reads would fill up
            local = subprocess.Popen(
                [*SNAKEMAKE, "--cores", "2", *SMOKE],
                cwd=local_work,
                env=_env(PHYSFM_TRACKING="0"),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    try:
        work = _copy_workflow(tmp_path_factory.mktemp("slurm_study"))
        env = _env(MLFLOW_TRACKING_URI=tracking_server.ready())
        out = _snakemake(work, "--profile", str(PROFILE), *SMOKE, env=env, timeout=1200)
        local_log = ""
        if local is not None:
            local.wait(timeout=1200)
            local_log = (local_work / "snakemake.log").read_text()
            assert local.returncode == 0, f"local run failed:\n{local_log[-4000:]}\n{_diagnostics(local_work)}"
    finally:
        if local is not None and local.poll() is None:
            local.kill()
            local.wait()
    return Study(work, out.stdout + out.stderr), Study(local_work, local_log)


@pytest.fixture(scope="module")
def slurm_study(studies: tuple[Study, Study]) -> Study:
    return studies[0]


@pytest.fixture(scope="module")
def local_study(studies: tuple[Study, Study]) -> Study:
    return studies[1]


# --------------------------------------------------------------------------- profiles, no cluster needed
@pytest.mark.parametrize("profile", ["slurm", "local"])
def test_verbatim_profile_names_resolve_from_the_repository_root(profile: str, tmp_path: Path) -> None:
    """`snakemake --profile slurm all` typed in the repository root finds ./slurm/config.yaml."""
    work = _copy_workflow(tmp_path)
    out = subprocess.run(
        [*SNAKEMAKE, "--profile", profile, *SMOKE, "-n"],
        cwd=work,
        env=_env(PHYSFM_TRACKING="0"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    # The dry run shows each job's resources: the profile's defaults reached them.
    if profile == "slurm":
        convert = re.search(r"rule convert:(?:\n\s+.*)*?\n\s+resources: (.*)", text)
        assert convert and "mem_mb=4000" in convert.group(1) and "runtime=60" in convert.group(1), text
        for rule in sorted(_rules_in_workflow() & set(GPU_RULES)):
            block = re.search(rf"rule {rule}:(?:\n\s+.*)*?\n\s+resources: (.*)", text)
            assert block and "slurm_partition=gpu" in block.group(1) and "gpu=1" in block.group(1), rule
    # A profile that does not exist is an error, not a silent fallback.
    bad = subprocess.run(
        [*SNAKEMAKE, "--profile", "no-such-profile", *SMOKE, "-n"],
        cwd=work,
        env=_env(PHYSFM_TRACKING="0"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bad.returncode != 0


def test_profiles_send_training_rules_to_gpus() -> None:
    for path in (REPO / "slurm" / "config.yaml", PROFILE / "config.yaml"):
        profile = yaml.safe_load(path.read_text())
        assert profile["executor"] == "slurm"
        assert profile["slurm-requeue"] is True
        # Jobs without a GPU request fit only partition cpu; jobs with one only partition gpu.
        partitions = yaml.safe_load((path.parent / profile["slurm-partition-config"]).read_text())["partitions"]
        assert partitions["cpu"]["max_gpu"] == 0 and partitions["gpu"]["max_gpu"] >= 1
        for rule in GPU_RULES:
            res = profile["set-resources"][rule]
            assert res["slurm_partition"] == "gpu" and res["cpus_per_gpu"] >= 1, (path, rule)
    local = yaml.safe_load((REPO / "local" / "config.yaml").read_text())
    assert local["resources"]["gpu"] == 1


def test_local_profile_runs_one_gpu_job_at_a_time(tmp_path: Path) -> None:
    """`--profile local` caps `gpu` at 1: GPU jobs never overlap, CPU jobs run beside them."""
    (tmp_path / "Snakefile").write_text(
        "rule all:\n"
        '    input: expand("gpu{i}.txt", i=range(3)), "cpu.txt"\n'
        "rule train:\n"
        '    output: "gpu{i}.txt"\n'
        "    resources: gpu=1\n"
        '    shell: "date +%s.%N > {output}; sleep 1.5; date +%s.%N >> {output}"\n'
        "rule prepare:\n"
        '    output: "cpu.txt"\n'
        '    shell: "date +%s.%N > {output}; sleep 1.5; date +%s.%N >> {output}"\n'
    )
    out = subprocess.run(
        [*SNAKEMAKE, "--profile", str(REPO / "local"), "--cores", "2"],
        cwd=tmp_path,
        env=_env(PHYSFM_TRACKING="0"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    spans = sorted(tuple(map(float, (tmp_path / f"gpu{i}.txt").read_text().split())) for i in range(3))
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two GPU jobs ran at once: {spans}"
    cpu = tuple(map(float, (tmp_path / "cpu.txt").read_text().split()))
    assert any(cpu[0] < end and start < cpu[1] for start, end in spans), "CPU jobs must not wait for the GPU"


def test_tracking_server_command_listens_and_accepts_its_own_name(tmp_path: Path) -> None:
    def dry(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "physfm", "tracking-server", "--dry-run", *args],
            env=_env(PHYSFM_RESULTS=str(tmp_path)),
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    local = dry()
    assert f"--backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db" in local
    assert f"--artifacts-destination {tmp_path.resolve()}/mlartifacts" in local
    assert "--host 127.0.0.1" in local and "--allowed-hosts" not in local
    cluster = dry("--host", "0.0.0.0", "--port", "5123", "--store", "postgresql://u@db/physfm")
    assert "--backend-store-uri postgresql://u@db/physfm" in cluster and "--port 5123" in cluster
    allowed = cluster.split("--allowed-hosts ", 1)[1].split()[0].split(",")
    assert socket.gethostname() in allowed and f"{socket.gethostname()}:*" in allowed and "localhost:*" in allowed
    bad = subprocess.run(
        [sys.executable, "-m", "physfm", "tracking-server", "--store", "file:///tmp/mlruns", "--dry-run"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "database" in bad.stderr


# --------------------------------------------------------------------------- on the cluster
@pytest.mark.slurm
@pytest.mark.slow
def test_every_rule_ran_as_a_slurm_job_in_its_partition(slurm_study: Study, tracking_server: Server) -> None:
    from mlflow import MlflowClient

    jobs = _jobs(slurm_study.log)
    assert {"generate", "convert", "summarize"} <= {j.rule for j in jobs}, slurm_study.log[-3000:]
    unsubmitted = [j.rule for j in jobs if j.slurm_id is None]
    assert not unsubmitted, f"jobs not submitted with sbatch: {unsubmitted}"
    for job in jobs:  # each job's SLURM log (rule_<rule>/[<wildcards>/]<id>.log) shows the rule ran in it
        logs = list((slurm_study.work / ".snakemake/slurm_logs" / f"rule_{job.rule}").glob(f"**/{job.slurm_id}.log"))
        assert len(logs) == 1, (job, logs)
        text = logs[0].read_text()
        assert f"rule {job.rule}:" in text and "--executor slurm-jobstep" in text, text[-2000:]
    assert {j.rule for j in jobs if j.gpus} >= {"pretrain", "finetune"}, "training rules must ask for a GPU"

    client = MlflowClient(tracking_uri=tracking_server.uri)
    exp = client.get_experiment_by_name("smoke")
    assert exp is not None, "the jobs must log to the tracking server"
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    by_slurm_id = {j.slurm_id: j for j in jobs}
    tracked = set()
    for run in runs:
        tags = run.data.tags
        if "rule" not in tags:
            continue
        job = by_slurm_id.get(tags.get("slurm.job_id"))
        assert job is not None and job.rule == tags["rule"], (tags["rule"], tags.get("slurm.job_id"))
        tracked.add(job.rule)
        assert tags.get("slurm.partition") == ("gpu" if job.gpus else "cpu"), (job, tags.get("slurm.partition"))
        if job.gpus:
            assert tags.get("cuda_visible_devices", "") != "", f"{job.rule} ran without CUDA_VISIBLE_DEVICES"
        else:
            assert "cuda_visible_devices" not in tags, f"CPU job {job.rule} was given a GPU"
    assert {"generate", "convert", "summarize"} <= tracked


@pytest.mark.slurm
@pytest.mark.slow
def test_cluster_run_reproduces_the_local_run(slurm_study: Study, local_study: Study) -> None:
    from physfm.data.shards import load_manifest

    assert _outputs(slurm_study.results) == _outputs(local_study.results)
    data_version = load_manifest(slurm_study.results / "data")["data_version"]
    assert data_version == load_manifest(local_study.results / "data")["data_version"]
    # Every data_version / tokenizer_version recorded anywhere, weights, embeddings, shards, metrics.
    assert _differences(slurm_study.results, local_study.results) == []


@pytest.mark.slurm
@pytest.mark.slow
def test_preempted_pretraining_resumes_from_its_checkpoint(slurm_study: Study, tracking_server: Server) -> None:
    """SIGTERM to a running pretrain job (what SLURM sends on pre-emption or at the time limit): the job
    checkpoints and fails; the rerun resumes from the checkpoint and ends with the uninterrupted weights."""
    work = slurm_study.work.resolve()
    env = _env(MLFLOW_TRACKING_URI=tracking_server.uri)
    backbone = sorted(p.name for p in (slurm_study.results / "pretrain").iterdir() if not p.name.startswith("."))[0]
    target = f"results/smoke/pretrain/{backbone}"
    weights = work / target / "backbone.safetensors"
    reference = weights.read_bytes()  # the uninterrupted run's backbone
    log = slurm_study.results / "logs" / "pretrain" / f"{backbone}.log"

    # Start from scratch (the finished run left its final checkpoint, which a rerun would just export).
    shutil.rmtree(slurm_study.results / "pretrain" / ".checkpoints" / backbone, ignore_errors=True)

    base = ["--profile", str(PROFILE), "--configfile", "config/smoke.yaml"]
    proc = subprocess.Popen(
        [*SNAKEMAKE, target, "--force", *base],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        pid, job = _wait_until_training(work, backbone, proc)
        # The smoke model trains in a second or two: freeze it while SLURM delivers the signal, so the
        # signal lands mid-training however slow the delivery (as SLURM's own suspend would).
        os.kill(pid, signal.SIGSTOP)
        try:
            subprocess.run(["scancel", "--signal=TERM", job], check=True, timeout=60)
            _wait_for_pending(pid, signal.SIGTERM)
        finally:
            os.kill(pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    interrupted = log.read_text(errors="replace")
    assert proc.returncode != 0, f"a pre-empted job must fail so that it runs again:\n{out[-3000:]}\n{interrupted}"
    assert "SIGTERM received" in interrupted, interrupted[-3000:]
    assert not weights.exists(), "the interrupted job must not leave a finished backbone"

    # Rerun (as `snakemake --profile slurm all` would): it resumes and ends with the same weights.
    _snakemake(work, target, *base, env=env)
    resumed = log.read_text(errors="replace")
    step = re.search(r"resuming from step (\d+)", resumed)
    assert step and int(step.group(1)) > 0, resumed[-3000:]
    assert weights.read_bytes() == reference, "the resumed backbone differs from the uninterrupted one"


def _wait_until_training(
    work: Path, backbone: str, proc: subprocess.Popen[str], timeout: float = 400
) -> tuple[int, str]:
    """Process id and SLURM job id of the `physfm pretrain` process of a pretrain job, once it is in the
    training loop, i.e. has installed its SIGTERM handler (bit 15 of SigCgt in /proc/PID/status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended before pretraining was signalled:\n{proc.stdout.read()[-4000:]}")
        for status in Path("/proc").glob("[0-9]*/status"):
            pid = status.parent
            try:
                cmd = (pid / "cmdline").read_bytes().split(b"\0")
                if b"pretrain" not in cmd or b"--backbone" not in cmd:
                    continue
                if cmd[cmd.index(b"--backbone") + 1] != backbone.encode() or Path(os.readlink(pid / "cwd")) != work:
                    continue
                caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status.read_text(), re.M).group(1), 16)
                environ = dict(
                    item.split(b"=", 1) for item in (pid / "environ").read_bytes().split(b"\0") if b"=" in item
                )
            except (OSError, AttributeError, IndexError):
                continue  # the process ended or is not ours to read
            if caught & (1 << (signal.SIGTERM - 1)) and b"SLURM_JOB_ID" in environ:
                return int(pid.name), environ[b"SLURM_JOB_ID"].decode()
        time.sleep(0.2)
    raise AssertionError(f"pretraining did not start within {timeout} s:\n{_diagnostics(work)}")


def _wait_for_pending(pid: int, sig: int, timeout: float = 60) -> None:
    """Wait until ``sig`` is pending for (stopped) process ``pid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        pending = 0
        for field in ("SigPnd", "ShdPnd"):
            pending |= int(re.search(rf"^{field}:\s*([0-9a-f]+)", status, re.M).group(1), 16)
        if pending & (1 << (sig - 1)):
            return
        time.sleep(0.05)
    raise AssertionError(f"signal {sig} never reached process {pid}")


# --------------------------------------------------------------------------- every objective, both profiles
#: The method benchmark cut down to seconds (config/methods.yaml under tests/data/methods_tiny.yaml), pretraining only.
METHODS_TINY = ("config/methods.yaml", "tests/data/methods_tiny.yaml", "pretrain_only.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("profile", [pytest.param("slurm", marks=pytest.mark.slurm), "local"])
def test_every_objective_pretrains_through_the_profile(
    profile: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Each jet pretraining objective of the method benchmark (mpm, next_token, regression, contrastive, dino,
    RINO's kT views, mpm2, flow, flow on PET's kNN block) trains through the workflow with the SLURM profile
    (every pretrain job an sbatch job in the GPU partition) and with the workstation profile."""
    work = _copy_workflow(tmp_path)
    (work / "tests" / "data").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "data" / "methods_tiny.yaml", work / "tests" / "data")
    (work / "pretrain_only.yaml").write_text(
        yaml.safe_dump({"pretrain": {"steps": 10, "val_every": 5, "checkpoint_every": 5}})
    )
    names = list(yaml.safe_load((REPO / "config" / "methods.yaml").read_text())["pretrain"]["backbones"])
    targets = [f"results/methods_tiny/pretrain/{b}" for b in names]
    if profile == "slurm":
        request.getfixturevalue("slurm_cluster")
        env = _env(MLFLOW_TRACKING_URI=request.getfixturevalue("tracking_server").ready())
        out = _snakemake(work, *targets, "--profile", str(PROFILE), "--configfile", *METHODS_TINY, env=env)
        pretrain = [j for j in _jobs(out.stdout + out.stderr) if j.rule == "pretrain"]
        assert len(pretrain) == len(names) and all(j.slurm_id and j.gpus for j in pretrain), pretrain
    else:
        _snakemake(work, *targets, "--profile", "local", "--cores", "2", "--configfile", *METHODS_TINY,
                   env=_env(PHYSFM_TRACKING="0"))  # fmt: skip
    for b, target in zip(names, targets, strict=True):
        meta = json.loads((work / target / "backbone.json").read_text())
        assert (work / target / "backbone.safetensors").is_file() and meta["pretrain"]["steps"] == 10, b
