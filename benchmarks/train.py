"""Pretraining throughput: loader jets/s vs model jets/s, training tokens/s and model FLOPs utilisation.

Three numbers, all measured in the same run on the same machine:

1. **Loader**: jets/s that the pretraining input pipeline delivers (shard read, features, normalisation,
   tokenizer encoding, masking) with 0..N DataLoader worker processes.
2. **Model**: jets/s that a training step consumes (forward, backward, AdamW) on batches already on
   the device. Ratio loader / model >= 1 means the loader is never the bottleneck.
3. **MFU**: achieved model FLOP/s (6 N + 12 L d T per token, PaLM / nanoGPT estimate, on the padded
   sequence) divided by the peak FLOP/s of a large matrix product measured in the same run (fp32 on
   CPU, bf16 on GPU; on GPU also against the 790 TFLOP/s H100 bf16 reference). Also the FLOPs per jet
   counted by torch's FlopCounterMode over one whole step of the objective (heads, MAE decoder, kNN
   edge MLPs included, which the backbone estimate misses), and the MFU on those.

    python benchmarks/train.py --data results/default/data --tokenizer results/default/tokenizers/kmeans-512
    python benchmarks/train.py --data DIR --tokenizer DIR --size gpu --device cuda   # 8 x 512, bf16
    python benchmarks/train.py --data DIR --objective contrastive                     # views, no tokenizer
    python benchmarks/train.py --data DIR --objective dino --set 'objectives.dino.global_views=[full,kt16]' \
        --set 'objectives.dino.local_views=[kt2,kt4,kt8]'                             # RINO's kT views
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from harness import add_machine_args, counted_flops, parse_args, sync, write_json

from physfm.data.shards import load_manifest
from physfm.data.views import view_length
from physfm.models import OBJECTIVES, Backbone
from physfm.pretrain.config import resolve_config
from physfm.pretrain.data import make_loader
from physfm.pretrain.train import build_run, make_datasets, make_optimizer
from physfm.pretrain.trainer import Pretrainer
from physfm.runtime import autocast, optimizer_step, start

SIZES = {
    "cpu": {"model": {"d_model": 128, "n_layers": 4, "n_heads": 8}, "max_len": 64, "batch_size": 64},
    "gpu": {"model": {"d_model": 512, "n_layers": 8, "n_heads": 8}, "max_len": 128, "batch_size": 256},
}
H100_BF16_PEAK = 790e12


def peak_flops(device: torch.device, seconds: float = 3.0) -> float:
    """FLOP/s of a large square matrix product (bf16 on GPU, fp32 on CPU)."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10 if device.type == "cuda" else 1):
            a @ b
            reps += 1
        sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="converted dataset")
    ap.add_argument("--tokenizer", type=Path, help="fitted tokenizer directory (objectives that predict codes)")
    ap.add_argument("--objective", default="mpm", choices=sorted(OBJECTIVES))
    ap.add_argument("--size", default="cpu", choices=sorted(SIZES), help="cpu: 4 x 128; gpu: 8 x 512")
    ap.add_argument("--batch-size", type=int, help="override the size's batch")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="pretrain setting, as in pretrain")
    ap.add_argument("--workers", default="0,1,2", help="loader worker counts to measure")
    ap.add_argument("--loader-batches", type=int, default=30)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    ap.add_argument("--loader-only", action="store_true", help="measure only the loader (e.g. the gpu size on a CPU)")
    add_machine_args(ap, device="auto")
    args = parse_args(ap)

    rt = start(args.device)  # the loop's set-up: device, data, tokenizer, model, normalisation, loader
    dev = rt.device
    size = dict(SIZES[args.size])
    if args.batch_size:
        size["batch_size"] = args.batch_size
    cfg = resolve_config({**size, "objective": args.objective, "norm_events": 5000, "seed": 0}, overrides=args.set)
    if args.tokenizer is None and OBJECTIVES[cfg.objective].needs_tokenizer:
        ap.error(f"--objective {cfg.objective} predicts tokenizer codes: pass --tokenizer DIR")
    parts = build_run(cfg, args.data, args.tokenizer)
    tok, objective, bcfg, opts = parts.tokenizer, parts.objective, parts.bcfg, cfg.objectives.get(cfg.objective, {})
    ds, _ = make_datasets(cfg, parts, rt)
    result: dict = {
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "threads": torch.get_num_threads(),
        "size": args.size,
        "config": {**cfg.model, "max_len": cfg.max_len, "batch_size": cfg.batch_size, "objective": cfg.objective},
        "objective_options": opts,
        "data_version": load_manifest(args.data)["data_version"],
        "tokenizer": f"{tok.method}-{tok.codebook_size}" if tok is not None else None,
    }

    # 1. loader
    loader = {}
    for w in [int(v) for v in args.workers.split(",")]:
        n_jets, t0, first = 0, None, None
        for epoch in range(100):
            ds.set_epoch(epoch)
            for i, b in enumerate(make_loader(ds, w)):
                if first is None:  # do not count worker start-up
                    first, t0 = True, time.perf_counter()
                    continue
                n_jets += len(b["mask"])
                if i >= args.loader_batches:
                    break
            if n_jets >= args.loader_batches * cfg.batch_size:
                break
        loader[w] = n_jets / (time.perf_counter() - t0)
        print(f"loader, {w} worker(s): {loader[w]:.0f} jets/s")
    result["loader_jets_per_second"] = loader
    if args.loader_only:
        write_json(args.json, result)
        return

    # 2. model consumption and 3. MFU
    torch.manual_seed(0)
    trainer = Pretrainer(Backbone(bcfg), objective).to(dev)  # a fresh copy, seeded as before
    opt = make_optimizer(trainer, cfg, fused=rt.cuda)
    model = torch.compile(trainer) if args.compile else trainer
    ds.set_epoch(0)
    batches = [{k: v.to(dev) for k, v in b.items()} for b, _ in zip(make_loader(ds, 0), range(4), strict=False)]

    n_step = 0

    def step(b: dict) -> None:
        nonlocal n_step
        with autocast(dev):
            loss, _ = model(b)
        n_step += 1  # the loop's step: backward, clip, AdamW, then the EMA teacher update (after_step)
        optimizer_step(
            loss,
            opt,
            None,
            trainer.parameters(),
            1.0,
            step=n_step,
            total_steps=10**6,
            after_step=[objective.after_step],
        )

    for i in range(3):
        step(batches[i % len(batches)])
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    real_tokens = 0
    for i in range(args.steps):
        b = batches[i % len(batches)]
        step(b)
        real_tokens += sum(int(v.sum()) for k, v in b.items() if k.startswith("mask_v")) or int(b["mask"].sum())
    sync(dev)
    dt = time.perf_counter() - t0
    jets = args.steps * cfg.batch_size / dt
    spec = objective.view_spec()  # objectives over views run the backbone once per view (lengths differ)
    lengths = [view_length(v, cfg.max_len) for v in spec.views] if spec is not None else [cfg.max_len]
    flops_per_jet = sum(trainer.backbone.flops_per_token(n) * (n + bcfg.n_cls) for n in lengths)
    achieved = flops_per_jet * args.steps * cfg.batch_size / dt  # student passes only: a lower bound with a teacher
    # FLOPs of one forward + backward of the whole objective (backbone, heads, decoder, kNN edge MLPs, a
    # teacher's forward) per jet
    counted = counted_flops(lambda: model(batches[0])[0], len(batches[0]["mask"]), model)
    peak = peak_flops(dev)
    result.update(
        {
            "n_params": trainer.backbone.n_params(),
            "model_jets_per_second": jets,
            "seconds_per_step": dt / args.steps,
            "tokens_per_second_padded": sum(n + bcfg.n_cls for n in lengths) * args.steps * cfg.batch_size / dt,
            "tokens_per_second_real": real_tokens / dt,
            "achieved_tflops": achieved / 1e12,
            "measured_peak_tflops": peak / 1e12,
            "mfu_vs_measured_peak": achieved / peak,
            "flops_per_jet_estimate": flops_per_jet,
            "flops_per_jet_counted": counted,
            "mfu_counted_vs_measured_peak": counted * args.steps * cfg.batch_size / dt / peak,
        }
    )
    if dev.type == "cuda":
        result["mfu_vs_h100_790tflops"] = achieved / H100_BF16_PEAK
        result["gpu_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    best = max(loader.values())
    result["loader_over_model"] = best / jets
    print(f"model: {jets:.0f} jets/s ({dt / args.steps * 1e3:.1f} ms/step, batch {cfg.batch_size})")
    print(f"tokens/s: {result['tokens_per_second_padded']:.0f} padded, {result['tokens_per_second_real']:.0f} real")
    print(
        f"achieved {achieved / 1e12:.3f} TFLOP/s; peak (matmul, same run) {peak / 1e12:.3f} TFLOP/s; "
        f"MFU {achieved / peak:.1%}"
    )
    print(
        f"FLOPs per jet (forward + backward): {flops_per_jet / 1e9:.3f} G estimated (backbone 6N + 12LdT), "
        f"{counted / 1e9:.3f} G counted (torch FlopCounterMode: every matmul of the objective, heads included); "
        f"MFU on the counted FLOPs {result['mfu_counted_vs_measured_peak']:.1%}"
    )
    if dev.type == "cuda":
        print(f"MFU vs 790 TFLOP/s H100 bf16: {result['mfu_vs_h100_790tflops']:.1%}")
    print(
        f"loader / model = {result['loader_over_model']:.2f} (best loader {best:.0f} jets/s; >= 1: loader not the "
        "bottleneck)"
    )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
