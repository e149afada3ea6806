"""``physfm tracking-init`` (create the MLflow store before jobs fan out) and ``physfm tracking-server``
(one MLflow server for a study whose jobs run on many cluster nodes)."""

from __future__ import annotations

import argparse
import os
import sys

SERVER_EPILOG = """\
on a cluster (docs/cluster.md):
  1. on the login node, or in a long CPU job, start the server on a free port:
       physfm tracking-server --host 0.0.0.0 --port 5123
  2. in the shell that runs Snakemake, point every job at it (sbatch exports it):
       export MLFLOW_TRACKING_URI=http://<this host>:5123      # printed at start-up
       snakemake --profile slurm all
  3. browse from your laptop through an SSH tunnel:
       ssh -L 5123:<this host>:5123 <login node>   then open http://localhost:5123

one machine: no server is needed; every stage writes to sqlite:///results/mlflow.db. To browse it:
  physfm tracking-server            (serves results/mlflow.db on http://127.0.0.1:5000)

The server has no authentication: anyone who can reach the port can read and write runs. Keep
--host 127.0.0.1 where jobs run on the same machine, and use a port only your group can reach.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tracking-init",
        help="create the MLflow database and experiment (run once before parallel jobs)",
        description="Create the MLflow tracking store and experiment if missing. The store is "
        "$MLFLOW_TRACKING_URI if set, else sqlite:///$PHYSFM_RESULTS/mlflow.db (default results/). "
        "Browse it with: physfm tracking-server (or mlflow ui --backend-store-uri sqlite:///results/mlflow.db)",
    )
    p.add_argument("--experiment", help="experiment name (default: $PHYSFM_EXPERIMENT or 'physfm')")
    p.set_defaults(func=run_init)

    s = sub.add_parser(
        "tracking-server",
        help="serve the MLflow store over HTTP (UI + API) for jobs on many nodes",
        description="Run an MLflow tracking server (UI and REST API) that owns the study's tracking "
        "database, so that many concurrent jobs on several nodes can log to it over HTTP instead of "
        "sharing one SQLite file over a network filesystem. Wraps `mlflow server`; stops with Ctrl-C.",
        epilog=SERVER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "--store",
        metavar="URI|PATH",
        help="tracking database: a SQLAlchemy URI (postgresql://user@db-host/physfm for large grids) or "
        "a SQLite file path (default: $PHYSFM_RESULTS/mlflow.db, i.e. results/mlflow.db, the store "
        "single-machine runs write to)",
    )
    s.add_argument(
        "--artifacts",
        metavar="DIR|URI",
        help="where uploaded artifacts (plots, models) are kept (default: $PHYSFM_RESULTS/mlartifacts)",
    )
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on: 127.0.0.1 (this machine only; default) or 0.0.0.0 (all, needed "
        "when jobs run on other nodes)",
    )
    s.add_argument("--port", type=int, default=5000, help="TCP port (default: 5000)")
    s.add_argument("--workers", type=int, default=2, help="server worker processes (default: 2)")
    s.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="extra Host header to accept (repeatable; this machine's names and private IPs are "
        "accepted already), e.g. a DNS alias the jobs use",
    )
    s.add_argument("--dry-run", action="store_true", help="print the mlflow command and exit")
    s.set_defaults(func=run_server)


def run_init(args: argparse.Namespace) -> int:
    from physfm import tracking

    exp_id = tracking.init_store(args.experiment)
    print(
        f"MLflow store {tracking.tracking_uri()} experiment '{args.experiment or tracking.experiment_name()}' "
        f"(id {exp_id}) ready"
    )
    return 0


def run_server(args: argparse.Namespace) -> int:
    from physfm import tracking, tracking_server

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    results = tracking.results_dir()
    spec = tracking_server.ServerSpec(
        store=tracking_server.store_uri(args.store, results),
        artifacts=tracking_server.artifacts_uri(args.artifacts, results),
        host=args.host,
        port=args.port,
        workers=args.workers,
        allowed_hosts=list(args.allowed_host),
    )
    cmd = spec.command()
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    tracking_server.check_port(spec.host, spec.port)
    if spec.store.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(spec.store.removeprefix("sqlite:///")), exist_ok=True)
    print(
        f"physfm tracking-server: store {spec.store}, artifacts {spec.artifacts}\n"
        f"  jobs log here with:  export MLFLOW_TRACKING_URI={spec.client_uri}\n"
        f"  UI:                  {spec.client_uri}  (Ctrl-C stops the server)",
        file=sys.stderr,
        flush=True,
    )
    # Become the server process, so Ctrl-C and SIGTERM reach mlflow directly.
    os.execv(cmd[0], cmd)
    return 0  # not reached
