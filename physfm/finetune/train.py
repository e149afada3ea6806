"""Fine-tuning one cell of the label-efficiency grid: (backbone, task, mode, labels, seed) -> model.

The task (:mod:`physfm.finetune.task`: classification, direction, regression, segmentation) brings
its head, loss, validation score and metrics; the loop (:func:`physfm.finetune.loop.fit`) is the same.

Modes (same head, same label subset, same seed-driven head initialisation and batch order):

* ``scratch``: the backbone architecture randomly initialised, everything trained at ``lr``;
* ``finetune``: the pretrained backbone trained with the head, at ``lr * backbone_lr_scale``
  and a layer-wise multiplier ``layer_decay`` per block below the top;
* ``frozen``: the pretrained backbone untouched (eval mode, not in the optimizer: its weights stay
  bit-identical), only the head trained; backbone states are computed once and cached.

Training: AdamW, linear warm-up then cosine decay over ``max_steps``; every ``eval_every`` steps the
validation loss is measured and the best model kept; training stops after ``patience`` evaluations
without improvement. Budgets are steps, not seconds, so results do not depend on the machine.
The labelled subset and the validation events are held in memory (fine for the label counts of a
label-efficiency study). Every labelled event a run reads is in its budget: the subset of ``n`` labels
is split (:mod:`physfm.finetune.subsets`, protocol ``holdout``) into a train part and a validation part
that early stopping and the choice of checkpoint use; the dataset's labelled val split is never read.
Under protocol ``fixed`` there is no validation part: the run trains ``max_steps`` and keeps the last model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physfm.data.dataset import Dataset, open_dataset
from physfm.data.loader import load_arrays, open_split
from physfm.data.shards import DataError
from physfm.finetune import head_inputs
from physfm.finetune.auxiliary import maybe_global_aux
from physfm.finetune.loop import FitResult, LoopSettings, fit, tensors, train_record
from physfm.finetune.model import HeadConfig, TaskModel, param_groups, save_model
from physfm.finetune.subsets import load_split, make_subsets, spec_name, subset_info
from physfm.finetune.task import Task, make_task
from physfm.models.backbone import Backbone, BackboneConfig, normalize
from physfm.runtime import adamw, cosine_schedule, device_of

MODES = ("scratch", "finetune", "frozen")


#: Keys of the Snakemake ``finetune:`` section that define the grid, not one run's training settings.
GRID_KEYS = (
    "backbones",
    "labels",
    "reference_labels",
    "modes",
    "seeds",
    "scratch_per_backbone",
    "budget",
    "baselines",
    "resources",
    "search",
    "ablation",
    "scaling",
    "seeds_at",
    "task",
    "on_corpus",
    "search_labels",
)
#: Fields of :class:`FinetuneConfig` that identify the grid cell (the rule's wildcards), not settings.
CELL_KEYS = ("mode", "labels", "seed", "device")


@dataclass
class FinetuneConfig:
    """Everything that defines one fine-tuning run (logged as MLflow params).

    ``mode``, ``labels``, ``seed`` identify the grid cell and ``device`` where it runs (command-line
    flags); every other field is a setting of the ``finetune:`` config section, whose schema defaults
    equal these (tests/test_finetune.py).
    """

    mode: str = "finetune"
    labels: str = "all"
    seed: int = 1
    head: HeadConfig = field(default_factory=HeadConfig)
    lr: float = 5e-4  # head, and everything in scratch
    backbone_lr_scale: float = 0.2  # finetune: backbone LR = lr x this x layer_decay^(layers above)
    layer_decay: float = 0.8
    weight_decay: float = 0.01
    batch_size: int = 32
    max_steps: int = 800
    warmup_steps: int = 20
    eval_every: int = 25  # steps between validation-loss evaluations
    patience: int = 6  # evaluations without improvement before stopping
    initial_candidate: bool = False  # the model before any step is a checkpoint candidate (validated at step 0)
    probe_steps: int = 0  # finetune: first train the head alone on the frozen backbone (probe warm start, LP-FT)
    average_last: int = 0  # the mean of the weights at the last N evaluations as one more checkpoint candidate
    global_aux_weight: float = 0.0  # scratch_global ablation: weight of the global-target loss (0 = off)
    global_aux_targets: list[str] = field(default_factory=lambda: ["log_mass", "log_multiplicity"])
    device: str = "auto"
    allow_missing_inputs: bool = False  # fill inputs the data lacks though the backbone never saw them absent

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode '{self.mode}' is not one of {', '.join(MODES)}")
        if isinstance(self.head, dict):
            self.head = HeadConfig.from_dict(self.head)
        for name in ("batch_size", "max_steps", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"finetune {name} must be at least 1, got {getattr(self, name)}")
        if self.average_last < 0:
            raise ValueError(f"finetune average_last must be >= 0 (0: no weight averaging), got {self.average_last}")
        if self.probe_steps < 0:
            raise ValueError(f"finetune probe_steps must be >= 0 (0: no probe warm start), got {self.probe_steps}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def settings_slice(section: dict[str, Any]) -> dict[str, Any]:
    """One run's settings from the workflow's ``finetune:`` section (the grid keys dropped)."""
    return {k: v for k, v in section.items() if k not in GRID_KEYS}


def fit_norm(x: np.ndarray, mask: np.ndarray) -> dict[str, list[float]]:
    """Per-feature mean/std over real particles (for a backbone-less scratch model)."""
    real = x[mask].astype(np.float64)
    std = real.std(0) if len(real) else np.ones(x.shape[-1])
    return {
        "mean": real.mean(0).tolist() if len(real) else [0.0] * x.shape[-1],
        "std": np.where(std > 0, std, 1.0).tolist(),
    }


def prepare_backbone(
    backbone_dir: str | Path | None,
    mode: str,
    data: Dataset | str | Path,
    arch: dict[str, Any] | None,
    seed: int,
    allow_missing_inputs: bool = False,
) -> tuple[Backbone, dict[str, Any]]:
    """The backbone to train and its meta (features, norm, max_len, config, versions, source, input_fill).

    ``backbone_dir``: a backbone directory, a ``models:/`` URI or None
    (:mod:`physfm.finetune.backbone_source`, which also decides how inputs the data lacks are filled).
    """
    from physfm.finetune import backbone_source

    data = open_dataset(data)
    if backbone_dir is None or str(backbone_dir) == "none":
        if mode != "scratch":
            raise ValueError(
                f"mode '{mode}' needs a pretrained backbone: pass --backbone DIR (only scratch runs without)"
            )
        from physfm.features import JET_DEFAULT

        arch = dict(arch or {})
        features = list(arch.pop("features", JET_DEFAULT))
        max_len = int(arch.get("max_len", 128))
        n_fit = min(len(open_split(data, "train")), 5000)
        sample = load_arrays(data, "train", features=features, max_len=max_len, indices=np.arange(n_fit))
        cfg = BackboneConfig.from_dict({"n_features": len(features), **arch})
        meta = {
            "features": features,
            "norm": fit_norm(sample["x"], sample["mask"]),
            "max_len": max_len,
            "config": cfg.to_dict(),
            "data_version": data.data_version,
            "tokenizer_version": None,
            "objective": "none",
        }
        meta["input_fill"] = backbone_source.input_fill(meta, data, mode=mode)
        torch.manual_seed(seed + 7919)
        return Backbone(cfg), meta

    model, meta = backbone_source.open_backbone(
        backbone_dir, data, mode=mode, allow_missing_inputs=allow_missing_inputs
    )
    if model.config.vocab_size > 0 and model.config.n_features == 0:
        raise ValueError(
            f"{backbone_dir}: this backbone reads token ids only; fine-tuning uses continuous features. "
            "Fine-tune a backbone with continuous inputs (n_features > 0)."
        )
    meta = dict(meta)
    if mode == "scratch":  # same architecture, fresh weights
        torch.manual_seed(seed + 7919)
        model = Backbone(BackboneConfig.from_dict(meta["config"]))
    return model, meta


def probe_warm_start(
    model: TaskModel,
    task: Task,
    train: Any,
    val: Any,
    cfg: FinetuneConfig,
    device: torch.device,
    progress: bool,
    desc: str,
) -> FitResult:
    """Train the head alone on the frozen backbone for ``cfg.probe_steps`` steps (its own AdamW at ``cfg.lr``,
    warm-up and cosine decay), early-stopped on the same in-budget validation part; the model keeps the best
    head, and the fine-tuning that follows starts from it (LP-FT, as RINO and jetssl warm-start). No label
    beyond the budget's is read."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    opt = adamw(param_groups(model, "frozen", cfg.lr, 0.0, 1.0, cfg.weight_decay), cfg.lr, betas=(0.9, 0.98))
    sched = cosine_schedule(opt, min(cfg.warmup_steps, cfg.probe_steps - 1), cfg.probe_steps, 0.1)
    settings = LoopSettings(cfg.probe_steps, cfg.eval_every, cfg.patience, cfg.batch_size, cfg.seed, order_salt=0x9B0E)
    try:
        return fit(model, task, train, val, opt, settings, sched=sched, frozen=True, device=device,
                   progress=progress, desc=f"{desc} probe")  # fmt: skip
    finally:
        for p in model.backbone.parameters():
            p.requires_grad_(True)


def finetune(
    data_dir: Dataset | str | Path,
    out_dir: str | Path,
    cfg: FinetuneConfig,
    *,
    backbone_dir: str | Path | None = None,
    subsets_dir: str | Path | None = None,
    arch: dict[str, Any] | None = None,
    run: Any = None,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
    task: Task | str | None = None,
    sources: head_inputs.Sources | None = None,
) -> dict[str, Any]:
    """Train one model of ``task`` (one cell of the grid) and write it to ``out_dir``; return its meta.

    ``task``: a :class:`physfm.finetune.task.Task`, a spec (``classification``, ``direction``,
    ``regression:log_mass``, ...) or None/``auto`` (classification when the dataset has classes, else
    IceCube direction). ``subsets_dir``: label subsets from :func:`physfm.finetune.subsets.make_subsets`
    holding this run's seed (made on the fly, default protocol, when None). ``arch`` (scratch without a
    backbone): the BackboneConfig and ``features`` (default: the task's). ``run``: a
    :class:`physfm.tracking.StageRun` for metrics. ``sources``: where the head's side inputs
    (``cfg.head.inputs``, :mod:`physfm.finetune.head_inputs`) are cached (default: computed from the data).
    """
    t_start = time.perf_counter()
    ds = open_dataset(data_dir, verify=True)  # the one read of manifest.json; shards re-hashed once
    manifest, data_dir = ds.manifest, ds.path
    task = make_task(task, ds)
    device = device_of(cfg.device)

    if subsets_dir is None:
        subsets_dir = Path(out_dir).with_name(Path(out_dir).name + ".subsets")
        make_subsets(ds, [cfg.labels], seed=cfg.seed, out_dir=subsets_dir, verify=False)
    train_idx, val_idx = load_split(subsets_dir, cfg.labels, cfg.seed, ds)  # both parts count in the budget
    budget = subset_info(subsets_dir, cfg.labels, cfg.seed)
    if len(train_idx) == 0:
        raise DataError(f"{data_dir}: the label subset '{cfg.labels}' is empty")

    if backbone_dir is None or str(backbone_dir) == "none":
        arch = {"features": list(task.default_features), **(arch or {})}
    backbone, bmeta = prepare_backbone(backbone_dir, cfg.mode, ds, arch, cfg.seed, cfg.allow_missing_inputs)
    if bmeta.get("data_version") and bmeta["data_version"] != manifest["data_version"]:
        print(
            f"note: backbone pretrained on data_version {bmeta['data_version']}, "
            f"fine-tuning on {manifest['data_version']}"
        )
    head = task.head_meta(cfg.head)
    where = sources or head_inputs.Sources()
    if head.get("inputs"):  # side inputs: standardised with unlabelled train-split statistics (no label read)
        head["side"] = head_inputs.fit_norm(head["inputs"], ds, where)
    train = task.inputs(ds, "train", bmeta, train_idx)
    head_inputs.attach(head.get("inputs", []), train, ds, "train", train_idx, where)
    task.fit(train)  # what the task learns from the train part (a target scale), before val is read
    has_val = len(val_idx) > 0  # protocol fixed: no validation part
    val = task.inputs(ds, "train", bmeta, val_idx) if has_val else None  # the in-budget validation part
    if val is not None:
        head_inputs.attach(head.get("inputs", []), val, ds, "train", val_idx, where)

    torch.manual_seed(cfg.seed)  # the head starts the same in every mode
    model = TaskModel(backbone, task.head(backbone.config, head)).to(device)
    groups = param_groups(model, cfg.mode, cfg.lr, cfg.backbone_lr_scale, cfg.layer_decay, cfg.weight_decay)
    if cfg.mode == "frozen":
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    # scratch_global ablation (physfm.finetune.auxiliary): the global targets as an extra loss term
    aux = maybe_global_aux(cfg, model, ds, train_idx, int(bmeta["max_len"]))
    groups += [{"params": list(aux.parameters()), "lr": cfg.lr, "base_lr": cfg.lr, "weight_decay": 0.0}] if aux else []
    opt = adamw(groups, cfg.lr, betas=(0.9, 0.98))  # each group carries its own (layer-wise) lr
    sched = cosine_schedule(opt, cfg.warmup_steps, cfg.max_steps, 0.1)  # warm-up, then cosine decay to 0.1
    settings = LoopSettings(
        cfg.max_steps,
        cfg.eval_every,
        cfg.patience,
        cfg.batch_size,
        cfg.seed,
        initial_candidate=cfg.initial_candidate,
        average_last=cfg.average_last,
    )
    train_t = tensors(train, normalize(train["x"], train["mask"], bmeta))
    val_t = None if val is None else tensors(val, normalize(val["x"], val["mask"], bmeta))
    desc = f"{task.name} {cfg.mode} {spec_name(cfg.labels)} seed={cfg.seed}"
    probe = None
    if cfg.probe_steps and cfg.mode == "finetune":  # probe warm start: the head alone first, on the frozen backbone
        probe = probe_warm_start(model, task, train_t, val_t, cfg, device, progress, desc)
    result = fit(
        model,
        task,
        train_t,
        val_t,
        opt,
        settings,
        sched=sched,
        frozen=cfg.mode == "frozen",
        extra_loss=aux.loss if aux else None,
        device=device,
        run=run,
        progress=progress,
        desc=desc,
    )
    task_meta = task.to_meta()
    meta = {
        "kind": task.kind,
        **task_meta,
        "mode": cfg.mode,
        "labels": str(cfg.labels),
        "n_labels": int(len(train_idx) + len(val_idx)),  # the budget: train part + in-budget validation part
        "seed": cfg.seed,
        "budget": budget,
        "head": head,
        "config": cfg.to_dict(),
        "data_version": manifest["data_version"],
        "backbone": {
            k: bmeta.get(k)
            for k in ("features", "norm", "max_len", "config", "data_version", "tokenizer_version", "objective")
            + ("backbone_version", "source", "input_fill")
        },
        "backbone_dir": None if backbone_dir is None else str(backbone_dir),
        "subset": {  # the whole budget: train part + validation part
            "digest": budget["digest"],
            "per_class": {c: budget["per_class_train"][c] + budget["per_class_val"][c] for c in task_meta["classes"]},
        },
        "train": {
            **train_record(result),
            **({"probe": train_record(probe), "probe_history": probe.history} if probe is not None else {}),
            "n_val": int(len(val_idx) if has_val else 1),
            "wall_seconds": time.perf_counter() - t_start,
            "device": str(device),
        },
        "history": result.history,
        "run_id": getattr(run, "run_id", None),
        **(extra_meta or {}),
    }
    model.cpu()
    return save_model(out_dir, model, meta)
