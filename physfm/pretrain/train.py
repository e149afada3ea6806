"""Self-supervised pretraining: one loop for every objective, on CPU, one GPU or many (torchrun).

:func:`pretrain` fits the input normalisation on the train split, builds the backbone and the
objective's heads, and trains with AdamW (decoupled weight decay on matrices only), linear warm-up
then cosine decay, gradient clipping, bf16 autocast on CUDA (fp32 on CPU). It validates every
``val_every`` steps, logs to MLflow every ``log_every`` steps, checkpoints every
``checkpoint_every`` steps and at the end, and resumes automatically from a checkpoint written
with the same configuration, data and tokenizer: the resumed run ends with exactly the weights and
metrics of an uninterrupted one. SIGTERM / SIGUSR1 (SLURM preemption, ``--signal``) make it write a
checkpoint at the next step and raise :class:`~physfm.pretrain.checkpoints.Preempted`; the CLI exits
with :data:`~physfm.pretrain.checkpoints.PREEMPTED_EXIT_CODE` (75).

Under ``torchrun --nproc_per_node N`` it runs DistributedDataParallel (NCCL on GPU, gloo on CPU);
``batch_size`` is the global batch, split evenly over ranks, and each rank reads its own shards.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from physfm.data.dataset import Dataset, open_dataset
from physfm.features import JET_DEFAULT
from physfm.io import atomic_dir, sha256_json, write_json
from physfm.models.backbone import Backbone, BackboneConfig
from physfm.models.objectives import OBJECTIVES, Objective
from physfm.pretrain.checkpoints import (
    Preempted,
    checkpoint_info,
    copy_checkpoint,
    load_checkpoint,
    save_backbone,
    save_checkpoint,
)
from physfm.pretrain.data import PretrainShards, epoch_batches, fit_stats, make_loader, raw_feature_names
from physfm.runtime import autocast, warmup_cosine

#: Backbone sizes used when the config does not give them (a CPU-sized model).
DEFAULT_MODEL: dict[str, Any] = {
    "d_model": 128,
    "n_layers": 4,
    "n_heads": 8,
    "mlp_ratio": 4.0,
    "dropout": 0.0,
    "n_cls": 1,
    "pos_embedding": "auto",
    "bias": True,
    "local": "none",  # PET's kNN edge block (physfm.models.pet): "none" or "knn"
    "local_k": 10,
    "local_coords": [1, 2],
}

#: Keys of the Snakemake ``pretrain:`` section that are workflow plumbing, not training settings.
WORKFLOW_KEYS = ("backbones", "resources", "sample")


def default_objective_options() -> dict[str, dict[str, Any]]:
    """Every registered objective's options at their defaults."""
    return {name: cls.Options().to_dict() for name, cls in OBJECTIVES.items()}


@dataclass
class PretrainConfig:
    """Every setting of a pretraining run (the ``pretrain:`` config section minus workflow keys)."""

    objective: str = "mpm"
    features: list[str] = field(default_factory=lambda: list(JET_DEFAULT))
    max_len: int = 64
    model: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MODEL))
    objectives: dict[str, dict[str, Any]] = field(default_factory=default_objective_options)
    global_targets: list[str] = field(default_factory=lambda: ["log_mass", "log_multiplicity"])
    global_weight: float = 0.5
    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    grad_clip: float = 1.0
    val_every: int = 100
    val_batches: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    norm_events: int = 20000
    num_workers: int = 0
    seed: int = 0
    compile: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        if unknown := set(d) - known:
            raise ValueError(f"unknown pretrain settings {sorted(unknown)}; known: {sorted(known)}")
        cfg = cls(**d)
        cfg.model = {**DEFAULT_MODEL, **cfg.model}
        defaults = default_objective_options()
        cfg.objectives = {k: {**defaults.get(k, {}), **v} for k, v in {**defaults, **cfg.objectives}.items()}
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective '{self.objective}'; choose from {sorted(OBJECTIVES)}")
        for name, value in (("steps", self.steps), ("batch_size", self.batch_size), ("max_len", self.max_len)):
            if value < 1:
                raise ValueError(f"pretrain {name} must be >= 1, got {value}")
        if unknown := set(self.model) - set(DEFAULT_MODEL):
            raise ValueError(f"unknown pretrain model settings {sorted(unknown)}; known: {sorted(DEFAULT_MODEL)}")
        from physfm.features import GLOBAL_TARGETS

        if unknown := set(self.global_targets) - set(GLOBAL_TARGETS):
            raise ValueError(f"unknown global_targets {sorted(unknown)}; choose from {sorted(GLOBAL_TARGETS)}")


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ValueError(f"cannot set '{key}': '{p}' is not a mapping")
    d[parts[-1]] = value


def resolve_config(
    section: dict[str, Any], backbone: str | None = None, overrides: list[str] | None = None
) -> PretrainConfig:
    """The settings of one run from a ``pretrain:`` section (or a whole study config holding one).

    ``backbone`` picks an entry of ``backbones`` (its ``objective`` and ``set`` overrides apply) when the
    section has them; a section that is already one backbone's slice (:func:`backbone_slice`) is used as is;
    ``overrides`` are ``dotted.key=value`` strings applied last (values parsed as YAML).
    """
    import copy

    section = copy.deepcopy(section.get("pretrain", section) if "pretrain" in section else section)
    backbones = section.get("backbones") or {}
    for k in WORKFLOW_KEYS:
        section.pop(k, None)
    if backbone is not None and backbones:  # a study's section; a backbone slice (no `backbones`) is used as is
        if backbone not in backbones:
            raise ValueError(f"no backbone '{backbone}' in the config; configured: {sorted(backbones) or 'none'}")
        entry = backbones[backbone]
        if "objective" in entry:
            section["objective"] = entry["objective"]
        for key, value in (entry.get("set") or {}).items():
            _set_dotted(section, key, value)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE (e.g. model.d_model=256), got '{item}'")
        key, value = item.split("=", 1)
        _set_dotted(section, key.strip(), _parse_value(value))
    return PretrainConfig.from_dict(section)


def backbone_slice(section: dict[str, Any], backbone: str) -> dict[str, Any]:
    """The settings one backbone's pretraining job uses, from the workflow's ``pretrain:`` section.

    Its entry's ``objective`` and ``set`` overrides applied, only its own objective's options kept
    (a neighbour's mask fraction is not its setting), workflow keys dropped. The Snakemake rule passes
    this as the job's ``--config``, so editing one backbone's options reruns that backbone only.
    """
    import copy

    backbones = section.get("backbones") or {}
    if backbone not in backbones:
        raise ValueError(f"no backbone '{backbone}' in the config; configured: {sorted(backbones) or 'none'}")
    entry = backbones[backbone]
    out = {k: copy.deepcopy(v) for k, v in section.items() if k not in WORKFLOW_KEYS}
    out["objective"] = entry.get("objective", out.get("objective", "mpm"))
    for key, value in (entry.get("set") or {}).items():
        _set_dotted(out, key, copy.deepcopy(value))
    objectives = out.get("objectives") or {}
    out["objectives"] = {out["objective"]: objectives[out["objective"]]} if out["objective"] in objectives else {}
    return out


def build_backbone_config(cfg: PretrainConfig, n_features: int, codebook_size: int) -> BackboneConfig:
    """BackboneConfig for a run: the configured sizes, then what the objective requires."""
    obj = OBJECTIVES[cfg.objective]
    m = {**DEFAULT_MODEL, **cfg.model, "max_len": cfg.max_len, "n_features": n_features}
    m = obj.configure_backbone(m, cfg.objectives.get(cfg.objective, {}), codebook_size)
    if m["pos_embedding"] == "auto":
        m["pos_embedding"] = "masked" if m.get("mask_token") else ("all" if m.get("causal") else "none")
    return BackboneConfig.from_dict(m)


# --------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )


def _init_distributed(info: DistInfo, device: torch.device) -> None:
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def _all_reduce(t: Tensor, op: Any = None) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def _all_gather(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def pick_device(device: str | None, info: DistInfo) -> torch.device:
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no GPU; use --device cpu")
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device(device)


# --------------------------------------------------------------------------- signals
class StopSignals:
    """Records SIGTERM / SIGUSR1 instead of dying, so the loop can checkpoint first."""

    SIGNALS = tuple(s for s in ("SIGTERM", "SIGUSR1") if hasattr(signal, s))

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        print(f"physfm pretrain: {self.received} received; will checkpoint and stop after this step", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# --------------------------------------------------------------------------- the model under training
class Pretrainer(nn.Module):
    """Backbone + objective heads, so that DDP wraps both."""

    def __init__(self, backbone: Backbone, objective: Objective) -> None:
        super().__init__()
        self.backbone, self.objective = backbone, objective
        objective.attach(backbone)  # e.g. the EMA teacher starts as a copy of the backbone

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.objective(self.backbone, batch)


def make_optimizer(module: nn.Module, cfg: PretrainConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on Linear weight matrices only (not biases, norms, embeddings, tokens)."""
    decay = {id(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) in decay], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
    ]
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **kw)


def lr_factor(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at ``steps``."""
    return warmup_cosine(step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)


def _to(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _means(sums: dict[str, Tensor], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": float(v[0] / v[1]) for k, v in sums.items() if float(v[1]) > 0}


def _accumulate(acc: dict[str, Tensor], stats: dict[str, Tensor]) -> None:
    for k, v in stats.items():
        acc[k] = acc[k] + v.detach() if k in acc else v.detach().clone()


@torch.no_grad()
def evaluate(
    trainer: Pretrainer, ds: PretrainShards, device: torch.device, num_workers: int, max_batches: int = 0
) -> dict[str, float]:
    """Mean validation stats over this rank's part of the split, summed exactly over ranks."""
    was_training = trainer.training
    trainer.eval()
    acc: dict[str, Tensor] = {}
    for i, batch in enumerate(make_loader(ds, num_workers)):
        if max_batches and i >= max_batches:
            break
        with autocast(device):
            _, stats = trainer(_to(batch, device))
        _accumulate(acc, stats)
    keys = sorted({k for ks in _all_gather(sorted(acc), DistInfo.from_env()) for k in ks})
    packed = torch.stack([acc[k] if k in acc else torch.zeros(2, device=device) for k in keys]) if keys else None
    if packed is not None:
        _all_reduce(packed)
    trainer.train(was_training)
    return _means(dict(zip(keys, packed, strict=True)), "val/") if packed is not None else {}


def _stream(
    ds: PretrainShards, num_workers: int, epoch: int, skip: int, pin: bool = False
) -> Iterator[tuple[int, int, dict]]:
    """Endless batches from epoch ``epoch``, batch ``skip`` on; yields (epoch, position after, batch)."""
    while True:
        ds.set_epoch(epoch)
        if epoch_batches(ds, num_workers) == 0:
            raise ValueError(
                f"the train split gives this rank no full batch of {ds.batch_size} events; lower batch_size "
                f"or use more data (world size {ds.world_size})"
            )
        for i, batch in enumerate(make_loader(ds, num_workers, skip, pin_memory=pin), start=skip):
            yield epoch, i + 1, batch
        epoch, skip = epoch + 1, 0


# --------------------------------------------------------------------------- the run
def _unwrap(m: nn.Module) -> nn.Module:
    m = getattr(m, "module", m)
    return getattr(m, "_orig_mod", m)


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
    if resume not in ("auto", "require", "never"):
        raise ValueError(f"resume must be auto, require or never, got '{resume}'")
    info = DistInfo.from_env()
    dev = pick_device(device, info)
    _init_distributed(info, dev)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(out_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out_dir / "checkpoints"
    # every rank, once: the one read of manifest.json, and shards that changed since convert refused
    ds = open_dataset(data_dir, verify=True)
    manifest = ds.manifest
    obj_cls = OBJECTIVES[cfg.objective]
    obj_opts = cfg.objectives.get(cfg.objective, {})

    tok = None
    if obj_cls.needs_tokenizer or tokenizer_dir:
        if tokenizer_dir is None:
            raise ValueError(f"objective '{cfg.objective}' predicts tokenizer codes: pass --tokenizer DIR")
        from physfm.tokenizers import load_tokenizer

        tok = load_tokenizer(tokenizer_dir)
        if tok.data_version not in ("", manifest["data_version"]):
            print(
                f"physfm pretrain: warning: tokenizer {tokenizer_dir} was fitted on data_version "
                f"{tok.data_version}, training data is {manifest['data_version']}",
                file=sys.stderr,
            )
    K = tok.codebook_size if tok is not None else 0
    features = obj_cls.input_features(obj_opts, list(cfg.features), tok)

    # ---- model, objective, normalisation (identical on every rank: same seed, same data)
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
    )
    trainer = Pretrainer(backbone, objective).to(dev)
    optimizer = make_optimizer(trainer, cfg, fused=dev.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))

    config_hash = sha256_json(
        {"config": cfg.to_dict(), "data_version": manifest["data_version"], "tokenizer": tok.version if tok else None}
    )[:16]
    start_step, data_state, history = 0, [(0, 0)] * info.world_size, []
    ck = checkpoint_info(ckpt_dir) if resume != "never" else None
    if ck is not None and ck.get("config_hash") != config_hash:
        if info.main:
            print(
                f"physfm pretrain: checkpoint in {ckpt_dir} belongs to a different configuration/data; starting over",
                file=sys.stderr,
            )
        ck = None
    state = load_checkpoint(ckpt_dir, map_location=dev) if ck is not None else None
    if state is not None and state.get("config_hash", config_hash) != config_hash:
        # last.json is written after last.pt: a run of another configuration killed in between
        if info.main:
            print(
                f"physfm pretrain: {ckpt_dir}/last.pt belongs to a different configuration/data; starting over",
                file=sys.stderr,
            )
        ck = state = None
    if ck is None and resume == "require":
        raise ValueError(f"--resume: no checkpoint for this configuration in {ckpt_dir}")
    if state is not None:
        backbone.load_state_dict(state["backbone"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step, history = int(state["step"]), list(state["history"])
        if len(state["data_state"]) == info.world_size:
            data_state = [tuple(int(v) for v in s) for s in state["data_state"]]
            rng = state["rng"][info.rank]  # RNG states must be CPU byte tensors, whatever map_location did
            torch.set_rng_state(rng["cpu"].cpu())
            if dev.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"].cpu(), dev)
        else:
            epoch0 = min(s[0] for s in state["data_state"]) + 1
            data_state = [(epoch0, 0)] * info.world_size
            if info.main:
                print(
                    f"physfm pretrain: warning: checkpoint was written by {len(state['data_state'])} process(es), "
                    f"resuming with {info.world_size}: data continues from epoch {epoch0}, not bit-identical",
                    file=sys.stderr,
                )
        if info.main:
            print(f"physfm pretrain: resuming from step {start_step} ({ckpt_dir})", file=sys.stderr)
        state = None  # the loaded copy is no longer needed
    else:
        torch.manual_seed(cfg.seed + 1000 * info.rank)

    model: nn.Module = trainer
    if cfg.compile and dev.type == "cuda":
        model = torch.compile(model)
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    per_rank = cfg.batch_size // info.world_size
    common = dict(
        stats=stats,
        raw_features=raw_names,
        objective=objective,
        tokenizer=tok,
        max_len=cfg.max_len,
        batch_size=per_rank,
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        quantized_inputs=bool(obj_opts.get("quantized_inputs", False)),
    )
    train_ds = PretrainShards(ds, "train", shuffle=True, drop_last=True, **common)
    val_ds = PretrainShards(ds, "val", shuffle=False, drop_last=False, **common)

    meta = {
        "features": features,
        "norm": stats["norm"],
        "max_len": cfg.max_len,
        "data_version": manifest["data_version"],
        "tokenizer_version": tok.version if tok is not None else None,
        "tokenizer_method": tok.method if tok is not None else None,
        "codebook_size": K,
        "objective": cfg.objective,
        "objective_options": objective.options.to_dict(),
        "global_targets": stats["global"],
        "modality": manifest.get("modality"),
        "pretrain": cfg.to_dict(),
        "config_hash": config_hash,
    }
    if run is not None and info.main:
        run.set_tags(
            {
                "n_params": backbone.n_params(),
                "world_size": info.world_size,
                "device": str(dev),
                "data_version.in": manifest["data_version"],
                "tokenizer_version": meta["tokenizer_version"],
                "objective": cfg.objective,
            }
        )
        run.log_dataset(ds.path, manifest, context="input")

    log_k = math.log(K) if K else None
    baseline = {"log_K": log_k, "unigram_entropy": stats.get("unigram_entropy")}

    def checkpoint(step: int, epoch_pos: tuple[int, int]) -> Path:
        rng = {"cpu": torch.get_rng_state()}
        if dev.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(dev)
        all_rng = _all_gather(rng, info)
        all_data = _all_gather(list(epoch_pos), info)
        path = ckpt_dir / "last.pt"
        if info.main:
            state = {
                "backbone": backbone.state_dict(),
                "objective": objective.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "config_hash": config_hash,
                "history": history,
                "data_state": all_data,
                "rng": all_rng,
            }
            save_checkpoint(
                ckpt_dir,
                state,
                {"step": step, "config_hash": config_hash, "mlflow_run_id": getattr(run, "run_id", None)},
            )
        if info.enabled:
            dist.barrier()
        return path

    def validate(step: int) -> dict[str, float]:
        val = evaluate(trainer, val_ds, dev, cfg.num_workers, cfg.val_batches)
        history.append({"step": step, **val})
        if run is not None and info.main:
            run.log_metrics(val, step=step)
        return val

    # ---- training loop
    epoch, pos = data_state[info.rank]
    stream = _stream(train_ds, cfg.num_workers, epoch, pos, pin=dev.type == "cuda")
    last_val = history[-1] if history else {}
    if start_step == 0 and not history:
        last_val = validate(0)
    t_start = time.perf_counter()
    window: dict[str, Tensor] = {}
    window_t, window_tokens, window_events = time.perf_counter(), 0, 0
    tokens_seen, seq_len = 0, cfg.max_len + bcfg.n_cls
    flops_tok = backbone.flops_per_token(cfg.max_len)
    show = progress and info.main
    from tqdm.auto import tqdm

    bar = tqdm(
        total=cfg.steps,
        initial=start_step,
        desc=f"pretrain {cfg.objective}",
        disable=not show,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        dynamic_ncols=True,
    )
    step = start_step
    model.train()
    with StopSignals() as stop:
        while step < cfg.steps:
            epoch, pos, batch = next(stream)
            batch = _to(batch, dev)
            with autocast(dev):
                loss, st = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(trainer.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            objective.after_step(step, cfg.steps)  # the objective's own update (EMA teacher, collapse check)
            _accumulate(window, st)
            n_real = int(batch["mask"].sum())
            window_tokens += n_real
            window_events += int(batch["mask"].shape[0])
            tokens_seen += n_real
            bar.update(1)
            if on_step is not None:
                on_step(step)

            if step % cfg.log_every == 0 or step == cfg.steps:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                dt = max(time.perf_counter() - window_t, 1e-9)
                m = _means(window, "train/")
                n_steps = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
                m.update(
                    {
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(gnorm),
                        "epoch": epoch,
                        "tokens_per_second": window_tokens * info.world_size / dt,
                        "events_per_second": window_events * info.world_size / dt,
                        "tflops": flops_tok * seq_len * window_events * info.world_size / dt / 1e12,
                        "seconds_per_step": dt / max(n_steps, 1),
                    }
                )
                if dev.type == "cuda":
                    m["gpu_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
                if run is not None and info.main:
                    run.log_metrics(m, step=step)
                bar.set_postfix(loss=f"{m.get('train/loss', float('nan')):.3f}", refresh=False)
                window, window_t, window_tokens, window_events = {}, time.perf_counter(), 0, 0

            if step % cfg.val_every == 0 or step == cfg.steps:
                last_val = validate(step)
                if info.main:
                    shown = ", ".join(f"{k[4:]} {v:.4f}" for k, v in last_val.items() if k.startswith("val/loss"))
                    bar.write(f"step {step}/{cfg.steps}: validation {shown}", file=sys.stderr)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint(step, (epoch, pos))
            stop_now = stop.received is not None
            if info.enabled and step % cfg.log_every == 0:  # ranks agree on when to stop (a sync anyway)
                flag = torch.tensor([float(stop_now)], device=dev)
                stop_now = float(_all_reduce(flag, dist.ReduceOp.MAX)) > 0
            elif info.enabled:
                stop_now = False
            if stop_now and step < cfg.steps:
                path = checkpoint(step, (epoch, pos))
                bar.close()
                raise Preempted(stop.received or "a stop signal on another rank", step, path)
    bar.close()
    train_seconds = time.perf_counter() - t_start

    # ---- outputs (rank 0)
    summary = {
        "objective": cfg.objective,
        "steps": cfg.steps,
        "resumed_from": start_step,
        "n_params": backbone.n_params(),
        "train_seconds_this_process": train_seconds,
        "tokens_this_process": tokens_seen * info.world_size,
        "world_size": info.world_size,
        "device": str(dev),
        **baseline,
        **{k: v for k, v in last_val.items()},
    }
    if log_k and "val/loss_token" in last_val:
        summary["val_loss_token_over_log_K"] = last_val["val/loss_token"] / log_k
    if info.main:
        # built under a temporary name and renamed into place when complete: a SIGKILL at any
        # moment leaves no backbone directory (or the previous one), never a half-written one
        with atomic_dir(out_dir) as tmp:
            if tok is not None:
                shutil.copytree(tokenizer_dir, tmp / "tokenizer")
            write_json(tmp / "history.json", history)
            write_json(tmp / "metrics.json", summary)
            _plot_history(history, baseline, tmp / "loss.png", title=f"{cfg.objective} pretraining")
            inside = ckpt_dir.resolve().is_relative_to(out_dir.resolve())  # OUT/checkpoints (the default) stays
            rel_ckpt = ckpt_dir.resolve().relative_to(out_dir.resolve()).as_posix() if inside else None
            exported = objective.export_backbone(backbone)  # e.g. DINO's EMA teacher
            artifact = save_backbone(exported, meta, tmp, heads=objective, excluded=(rel_ckpt,) if inside else ())
            if rel_ckpt is not None:
                copy_checkpoint(ckpt_dir, tmp / rel_ckpt)
        summary["backbone_version"] = artifact.version
        if run is not None:
            run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
            run.set_tags({"backbone_version": artifact.version})
            run.log_artifact(out_dir / "loss.png", artifact_path="plots")
    if info.enabled:
        dist.barrier()
    return summary


def _plot_history(history: list[dict[str, float]], baseline: dict[str, Any], path: Path, title: str) -> bool:
    """Validation losses vs step, with the uniform (log K) and unigram baselines."""
    keys = sorted({k for h in history for k in h if k.startswith("val/loss")})
    if not keys:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys:
        pts = [(h["step"], h[k]) for h in history if k in h]
        ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=k.removeprefix("val/"))
    if baseline.get("log_K"):
        ax.axhline(baseline["log_K"], color="k", ls="--", lw=1, label="uniform (log K)")
    if baseline.get("unigram_entropy"):
        ax.axhline(baseline["unigram_entropy"], color="gray", ls=":", lw=1, label="unigram entropy")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (CE in nats, MSE)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
