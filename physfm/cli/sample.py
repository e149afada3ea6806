"""The ``sample`` subcommand: jets sampled from a next-token or flow backbone, compared with real jets."""

from __future__ import annotations

import argparse
from pathlib import Path

from physfm.cli.common import add_config_arg, add_tracking_args, open_stage_run, print_json, stage_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample jets from a next-token or flow backbone and compare them with real ones",
        description="Sample N events autoregressively from a backbone pretrained with the next_token objective, "
        "decode the codes to particles with its tokenizer and write OUT/generated.npz. With --data, compare "
        "jet mass, jet pT and multiplicity with the real jets of the split (histograms in OUT/generation.png, "
        "Wasserstein distances in OUT/comparison.json, next to those of the tokenized real jets). A flow backbone "
        "(objective flow) generates jets with the multiplicity and globals of the first N real jets of the split "
        "(--data required) by integrating its ODE (ode_steps, ode_solver) and is compared with those jets. "
        "Example: physfm sample --model results/default/pretrain/gpt --out gen --config '{\"n\": 500}'",
    )
    p.add_argument("--model", required=True, type=Path, help="backbone directory (from `physfm pretrain`)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--data", type=Path, help="dataset to compare with (optional)")
    add_config_arg(p, "pretrain.sample")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true")
    add_tracking_args(p)
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    import torch

    from physfm.evaluate.sample import SampleConfig, sample_from_model
    from physfm.stage import to_dict

    cfg = stage_config(SampleConfig, args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = {**to_dict(cfg), "model": str(args.model)}
    with open_stage_run(args, "sample", "sample from model", params) as run:
        summary = sample_from_model(
            cfg, args.model, args.out, data_dir=args.data, device=args.device, progress=not args.no_progress
        )
        if summary.get("tokenizer_version"):
            run.set_tags({"tokenizer_version": summary["tokenizer_version"]})
        metrics = {k: summary[k] for k in ("mean_multiplicity", "codes_used") if k in summary}
        for obs, row in summary.get("observables", {}).items():
            metrics.update({f"{obs}.{k}": v for k, v in row.items()})
        run.log_metrics(metrics)
        run.log_artifact(args.out / "comparison.json")
        if (args.out / "generation.png").is_file():
            run.log_artifact(args.out / "generation.png", artifact_path="plots")
    print_json(summary)
    return 0
