"""``physfm cwola-prepare``, ``cwola-evaluate``, ``cwola-report``: weakly supervised anomaly detection
(docs/anomaly.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from physfm.cli.common import add_config_arg, print_json, stage_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cwola-prepare", help="the CWoLa set of one S/B and seed from a dijet dataset")
    p.add_argument("--data", type=Path, required=True, help="converted dijet dataset (processes dijet, resonance)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--s-over-b", type=float, required=True, help="injected signal / background in the signal region")
    p.add_argument("--seed", type=int, required=True, help="seed of the injected signal events")
    add_config_arg(p, "anomaly")
    p.set_defaults(func=run_prepare)
    e = sub.add_parser("cwola-evaluate", help="SIC of a CWoLa classifier on its truth-labelled evaluation set")
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--data", type=Path, required=True, help="the CWoLa set the model was trained on")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--threads", type=int, default=1)
    e.set_defaults(func=run_evaluate)
    r = sub.add_parser("cwola-report", help="SIC against S/B for scratch and pretrained: plot, table, HTML")
    r.add_argument("--results", type=Path, nargs="+", required=True, help="cwola-evaluate records")
    r.add_argument("--out", type=Path, required=True, help="report HTML")
    r.add_argument("--title", default="physfm weakly supervised anomaly detection (CWoLa)")
    r.set_defaults(func=run_report)


def run_prepare(args: argparse.Namespace) -> int:
    from physfm.finetune.cwola import CwolaConfig, prepare_cwola

    manifest = prepare_cwola(args.data, args.out, args.s_over_b, args.seed, stage_config(CwolaConfig, args.config))
    print_json({k: v for k, v in manifest["cwola"].items() if not k.endswith("_ids")})
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from physfm.evaluate.anomaly import evaluate_cwola
    from physfm.io import write_json

    record = evaluate_cwola(args.model, args.data, args.threads)
    write_json(args.out, record)
    print_json(record["metrics"])
    return 0


def run_report(args: argparse.Namespace) -> int:
    from physfm.evaluate.report import anomaly_report
    from physfm.io import read_json

    anomaly_report([read_json(p) for p in args.results], args.out, args.title)
    print(f"wrote {args.out}")
    return 0
