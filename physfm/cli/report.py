"""The ``report`` subcommand: the study's HTML report, logged to its MLflow parent run."""

from __future__ import annotations

import argparse
from pathlib import Path

from physfm.cli.common import add_config_arg, add_parent_args, parent_run_id, stage_config


def _named(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        out[name] = Path(path)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add this family's subcommands to ``physfm``."""
    # ---------------------------------------------------------------- report
    p = sub.add_parser(
        "report",
        help="the study's HTML report: data-efficiency plot, ROC, table, label-efficiency factor",
        description="Render one self-contained HTML page from the evaluation JSONs (and, when given, the "
        "data summary, tokenizer and pretraining outputs and k-NN results), write the figures as PNG and every "
        "number to report.json, log them to the study's MLflow parent run and close it.",
    )
    p.add_argument(
        "--results", nargs="*", default=[], type=Path, help="evaluation JSONs (physfm evaluate) of the corpus's grid"
    )
    p.add_argument(
        "--downstream",
        action="append",
        nargs="+",
        default=[],
        metavar="NAME FILE",
        help="a downstream set's name and its evaluation JSONs (its grid, baselines and their scores on other sets, "
        "`tested_on`): one report section per set (repeat)",
    )
    p.add_argument(
        "--downstream-metric", action="append", default=[], metavar="NAME=METRIC", help="a downstream set's metric"
    )
    p.add_argument("--out", required=True, type=Path, help="output HTML file")
    p.add_argument("--figures", type=Path, help="directory for the PNG figures (default: beside the HTML)")
    add_config_arg(p, "evaluate.report plus evaluate.metric (metric, title, bootstrap)")
    p.add_argument("--summary", type=Path, help="data summary directory (physfm summarize)")
    p.add_argument("--tokenizer", action="append", default=[], metavar="NAME=DIR", help="tokenizer dir (repeat)")
    p.add_argument("--pretrain", action="append", default=[], metavar="NAME=DIR", help="backbone dir (repeat)")
    p.add_argument("--knn", nargs="*", default=[], type=Path, help="k-NN JSONs (physfm search --queries)")
    p.add_argument(
        "--sample", action="append", default=[], metavar="NAME=DIR", help="physfm sample output of a backbone (repeat)"
    )
    p.add_argument("--subsets", type=Path, help="subsets directory, logged with the report")
    p.add_argument(
        "--ablation-backbone", action="append", default=[], metavar="NAME", help="a backbone that is an ablation"
    )
    p.add_argument(
        "--scaling-backbone",
        action="append",
        default=[],
        metavar="NAME",
        help="a backbone of the corpus-scaling curve (repeat; the full-corpus one too); its corpus size is read "
        "from its --pretrain directory's backbone.json",
    )
    p.add_argument("--study-info", action="append", default=[], metavar="KEY=VALUE", help="extra study facts")
    add_parent_args(p)
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    import math

    from physfm import tracking
    from physfm.evaluate.report import ReportConfig, build_report
    from physfm.io import read_json

    cfg = stage_config(ReportConfig, args.config)
    results = [read_json(p) for p in args.results]
    downstream = {group[0]: [read_json(Path(p)) for p in group[1:]] for group in args.downstream}
    ds_metrics = dict(kv.split("=", 1) for kv in args.downstream_metric)
    knn = [read_json(p) for p in args.knn]
    study = dict(kv.split("=", 1) for kv in args.study_info if "=" in kv)
    protocol: dict = {}
    if args.subsets:  # the label-budget protocol every run of the study followed
        from physfm.artifacts import open_artifact

        protocol = open_artifact(args.subsets, "subsets").info.get("protocol") or {}
        study["label budget protocol"] = ", ".join(f"{k}={v}" for k, v in protocol.items() if k != "rule")
        study["label budget rule"] = protocol.get("rule", "")
    data = build_report(
        args.out,
        results,
        figures_dir=args.figures,
        title=cfg.title,
        metric=cfg.metric,
        study=study,
        data_summary=args.summary,
        tokenizers=_named(args.tokenizer),
        pretrain=_named(args.pretrain),
        knn=knn,
        n_bootstrap=cfg.bootstrap,
        interval=cfg.interval,
        curve=cfg.curve,
        mlflow_runs=tracking.runs_view_url(),
        pool_backbones=cfg.pool_backbones,
        ablation_backbones=args.ablation_backbone,
        scaling_backbones=args.scaling_backbone,
        samples=_named(args.sample),
        downstream=downstream,
        downstream_metrics=ds_metrics,
    )
    parent = parent_run_id(args)
    with tracking.resume_run(parent) as run:
        metrics: dict[str, float] = {}
        for e in data["efficiency"]:
            key = f"label_efficiency_{e['mode']}_n{int(e['n'])}" + ("" if e["backbone"] == "-" else f"_{e['backbone']}")
            metrics[key] = e["factor"]
        factor_rows = [("", e) for e in data["best_method"]]
        for ds_name, section in data["downstream"].items():  # downstream.<set>.<test set>.factor_vs_...
            for on, group in section["tested_on"].items():
                factor_rows += [(f"downstream.{ds_name}.{on}.", e) for e in group["best_method"]]
        for prefix, e in factor_rows:
            name = f"{prefix}factor_vs_{e['against']}_{e['metric_name']}_{e['mode'].replace(' ', '_')}_n{int(e['n'])}"
            metrics[name] = e["factor"]
            metrics[name + "_low"], metrics[name + "_high"] = e["low"], e["high"]
        for k in data["knn"]:
            metrics[f"knn_accuracy_{k['name'].replace(' ', '_')}"] = k["accuracy"]
        for c in data["cells"]:
            key = f"{c['mode']}_n{c['n_labels']}" + ("" if c["backbone"] == "-" else f"_{c['backbone']}")
            metrics[f"mean_{data['metric']}_{key}"] = c[data["metric"]]
        run.log_metrics({k: v for k, v in metrics.items() if v is not None and math.isfinite(v)})
        if protocol:  # the budget protocol's name and parameters on the study's parent run
            run.log_params({f"protocol.{k}": v for k, v in protocol.items()})
        run.log_artifact(args.out, artifact_path="report")
        run.log_artifact(args.out.with_name(args.out.stem + ".json"), artifact_path="report")
        for fig in data["figures"].values():
            run.log_artifact(fig, artifact_path="report/figures")
        if args.subsets:
            run.log_artifact(Path(args.subsets) / "manifest.json", artifact_path="subsets")
    tracking.end_run(parent)
    for line in data["headline"]:
        print(line)
    print(f"report -> {args.out}")
    return 0
