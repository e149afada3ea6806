"""``physfm tracking-init``: create the MLflow store and experiment before jobs fan out."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tracking-init",
        help="create the MLflow database and experiment (run once before parallel jobs)",
        description="Create the MLflow tracking store and experiment if missing. The store is "
        "$MLFLOW_TRACKING_URI if set, else sqlite:///$PHYSFM_RESULTS/mlflow.db (default results/). "
        "Browse it with: mlflow ui --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1",
    )
    p.add_argument("--experiment", help="experiment name (default: $PHYSFM_EXPERIMENT or 'physfm')")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from physfm import tracking

    exp_id = tracking.init_store(args.experiment)
    print(
        f"MLflow store {tracking.tracking_uri()} experiment '{args.experiment or tracking.experiment_name()}' "
        f"(id {exp_id}) ready"
    )
    return 0
