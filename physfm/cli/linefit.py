"""``physfm linefit``: the LineFit baselines of the IceCube direction task (zero-label and refined).

A thin layer over :func:`physfm.baselines.linefit.linefit_baseline`: one MLflow run per cell, tagged
like a fine-tuning run (mode, labels, seed, backbone ``none``, data_version), with the test metrics
under the same names as ``physfm evaluate`` logs, and the evaluation record written as JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from physfm.cli.common import (
    add_config_arg,
    add_eval_config_arg,
    add_parent_args,
    add_tracking_args,
    eval_config,
    log_finite,
    open_stage_run,
    split_metrics,
)

DESCRIPTION = """\
Score the LineFit baselines of the IceCube direction task on a split (default test).

linefit: least-squares line through the non-auxiliary pulse positions against time; the particle
comes from -v. No labels (n_labels 0).
linefit_refined: LineFit's direction plus pulse statistics into boosted trees (scikit-learn) that
correct it, trained on the train part of one seed's label subset, with the number of rounds chosen
on that subset's validation part (physfm subsets): every label used is inside the budget n.

Writes an evaluation record like `physfm evaluate` (metrics, bootstrap std, per event type).
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``physfm linefit``."""
    p = sub.add_parser(
        "linefit",
        help="LineFit direction baselines for IceCube (zero-label, and refined within a label budget)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="IceCube-modality dataset directory (from convert)")
    p.add_argument("--mode", default="linefit", choices=["linefit", "linefit_refined"])
    p.add_argument("--subsets", type=Path, help="linefit_refined: subsets directory (physfm subsets)")
    p.add_argument("--labels", help="linefit_refined: label spec of the budget (e.g. 300)")
    p.add_argument("--seed", type=int, default=1, help="seed: which subset draw, and the trees' seed (default 1)")
    add_config_arg(p, "baselines.linefit (max_rounds, learning_rate, max_leaf_nodes, min_samples_leaf, ...)")
    add_eval_config_arg(p)
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads of the trees (default 1)")
    p.add_argument("--out", required=True, type=Path, help="output JSON (the evaluation record)")
    add_parent_args(p)
    add_tracking_args(p)
    p.set_defaults(func=run_linefit)


def run_linefit(args: argparse.Namespace) -> int:
    from physfm.baselines.linefit import RefineConfig, linefit_baseline
    from physfm.data.shards import load_manifest
    from physfm.io import write_json
    from physfm.stage import build, load_text

    manifest = load_manifest(args.data, verify=True)
    labels = "0" if args.mode == "linefit" else args.labels
    tags = {
        "mode": args.mode,
        "labels": labels,
        "seed": args.seed,
        "backbone": "none",
        "data_version.in": manifest["data_version"],
    }
    run_name = args.run_name or f"baseline n={labels} mode={args.mode} seed={args.seed}"
    cfg = build(RefineConfig, load_text(args.config), "baselines.linefit.")
    ev = eval_config(args)
    with open_stage_run(args, "baseline", run_name, {"data": str(args.data)}, tags) as run:
        record = linefit_baseline(
            args.data,
            args.mode,
            subsets_dir=args.subsets,
            labels=args.labels,
            seed=args.seed,
            split=ev.split,
            config=cfg,
            n_bootstrap=ev.bootstrap,
            threads=args.threads,
        )
        budget = record["budget"]
        protocol = budget.get("protocol") or {}
        run.log_params(
            {
                "n_labels": record["n_labels"],
                "n_train": budget["n_train"],
                "n_val": budget["n_val"],
                **{f"protocol.{k}": v for k, v in protocol.items()},
                **{f"refine.{k}": v for k, v in record["train"].items() if k != "val_history_deg"},
            }
        )
        if budget.get("digest"):
            run.set_tags({"subset.digest": budget["digest"], "protocol": protocol.get("name")})
        log_finite(run, split_metrics(record, ev.split))
        record["run_id"], record["run_name"] = run.run_id, run_name
        write_json(args.out, record)
    m = record["metrics"]
    shown = [k for k in m if k.startswith(("mean_angular", "median_angular"))]
    print(f"{run_name} on {record['n_events']} {ev.split} events: " + ", ".join(f"{k} {m[k]:.1f}" for k in shown))
    return 0
