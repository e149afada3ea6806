"""An MLflow tracking server for studies whose jobs run on many machines at once.

On one machine every stage writes straight into SQLite (``results/mlflow.db``, see
:mod:`physfm.tracking`). On a cluster, hundreds of jobs on several nodes writing one SQLite file over
NFS/Lustre lock each other out or corrupt it, so one long-lived server owns the store and the jobs
talk HTTP to it: start it with ``physfm tracking-server``, export the ``MLFLOW_TRACKING_URI`` it
prints, then run Snakemake (sbatch passes the variable on to every job).

This module only builds the ``mlflow server`` command line; it never imports mlflow.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: Host headers mlflow accepts by default (loopback and private networks); the server's own names
#: are added when it listens beyond loopback, because ``--allowed-hosts`` replaces the defaults.
DEFAULT_ALLOWED_HOSTS = (
    "localhost",
    "localhost:*",
    "127.0.0.1",
    "127.0.0.1:*",
    "10.*",
    "192.168.*",
    *(f"172.{i}.*" for i in range(16, 32)),
)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::", "")


@dataclass
class ServerSpec:
    """What to serve and where to listen; :meth:`command` turns it into an ``mlflow server`` argv."""

    store: str
    artifacts: str
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 2
    allowed_hosts: list[str] = field(default_factory=list)

    @property
    def advertised_host(self) -> str:
        """The name jobs should connect to: this machine's FQDN when listening on all interfaces."""
        return socket.getfqdn() if self.host in WILDCARD else self.host

    @property
    def client_uri(self) -> str:
        """The ``MLFLOW_TRACKING_URI`` jobs must use."""
        host = self.advertised_host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def host_headers(self) -> list[str]:
        """``--allowed-hosts`` patterns; empty means mlflow's default (loopback + private IPs)."""
        if self.host in LOOPBACK and not self.allowed_hosts:
            return []
        names = {self.advertised_host, socket.gethostname(), socket.getfqdn()} - {""}
        extra = [p for n in sorted(names) for p in (n, f"{n}:*")]
        out: list[str] = []
        for pattern in (*DEFAULT_ALLOWED_HOSTS, *extra, *self.allowed_hosts):
            if pattern not in out:
                out.append(pattern)
        return out

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.store,
            "--artifacts-destination",
            self.artifacts,
            "--serve-artifacts",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        if headers := self.host_headers():
            cmd += ["--allowed-hosts", ",".join(headers)]
        return cmd


def store_uri(store: str | Path | None, results: Path) -> str:
    """A database URI from ``--store``: a URI passes through, a path becomes ``sqlite:///<abs path>``,
    nothing means the single-machine default ``<results>/mlflow.db``."""
    if store is None:
        return f"sqlite:///{(results / 'mlflow.db').resolve()}"
    text = str(store)
    if "://" in text:
        if text.startswith("file:"):
            raise ValueError(
                f"--store {text}: the file store is deprecated and unsafe for concurrent jobs; "
                "give a database (sqlite path or postgresql://user@host/db)"
            )
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def artifacts_uri(artifacts: str | Path | None, results: Path) -> str:
    """Where the server keeps artifacts: a URI (s3://...) passes through; a path is made absolute."""
    if artifacts is None:
        return str((results / "mlartifacts").resolve())
    text = str(artifacts)
    return text if "://" in text else str(Path(text).expanduser().resolve())


def check_port(host: str, port: int) -> None:
    """Fail early, with a hint, when something already listens on the port."""
    bind = "0.0.0.0" if host in WILDCARD else host
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind, port))
        except OSError as exc:
            raise ValueError(
                f"cannot listen on {host}:{port} ({exc.strerror}); another server (maybe an earlier "
                f"`physfm tracking-server`) uses it: pick another --port"
            ) from exc
