"""Self-supervised pretraining: one loop for every objective, on CPU, one GPU or many (torchrun).

:func:`pretrain` fits the input normalisation on the train split, builds the backbone and the
objective's heads (:func:`build_run`), and trains with the shared runtime (:mod:`physfm.runtime`):
AdamW (decoupled weight decay on matrices only), linear warm-up then cosine decay, gradient
clipping, bf16 autocast on CUDA (fp32 on CPU), and the objective's ``after_step`` hook after every
optimizer step (DINO's EMA teacher update and collapse check; a no-op for the others). It validates
every ``val_every`` steps, logs to MLflow every ``log_every`` steps, checkpoints every
``checkpoint_every`` steps and at the end, and resumes automatically from a checkpoint written
with the same configuration, data and tokenizer: the resumed run ends with exactly the weights and
metrics of an uninterrupted one. SIGTERM / SIGUSR1 (SLURM preemption, ``--signal``) make it write a
checkpoint at the next step and raise :class:`~physfm.runtime.Preempted`; the CLI exits
with :data:`~physfm.runtime.PREEMPTED_EXIT_CODE` (75).

Under ``torchrun --nproc_per_node N`` it runs DistributedDataParallel (NCCL on GPU, gloo on CPU);
``batch_size`` is the global batch, split evenly over ranks, and each rank reads its own shards.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from physfm.data.dataset import Dataset, open_dataset
from physfm.io import atomic_dir, sha256_json, write_json
from physfm.models.backbone import Backbone, BackboneConfig
from physfm.models.objectives import OBJECTIVES, Objective
from physfm.pretrain.checkpoints import copy_checkpoint, save_backbone
from physfm.pretrain.config import (  # noqa: F401  (re-exported: callers import them from here)
    DEFAULT_MODEL,
    WORKFLOW_KEYS,
    PretrainConfig,
    backbone_slice,
    build_backbone_config,
    default_objective_options,
    resolve_config,
)
from physfm.pretrain.data import (
    PretrainShards,
    batch_stream,
    feature_dropout_meta,
    fit_stats,
    raw_feature_names,
)
from physfm.pretrain.plots import plot_history
from physfm.pretrain.trainer import Pretrainer, evaluate, to_device
from physfm.runtime import (
    RESUME_MODES,
    Checkpointer,
    Preempted,
    Runtime,
    StopSignals,
    Window,
    adamw,
    autocast,
    cosine_schedule,
    decay_groups,
    due,
    optimizer_step,
    progress_bar,
    start,
)

WHO = "physfm pretrain"


@dataclass
class RunParts:
    """What a run is built from, identical on every rank (same seed, same data): see :func:`build_run`."""

    manifest: dict[str, Any]
    tokenizer: Any
    features: list[str]
    backbone: Backbone
    objective: Objective
    raw_features: list[str]
    stats: dict[str, Any]
    config_hash: str
    dataset: Dataset

    @property
    def codebook_size(self) -> int:
        return self.tokenizer.codebook_size if self.tokenizer is not None else 0

    @property
    def bcfg(self) -> BackboneConfig:
        return self.backbone.config


def build_run(
    cfg: PretrainConfig, data_dir: Dataset | str | Path, tokenizer_dir: str | Path | None, main: bool = True
) -> RunParts:
    """Open the data (verified) and tokenizer, build the backbone and objective, fit the normalisation."""
    ds = open_dataset(data_dir, verify=True)  # every rank: shards that changed since convert are refused
    manifest = ds.manifest
    obj_cls = OBJECTIVES[cfg.objective]
    obj_opts = cfg.objectives.get(cfg.objective, {})
    tok = None
    if obj_cls.needs_tokenizer or tokenizer_dir:
        if tokenizer_dir is None:
            raise ValueError(f"objective '{cfg.objective}' predicts tokenizer codes: pass --tokenizer DIR")
        from physfm.tokenizers import load_tokenizer

        tok = load_tokenizer(tokenizer_dir)
        if tok.data_version not in ("", manifest["data_version"]) and main:
            print(
                f"{WHO}: warning: tokenizer {tokenizer_dir} was fitted on data_version "
                f"{tok.data_version}, training data is {manifest['data_version']}",
                file=sys.stderr,
            )
    K = tok.codebook_size if tok is not None else 0
    features = obj_cls.input_features(obj_opts, list(cfg.features), tok)
    torch.manual_seed(cfg.seed)
    bcfg = build_backbone_config(cfg, len(features), K)
    backbone = Backbone(bcfg)
    objective = obj_cls(
        bcfg.d_model,
        obj_opts,
        codebook_size=K,
        n_features=len(features),
        features=features,
        global_names=cfg.global_targets if cfg.global_weight > 0 else [],
        global_weight=cfg.global_weight,
    )
    raw_names = raw_feature_names(features, tok, objective)
    stats = fit_stats(
        ds,
        features=features,
        raw_features=raw_names,
        global_names=objective.global_names,
        tokenizer=tok,
        max_len=cfg.max_len,
        n_events=cfg.norm_events,
        seed=cfg.seed,
        corpus_events=cfg.corpus_events,
    )
    config_hash = sha256_json(
        {"config": cfg.to_dict(), "data_version": manifest["data_version"], "tokenizer": tok.version if tok else None}
    )[:16]
    return RunParts(manifest, tok, features, backbone, objective, raw_names, stats, config_hash, ds)


def make_datasets(cfg: PretrainConfig, parts: RunParts, rt: Runtime) -> tuple[PretrainShards, PretrainShards]:
    """This rank's train (shuffled, full batches) and validation streams; ``batch_size`` is global."""
    world = rt.info.world_size
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
    common = dict(
        stats=parts.stats,
        raw_features=parts.raw_features,
        objective=parts.objective,
        tokenizer=parts.tokenizer,
        max_len=cfg.max_len,
        batch_size=cfg.batch_size // world,
        seed=cfg.seed,
        rank=rt.info.rank,
        world_size=world,
        quantized_inputs=bool(cfg.objectives.get(cfg.objective, {}).get("quantized_inputs", False)),
    )
    return (
        PretrainShards(
            parts.dataset,
            "train",
            shuffle=True,
            drop_last=True,
            feature_dropout=cfg.feature_dropout,
            max_events=cfg.corpus_events,
            **common,
        ),
        PretrainShards(parts.dataset, "val", shuffle=False, drop_last=False, **common),
    )


def make_optimizer(module: torch.nn.Module, cfg: PretrainConfig, fused: bool = False) -> torch.optim.AdamW:
    """The run's AdamW: weight decay on Linear weight matrices only (:func:`physfm.runtime.decay_groups`)."""
    return adamw(decay_groups(module, cfg.weight_decay), cfg.lr, cfg.betas, fused=fused)


def backbone_meta(cfg: PretrainConfig, parts: RunParts) -> dict[str, Any]:
    """``backbone.json``'s provenance: features, normalisation, data/tokenizer versions, settings."""
    tok = parts.tokenizer
    return {
        "features": parts.features,
        "norm": parts.stats["norm"],
        "max_len": cfg.max_len,
        "data_version": parts.manifest["data_version"],
        "tokenizer_version": tok.version if tok is not None else None,
        "tokenizer_method": tok.method if tok is not None else None,
        "codebook_size": parts.codebook_size,
        "objective": cfg.objective,
        "objective_options": parts.objective.options.to_dict(),
        "global_targets": parts.stats["global"],
        "modality": parts.manifest.get("modality"),
        "pretrain": cfg.to_dict(),
        "config_hash": parts.config_hash,
        "feature_dropout": feature_dropout_meta(cfg.feature_dropout, parts.features),
        "corpus_events": parts.stats["corpus_events"],  # unlabelled train events pretraining read
    }


def pretrain(
    cfg: PretrainConfig,
    data_dir: Dataset | str | Path,
    tokenizer_dir: str | Path | None,
    out_dir: str | Path,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: str = "auto",
    device: str | None = None,
    progress: bool = True,
    run: Any = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Pretrain a backbone and write it to ``out_dir``; return the final metrics.

    resume: ``auto`` (continue from a matching checkpoint when there is one), ``require`` (error if
    there is none) or ``never`` (start over). ``run``: an open :class:`physfm.tracking.StageRun`.
    ``on_step(step)`` is called after every optimizer step (tests use it to send signals).
    """
    # ---- set-up
    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {', '.join(RESUME_MODES)}, got '{resume}'")
    rt = start(device)
    out_dir = Path(out_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out_dir / "checkpoints"
    parts = build_run(cfg, data_dir, tokenizer_dir, main=rt.main)
    backbone, objective = parts.backbone, parts.objective
    trainer = Pretrainer(backbone, objective).to(rt.device)
    optimizer = make_optimizer(trainer, cfg, fused=rt.cuda)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    state = {"backbone": backbone, "objective": objective, "optimizer": optimizer, "scheduler": scheduler}
    ckpt = Checkpointer(ckpt_dir, parts.config_hash, rt, state, who=WHO)
    restored = ckpt.restore(resume)
    if restored is None:
        torch.manual_seed(cfg.seed + 1000 * rt.info.rank)
    step = restored.step if restored else 0
    history: list[dict[str, float]] = list(restored.extra.get("history", [])) if restored else []
    epoch, pos = restored.position if restored else (0, 0)
    model = rt.wrap(trainer, compile=cfg.compile)
    train_ds, val_ds = make_datasets(cfg, parts, rt)
    if run is not None and rt.main:
        _log_start(run, rt, parts, cfg)

    def validate(at: int) -> dict[str, float]:
        val = evaluate(trainer, val_ds, rt, cfg.num_workers, cfg.val_batches)
        history.append({"step": at, **val})
        if run is not None and rt.main:
            run.log_metrics(val, step=at)
        return val

    def checkpoint(at: int, position: tuple[int, int]) -> Path:
        return ckpt.save(at, position, {"history": history}, mlflow_run_id=getattr(run, "run_id", None))

    # ---- the loop
    stream = batch_stream(train_ds, cfg.num_workers, epoch, pos, pin=rt.cuda)
    last_val = history[-1] if history else {}
    if step == 0 and not history:
        last_val = validate(0)
    flops_per_event = backbone.flops_per_token(cfg.max_len) * (cfg.max_len + parts.bcfg.n_cls)
    window, tokens_seen, start_step, t_start = Window(rt), 0, step, time.perf_counter()
    bar = progress_bar(cfg.steps, step, desc=f"pretrain {cfg.objective}", show=progress and rt.main)
    model.train()
    with StopSignals(WHO) as stop:
        while step < cfg.steps:
            epoch, pos, batch = next(stream)
            with autocast(rt.device):
                loss, st = model(to_device(batch, rt.device))
            step += 1
            gnorm = optimizer_step(
                loss,
                optimizer,
                scheduler,
                trainer.parameters(),
                cfg.grad_clip,
                step=step,
                total_steps=cfg.steps,
                after_step=[objective.after_step],  # EMA teacher, collapse check; no-op elsewhere
            )
            n_real = int(batch["mask"].sum())
            window.add(st, events=int(batch["mask"].shape[0]), tokens=n_real)
            tokens_seen += n_real
            bar.update(1)
            if on_step is not None:
                on_step(step)
            if due(step, cfg.log_every, cfg.steps):
                m = window.report("train/")
                m.update(lr=scheduler.get_last_lr()[0], grad_norm=float(gnorm), epoch=epoch)
                m["tflops"] = flops_per_event * m["events_per_second"] / 1e12
                if run is not None and rt.main:
                    run.log_metrics(m, step=step)
                bar.set_postfix(loss=f"{m.get('train/loss', float('nan')):.3f}", refresh=False)
            if due(step, cfg.val_every, cfg.steps):
                last_val = validate(step)
                if rt.main:
                    shown = ", ".join(f"{k[4:]} {v:.4f}" for k, v in last_val.items() if k.startswith("val/loss"))
                    bar.write(f"step {step}/{cfg.steps}: validation {shown}", file=sys.stderr)
            if due(step, cfg.checkpoint_every, cfg.steps):
                checkpoint(step, (epoch, pos))
            if stop.requested(rt, sync=step % cfg.log_every == 0) and step < cfg.steps:
                path = checkpoint(step, (epoch, pos))
                bar.close()
                raise Preempted(stop.reason, step, path)
    bar.close()

    # ---- output
    log_k = math.log(parts.codebook_size) if parts.codebook_size else None
    baseline = {"log_K": log_k, "unigram_entropy": parts.stats.get("unigram_entropy")}
    summary = {
        "objective": cfg.objective,
        "steps": cfg.steps,
        "resumed_from": start_step,
        "n_params": backbone.n_params(),
        "train_seconds_this_process": time.perf_counter() - t_start,
        "tokens_this_process": tokens_seen * rt.info.world_size,
        "world_size": rt.info.world_size,
        "device": str(rt.device),
        **baseline,
        **last_val,
    }
    if log_k and "val/loss_token" in last_val:
        summary["val_loss_token_over_log_K"] = last_val["val/loss_token"] / log_k
    if rt.main:
        summary["backbone_version"] = _export(cfg, parts, out_dir, ckpt_dir, tokenizer_dir, history, summary)
        if run is not None:
            run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
            run.set_tags({"backbone_version": summary["backbone_version"]})
            run.log_artifact(out_dir / "loss.png", artifact_path="plots")
    rt.barrier()
    return summary


def _log_start(run: Any, rt: Runtime, parts: RunParts, cfg: PretrainConfig) -> None:
    tok = parts.tokenizer
    run.set_tags(
        {
            "n_params": parts.backbone.n_params(),
            "world_size": rt.info.world_size,
            "device": str(rt.device),
            "data_version.in": parts.manifest["data_version"],
            "tokenizer_version": tok.version if tok is not None else None,
            "objective": cfg.objective,
        }
    )
    run.log_dataset(parts.dataset.path, parts.manifest, context="input")


def _export(
    cfg: PretrainConfig,
    parts: RunParts,
    out_dir: Path,
    ckpt_dir: Path,
    tokenizer_dir: str | Path | None,
    history: list[dict[str, float]],
    summary: dict[str, Any],
) -> str:
    """Write the backbone directory (atomically: a SIGKILL leaves none or the previous one); its version."""
    baseline = {k: summary.get(k) for k in ("log_K", "unigram_entropy")}
    with atomic_dir(out_dir) as tmp:
        if parts.tokenizer is not None and tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        write_json(tmp / "history.json", history)
        write_json(tmp / "metrics.json", summary)
        plot_history(history, baseline, tmp / "loss.png", title=f"{cfg.objective} pretraining")
        inside = ckpt_dir.resolve().is_relative_to(out_dir.resolve())  # OUT/checkpoints (the default) stays
        rel_ckpt = ckpt_dir.resolve().relative_to(out_dir.resolve()).as_posix() if inside else None
        exported = parts.objective.export_backbone(parts.backbone)  # e.g. DINO's EMA teacher
        artifact = save_backbone(
            exported,
            backbone_meta(cfg, parts),
            tmp,
            heads=parts.objective,
            excluded=(rel_ckpt,) if rel_ckpt else (),
        )
        if rel_ckpt is not None:
            copy_checkpoint(ckpt_dir, tmp / rel_ckpt)
    return artifact.version
