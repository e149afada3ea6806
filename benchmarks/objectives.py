"""CPU (or GPU) cost of a pretraining step per objective, interleaved, as a ratio to MPM in the same run.

On shared cores the load changes from minute to minute, so separate runs of benchmarks/train.py do not
compare objectives fairly. This script builds every variant once (same data, same backbone size),
then times their training steps round-robin (one step of each variant per round), so each variant sees
the same load; it prints the median seconds per step, the ratio to the reference variant (the first),
and the FLOPs per jet of one step counted by torch's FlopCounterMode (forward + backward, every head,
decoder, teacher or EMA forward and kNN edge MLP included).

    python benchmarks/objectives.py --data DATA --tokenizer TOK/kmeans-512 --threads 1
    python benchmarks/objectives.py --data DATA --tokenizer TOK --variant mpm --variant 'mpm2:model.local=knn'

A variant is ``objective[:key=value,key=value]`` with pretrain settings as in ``physfm pretrain --set``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch
from harness import add_machine_args, counted_flops, parse_args, round_robin, write_json

from physfm.models import OBJECTIVES
from physfm.pretrain.config import resolve_config
from physfm.pretrain.data import make_loader
from physfm.pretrain.train import build_run, make_datasets
from physfm.pretrain.trainer import Pretrainer
from physfm.runtime import Runtime, adamw, autocast, decay_groups, optimizer_step, start

SIZES = {
    "cpu": {"model": {"d_model": 128, "n_layers": 4, "n_heads": 8}, "max_len": 64, "batch_size": 64},
    "gpu": {"model": {"d_model": 512, "n_layers": 8, "n_heads": 8}, "max_len": 128, "batch_size": 256},
}
DEFAULT_VARIANTS = ["mpm", "mpm:model.local=knn", "mpm2", "mpm2:model.local=knn", "flow", "flow:model.local=knn"]


def build(variant: str, size: dict[str, Any], data: Path, tokenizer: Path | None, rt: Runtime) -> dict[str, Any]:
    """Trainer, optimizer and four batches of one variant, built as the pretraining loop builds them."""
    objective_name, _, sets = variant.partition(":")
    overrides = [s for s in sets.split(",") if s]
    cfg = resolve_config({**size, "objective": objective_name, "norm_events": 2000, "seed": 0}, overrides=overrides)
    needs = OBJECTIVES[cfg.objective].needs_tokenizer
    if needs and tokenizer is None:
        raise SystemExit(f"variant {variant} predicts tokenizer codes: pass --tokenizer DIR")
    parts = build_run(cfg, data, tokenizer if needs else None)
    ds, _ = make_datasets(cfg, parts, rt)
    ds.set_epoch(0)
    dev = rt.device
    batches = [{k: v.to(dev) for k, v in b.items()} for b, _ in zip(make_loader(ds, 0), range(4), strict=False)]
    trainer = Pretrainer(parts.backbone, parts.objective).to(dev)
    bcfg = parts.bcfg
    return {
        "trainer": trainer,
        "objective": parts.objective,
        "opt": adamw(decay_groups(trainer, cfg.weight_decay), cfg.lr, cfg.betas, fused=dev.type == "cuda"),
        "batches": batches,
        "n_params": parts.backbone.n_params(),
        "n_params_total": sum(p.numel() for p in trainer.parameters() if p.requires_grad),
        "estimate": parts.backbone.flops_per_token(cfg.max_len) * (cfg.max_len + bcfg.n_cls),
    }


def step(v: dict[str, Any], i: int, dev: torch.device) -> None:
    """One training step as the loop takes it (backward, clip, AdamW, the objective's after-step hook)."""
    with autocast(dev):
        loss, _ = v["trainer"](v["batches"][i % len(v["batches"])])
    optimizer_step(
        loss,
        v["opt"],
        None,
        v["trainer"].parameters(),
        1.0,
        step=i + 1,
        total_steps=10**6,
        after_step=[v["objective"].after_step],
    )


def counted_flops_per_jet(v: dict[str, Any]) -> float:
    batch = v["batches"][0]
    return counted_flops(lambda: v["trainer"](batch)[0], len(batch["mask"]), v["trainer"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--tokenizer", type=Path, help="tokenizer for the objectives that predict codes (mpm, mpm2)")
    ap.add_argument("--variant", action="append", help=f"objective[:k=v,...] (default: {DEFAULT_VARIANTS})")
    ap.add_argument("--size", default="cpu", choices=sorted(SIZES))
    ap.add_argument("--rounds", type=int, default=8, help="timed rounds (one step of every variant each)")
    ap.add_argument("--batch-size", type=int, help="override the size's batch")
    ap.add_argument("--flops-only", action="store_true", help="count FLOPs per jet only (--size gpu on CPU)")
    add_machine_args(ap)
    args = parse_args(ap)
    rt = start(args.device)
    dev = rt.device
    names = args.variant or DEFAULT_VARIANTS
    size = {**SIZES[args.size], **({"batch_size": args.batch_size} if args.batch_size else {})}
    variants = {n: build(n, size, args.data, args.tokenizer, rt) for n in names}
    for v in variants.values():
        v["flops"] = counted_flops_per_jet(v)
        for i in range(0 if args.flops_only else 2):  # warm-up
            step(v, i, dev)
    steps = {n: (lambda r, v=v: step(v, r + 2, dev)) for n, v in variants.items()}
    times = {n: [float("nan")] for n in names} if args.flops_only else round_robin(steps, range(args.rounds), dev)
    ref = statistics.median(times[names[0]])
    out: dict[str, Any] = {"device": str(dev), "threads": torch.get_num_threads(), "size": size, "variants": {}}
    print(f"{'variant':28s} {'s/step':>8s} {'ratio':>6s} {'GFLOP/jet':>10s} {'estimate':>9s} {'params':>9s}")
    for n, v in variants.items():
        med = statistics.median(times[n])
        row = {
            "seconds_per_step_median": med,
            "seconds_per_step_all": times[n],
            f"ratio_to_{names[0]}": med / ref,
            "gflops_per_jet_counted": v["flops"] / 1e9,
            "gflops_per_jet_backbone_estimate": v["estimate"] / 1e9,
            "backbone_params": v["n_params"],
            "trained_params": v["n_params_total"],
        }
        out["variants"][n] = row
        print(
            f"{n:28s} {med:8.3f} {med / ref:6.2f} {v['flops'] / 1e9:10.3f} {v['estimate'] / 1e9:9.3f} "
            f"{v['n_params_total']:9d}"
        )
    write_json(args.json, out)


if __name__ == "__main__":
    main()
