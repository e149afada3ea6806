"""Per-point semantic segmentation (LArTPC) on a **patch** backbone (PoLAr-MAE): a class for every point.

A patch backbone needs the point cloud cut into patches before it and the point positions after
it (to carry patch states back to points), so the model of a cell is a :class:`Segmenter` (patch
embedding + backbone + point head) rather than the task interface's ``TaskModel``; it trains in the
one fine-tuning loop, :func:`physfm.finetune.loop.fit`, like every task: the events are a ragged part
(:class:`PointEvents`, padded per batch), the task is :class:`PatchSegmentationTask` (loss and
validation), and the model's ``encode`` / ``decode`` give the loop its frozen cache of patch states.
The per-particle ``segmentation`` task (:mod:`physfm.finetune.segmentation`) is the same task on a
backbone whose tokens are the points.

A run is one cell of the label-efficiency grid, exactly like a classification cell
(:mod:`physfm.finetune.train`): the same :class:`~physfm.finetune.train.FinetuneConfig` (lr,
backbone_lr_scale, layer_decay, batch_size, max_steps, warm-up + cosine, eval_every, patience),
the same per-seed label subsets and budget protocol, modes ``scratch`` / ``finetune`` / ``frozen``,
early stopping on the in-budget validation part's loss, best model kept. What differs:

* **Inputs.** Every point of an event (``x, y, z, log_energy`` by default: the pretrained
  backbone's features) is read, none dropped; at most ``max_points`` of them, drawn from the event
  key with a fixed salt (:func:`physfm.data.pointcloud.cap_points`), are cut into patches by the
  backbone's patch embedding (``polarmae`` backbones carry it in ``objective.safetensors``).
* **Model.** Patch tokens -> backbone -> patch states, carried back to *every* point by
  inverse-distance interpolation over the ``k`` nearest patch centres, concatenated with the
  point's own inputs, -> MLP head (:class:`physfm.models.segmentation.SegmentationHead`).
* **Loss.** Class-weighted cross-entropy, focal with ``gamma > 0`` (Michel and delta points are
  rare); weights from the train part's point counts (``inverse_sqrt`` by default).
* **Label budget.** Counts *events*: a subset of ``n`` labels is ``n`` events with all their point
  labels. LArTPC events carry no event class, so the subsets (:mod:`physfm.finetune.subsets`) treat
  every event as one class: the in-budget validation part is an **unstratified** seeded draw
  (``n_val = round(val_fraction * n)``, at least ``min_val_per_class``, at most ``n / 2``). A
  per-event class for stratification (e.g. the rarest class present) was not adopted: nearly every
  event holds every class except sometimes Michel/delta, so it would stratify on "has a Michel".
* **Modes.** ``scratch``: the backbone's architecture and a fresh patch embedding, everything at
  ``lr``; ``finetune``: the pretrained backbone and patch embedding at ``lr * backbone_lr_scale``
  (layer decay per block, the patch embedding as the lowest layer), the head at ``lr``;
  ``frozen``: backbone and patch embedding untouched, their patch states computed once, head only.

A saved model is a directory with ``patch_segmentation.safetensors`` and ``patch_segmentation.json``
(kind ``finetuned``; no pickle). :func:`evaluate_segmentation` scores it on a held-out split:
macro-F1, per-class F1 (``f1_michel``, ``f1_delta`` apart), accuracy, ``seg_error = 1 - macro_f1``
and the confusion matrix, with bootstrap errors over events.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from physfm.data.dataset import Dataset, open_dataset
from physfm.data.lartpc import MODALITY, SEMANTIC_CLASSES
from physfm.data.loader import open_split
from physfm.data.pointcloud import POINT_INPUTS, cap_points, check_point_inputs
from physfm.data.shards import DataError
from physfm.evaluate.segmentation import bootstrap_metrics, confusion_matrix, flat_metrics, metrics_from_confusion
from physfm.finetune.loop import LoopSettings, fit, train_record
from physfm.finetune.segmentation import SegmentationTask
from physfm.models.backbone import Backbone, BackboneConfig
from physfm.models.patching import PatchConfig, PatchEmbedding
from physfm.models.segmentation import SegmentationHead, segmentation_loss

KIND = "physfm-patch-segmentation"
WEIGHTS = "patch_segmentation.safetensors"
META = "patch_segmentation.json"
LABEL = "semantic"
#: Salt of the fixed point subsample of fine-tuning and evaluation (one per event, every mode alike).
CAP_SALT = 0x5E6
LOSSES = ("focal", "weighted")
WEIGHTINGS = ("inverse_sqrt", "inverse", "none")


@dataclass
class SegmentationConfig:
    """Settings of the segmentation task (config section ``segmentation``; its schema defaults equal these)."""

    max_points: int = 2048  # points per event cut into patches (all points are classified)
    loss: str = "focal"  # focal | weighted (class-weighted cross-entropy)
    gamma: float = 2.0  # focal exponent (loss: focal)
    class_weights: str = "inverse_sqrt"  # from the train part's point counts: inverse_sqrt | inverse | none
    hidden: int = 128  # head MLP width
    k: int = 3  # patch centres interpolated per point (1: nearest centre)
    eval_batch_size: int = 16  # events per inference batch

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"segmentation loss must be one of {LOSSES}, got '{self.loss}'")
        if self.class_weights not in WEIGHTINGS:
            raise ValueError(f"segmentation class_weights must be one of {WEIGHTINGS}, got '{self.class_weights}'")
        for name in ("max_points", "hidden", "k", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"segmentation {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SegmentationConfig:
        known = {f.name for f in fields(cls)}
        if unknown := set(d or {}) - known:
            raise ValueError(f"unknown segmentation settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**(d or {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_segmentation_dataset(manifest: dict[str, Any]) -> bool:
    """True for a converted LArTPC dataset (per-point ``semantic`` labels)."""
    return manifest.get("modality") == MODALITY


def is_segmentation_model(path: str | Path) -> bool:
    return (Path(path) / META).is_file()


# --------------------------------------------------------------------------- events in memory
@dataclass
class PointEvents:
    """Ragged events: ``points[i]`` ``(n_i, F)`` float32 in the backbone's features, ``labels[i]`` ``(n_i,)``.

    A part of :func:`physfm.finetune.loop.fit` (``len``, ``rows``): each batch is padded to its longest
    event, and its cloud capped at ``max_points`` points (:func:`physfm.data.pointcloud.cap_points`).
    """

    points: list[np.ndarray]
    labels: list[np.ndarray]
    event_key: np.ndarray
    max_points: int | None = None  # the cap of rows(); None: rows() refused (e.g. the zero-label floor's events)

    def __len__(self) -> int:
        return len(self.points)

    def batch(self, idx: np.ndarray, max_points: int) -> dict[str, np.ndarray]:
        """Padded ``points (B, N, F)``, ``mask``, ``labels`` (-1 at padding) and the capped cloud."""
        n = max(max(len(self.points[i]) for i in idx), 1)
        f = self.points[idx[0]].shape[1]
        pts = np.zeros((len(idx), n, f), dtype=np.float32)
        lab = np.full((len(idx), n), -1, dtype=np.int64)
        mask = np.zeros((len(idx), n), dtype=bool)
        for j, i in enumerate(idx):
            m = len(self.points[i])
            pts[j, :m], lab[j, :m], mask[j, :m] = self.points[i], self.labels[i], True
        keys = self.event_key[idx]
        cap, cap_mask, _ = cap_points(pts, mask, keys, max_points, CAP_SALT)
        return {"points": pts, "mask": mask, "labels": lab, "cap": cap, "cap_mask": cap_mask}

    def rows(self, idx: Tensor | np.ndarray) -> dict[str, Tensor]:
        """The loop's batch of events ``idx``: ``x`` (points), ``mask``, ``target`` (labels), ``cap``, ``cap_mask``."""
        if self.max_points is None:
            raise ValueError("these events were loaded without max_points: pass it to load_events")
        b = self.batch(np.asarray(idx), self.max_points)
        names = {"points": "x", "labels": "target"}
        return {names.get(k, k): torch.from_numpy(v) for k, v in b.items()}


def load_events(
    data: Dataset | str | Path,
    split: str,
    features: list[str],
    indices: np.ndarray | None,
    max_points: int | None = None,
) -> PointEvents:
    """Every point of the chosen events of ``split`` (all of them when ``indices`` is None), none dropped;
    ``max_points``: the cap of their batches (:meth:`PointEvents.rows`)."""
    s = open_split(data, split)
    block = s.read(indices)
    x = s.features(block, [*features, LABEL])
    lab = np.rint(x[:, -1]).astype(np.int64)
    if len(lab) and ((lab < 0) | (lab >= len(SEMANTIC_CLASSES))).any():
        raise DataError(f"{s.data_dir} ({split}): semantic labels outside 0..{len(SEMANTIC_CLASSES) - 1}")
    o = block.offsets
    pts = [x[o[i] : o[i + 1], :-1].astype(np.float32) for i in range(len(block))]
    labels = [lab[o[i] : o[i + 1]] for i in range(len(block))]
    return PointEvents(pts, labels, block.event_key.astype(np.uint64), max_points)


# --------------------------------------------------------------------------- the model
class Segmenter(nn.Module):
    """Patch embedding + backbone + per-point head."""

    def __init__(self, backbone: Backbone, patches: PatchConfig, n_classes: int, cfg: SegmentationConfig) -> None:
        super().__init__()
        self.patch_config = patches
        self.patch_embed = PatchEmbedding(patches)
        self.backbone = backbone
        self.head = SegmentationHead(
            backbone.config.d_model, n_classes, point_features=patches.point_features, hidden=cfg.hidden, k=cfg.k
        )

    def patch_states(self, cap: Tensor, cap_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(states (B, P, d), centres (B, P, 3), valid (B, P))`` of the capped clouds."""
        p = self.patch_embed(cap, cap_mask)
        h = self.backbone(p.tokens, p.mask)[:, self.backbone.config.n_cls :]
        return h, p.centres, p.mask

    def point_logits(self, h: Tensor, centres: Tensor, valid: Tensor, points: Tensor) -> Tensor:
        """``(B, N, C)`` logits of every point from the patch states."""
        scale = self.patch_config.position_scale
        point_x = torch.cat([points[..., :3] / scale, points[..., 3:]], -1)
        return self.head(h, centres, valid, points[..., :3], point_x)

    def forward(self, x: Tensor, mask: Tensor, cap: Tensor, cap_mask: Tensor) -> Tensor:
        """``(B, N, C)`` logits of the points ``x`` (``mask``: real ones) from the capped cloud ``cap``."""
        return self.point_logits(*self.patch_states(cap, cap_mask), x)

    def encode(self, x: Tensor, mask: Tensor, cap: Tensor, cap_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What frozen training caches (:func:`physfm.finetune.loop.fit`): :meth:`patch_states`."""
        return self.patch_states(cap, cap_mask)

    def decode(
        self, states: tuple[Tensor, Tensor, Tensor], x: Tensor, mask: Tensor, cap: Tensor, cap_mask: Tensor
    ) -> Tensor:
        """The logits of the points ``x`` from :meth:`encode`'s states."""
        return self.point_logits(*states, x)


def class_weights(labels: list[np.ndarray], n_classes: int, how: str) -> np.ndarray:
    """Per-class loss weights from point counts (mean 1 over the classes present; 0 for absent ones)."""
    counts = np.bincount(np.concatenate(labels) if labels else np.zeros(0, np.int64), minlength=n_classes)
    counts = counts.astype(np.float64)
    if how == "none":
        return np.ones(n_classes)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = (counts[present].sum() / counts[present]) ** (0.5 if how == "inverse_sqrt" else 1.0)
    return w / w[present].mean() if present.any() else np.ones(n_classes)


class PatchSegmentationTask(SegmentationTask):
    """The per-point ``segmentation`` task on a patch backbone, as :func:`physfm.finetune.loop.fit` trains it.

    The classes, metrics and report data of :class:`~physfm.finetune.segmentation.SegmentationTask`; the
    loss class-weighted (``weights``, from the train part's point counts: :func:`class_weights`) and focal
    with ``gamma > 0``; validation reduces the loop's batches itself (each is padded to its own longest
    event): ``val_loss`` the weighted loss of all validation points, ``val_macro_f1`` from their confusion
    matrix. Its model is a :class:`Segmenter` (patch embedding + backbone + point head), built by
    :func:`finetune_segmentation`, not the task interface's ``TaskModel``, so it is not in
    :data:`physfm.finetune.task.TASK_MODULES`; saved models are read by :func:`load_segmenter`.
    """

    name = "patch_segmentation"
    kind = KIND
    files = (WEIGHTS, META)
    val_keys = ("val_loss", "val_macro_f1")

    def __init__(self, classes: list[str], weights: Tensor, gamma: float = 0.0) -> None:
        super().__init__(classes, LABEL, gamma)
        self.weights = weights

    def loss(self, out: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return segmentation_loss(out, target, mask, self.weights, self.gamma)

    def validate_batches(self, batches: Iterable[tuple[Tensor, Tensor, Tensor]]) -> dict[str, float]:
        c = len(self.classes)
        total, wsum, cm = 0.0, 0.0, np.zeros((c, c), dtype=np.int64)
        for out, target, mask in batches:
            y = target[mask]
            w = float(self.weights[y].sum())
            total += float(self.loss(out, target, mask)) * w
            wsum += w
            cm += confusion_matrix(y.cpu().numpy(), out[mask].argmax(-1).cpu().numpy(), c)
        return {
            "val_loss": total / max(wsum, 1e-12),
            "val_macro_f1": metrics_from_confusion(cm, self.classes)["macro_f1"],
        }

    def validate(self, out: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
        return self.validate_batches([(out, target, mask)])


def prepare_segmenter(
    backbone_dir: str | Path | None,
    mode: str,
    arch: dict[str, Any] | None,
    n_classes: int,
    cfg: SegmentationConfig,
    seed: int,
) -> tuple[Segmenter, dict[str, Any]]:
    """The model of a cell and its backbone meta. ``scratch`` keeps only the architecture."""
    if backbone_dir is None or str(backbone_dir) == "none":
        if mode != "scratch":
            raise ValueError(f"mode '{mode}' needs a pretrained backbone: pass --backbone DIR")
        from physfm.models.polarmae_objective import PolarMAEOptions, patch_config

        arch = dict(arch or {})
        features = list(arch.pop("features", POINT_INPUTS))
        pc = patch_config(PolarMAEOptions().to_dict(), len(features))
        bcfg = BackboneConfig.from_dict({**arch, "n_features": pc.embed_dim, "max_len": pc.n_patches})
        meta = {"features": features, "config": bcfg.to_dict(), "objective": "none", "patches": pc.to_dict()}
        meta.update(data_version=None, tokenizer_version=None, norm=None, max_len=pc.n_patches)
        torch.manual_seed(seed + 7919)
        backbone, patch_state = Backbone(bcfg), None
    else:
        from physfm.models.polarmae_objective import patch_config
        from physfm.pretrain.checkpoints import load_backbone, load_heads

        backbone, meta = load_backbone(backbone_dir, map_location="cpu")
        meta = dict(meta)
        if meta.get("objective") != "polarmae":
            raise ValueError(
                f"{backbone_dir} was pretrained with '{meta.get('objective')}'; per-point segmentation needs a "
                "point-cloud backbone (objective polarmae) that carries its patch embedding"
            )
        features = list(meta["features"])
        pc = patch_config(meta.get("objective_options") or {}, len(features))
        meta["patches"] = pc.to_dict()
        prefix = "mae.patch_embed."
        patch_state = {k[len(prefix) :]: v for k, v in load_heads(backbone_dir).items() if k.startswith(prefix)}
        if mode == "scratch":
            torch.manual_seed(seed + 7919)
            backbone, patch_state = Backbone(BackboneConfig.from_dict(meta["config"])), None
    check_point_inputs(features)
    torch.manual_seed(seed + 7919 + 1)
    patch_embed_init = PatchEmbedding(pc).state_dict()
    torch.manual_seed(seed)  # the head starts the same in every mode
    model = Segmenter(backbone, pc, n_classes, cfg)
    model.patch_embed.load_state_dict(patch_state if patch_state is not None else patch_embed_init)
    return model, meta


def param_groups(model: Segmenter, mode: str, lr: float, scale: float, layer_decay: float, wd: float) -> list[dict]:
    """AdamW groups as :func:`physfm.finetune.model.param_groups`, with the patch embedding as the lowest layer."""
    from physfm.finetune.model import param_groups as classifier_groups

    groups = classifier_groups(model, mode, lr, scale, layer_decay, wd)  # head + backbone
    if mode != "frozen":
        top = model.backbone.config.n_layers + 1
        pe_lr = lr if mode == "scratch" else lr * scale * layer_decay**top
        decay = [p for p in model.patch_embed.parameters() if p.ndim >= 2]
        rest = [p for p in model.patch_embed.parameters() if p.ndim < 2]
        groups += [
            {"params": decay, "lr": pe_lr, "base_lr": pe_lr, "weight_decay": wd},
            {"params": rest, "lr": pe_lr, "base_lr": pe_lr, "weight_decay": 0.0},
        ]
    return groups


# --------------------------------------------------------------------------- one cell
def finetune_segmentation(
    data_dir: Dataset | str | Path,
    out_dir: str | Path,
    cfg: Any,
    *,
    seg: SegmentationConfig | None = None,
    backbone_dir: str | Path | None = None,
    subsets_dir: str | Path | None = None,
    arch: dict[str, Any] | None = None,
    run: Any = None,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one segmentation model (``cfg``: a :class:`~physfm.finetune.train.FinetuneConfig`) and
    write it to ``out_dir``; return its meta with the training record."""
    from physfm.finetune.subsets import load_split, make_subsets, spec_name, subset_info
    from physfm.runtime import adamw, cosine_schedule, device_of

    seg = seg or SegmentationConfig()
    t_start = time.perf_counter()
    ds = open_dataset(data_dir, verify=True)
    manifest = ds.manifest
    if not is_segmentation_dataset(manifest):
        raise DataError(f"{ds.path} is a '{manifest.get('modality')}' dataset; segmentation needs lartpc points")
    classes = list(SEMANTIC_CLASSES)
    device = device_of(cfg.device)
    if subsets_dir is None:
        subsets_dir = Path(out_dir).with_name(Path(out_dir).name + ".subsets")
        make_subsets(ds, [cfg.labels], seed=cfg.seed, out_dir=subsets_dir, verify=False)
    train_idx, val_idx = load_split(subsets_dir, cfg.labels, cfg.seed, ds)  # events; both parts in the budget
    budget = subset_info(subsets_dir, cfg.labels, cfg.seed)
    has_val = len(val_idx) > 0

    model, bmeta = prepare_segmenter(backbone_dir, cfg.mode, arch, len(classes), seg, cfg.seed)
    features = list(bmeta["features"])
    train = load_events(ds, "train", features, train_idx, seg.max_points)
    val = load_events(ds, "train", features, val_idx, seg.max_points) if has_val else None
    weights = torch.as_tensor(class_weights(train.labels, len(classes), seg.class_weights), dtype=torch.float32)
    task = PatchSegmentationTask(classes, weights.to(device), seg.gamma if seg.loss == "focal" else 0.0)
    model.to(device)
    groups = param_groups(model, cfg.mode, cfg.lr, cfg.backbone_lr_scale, cfg.layer_decay, cfg.weight_decay)
    if cfg.mode == "frozen":
        for p in [*model.backbone.parameters(), *model.patch_embed.parameters()]:
            p.requires_grad_(False)
    opt = adamw(groups, cfg.lr, betas=(0.9, 0.98))  # each group carries its own (layer-wise) lr
    sched = cosine_schedule(opt, cfg.warmup_steps, cfg.max_steps, 0.1)  # as every fine-tuning cell
    order_salt, eval_batch = 0x5E67, seg.eval_batch_size  # batch order; frozen cache and validation batches
    settings = LoopSettings(
        cfg.max_steps, cfg.eval_every, cfg.patience, cfg.batch_size, cfg.seed, order_salt, 1.0, eval_batch
    )
    result = fit(
        model,
        task,
        train,
        val,
        opt,
        settings,
        sched=sched,
        frozen=cfg.mode == "frozen",
        device=device,
        run=run,
        progress=progress,
        desc=f"segmentation {cfg.mode} {spec_name(cfg.labels)} seed={cfg.seed}",
    )
    meta = {
        "kind": task.kind,
        "task": task.name,
        "mode": cfg.mode,
        "labels": str(cfg.labels),
        "n_labels": int(len(train) + len(val_idx)),  # events: train part + in-budget validation part
        "n_label_points": int(sum(len(x) for x in train.labels) + (sum(len(x) for x in val.labels) if val else 0)),
        "seed": cfg.seed,
        "budget": budget,
        "classes": classes,
        "segmentation": seg.to_dict(),
        "class_weights": weights.cpu().tolist(),
        "config": cfg.to_dict(),
        "data_version": manifest["data_version"],
        "backbone": {
            k: bmeta.get(k)
            for k in ("features", "config", "patches", "data_version", "tokenizer_version", "objective")
            + ("backbone_version",)
        },
        "backbone_dir": None if backbone_dir is None else str(backbone_dir),
        "subset": {"digest": budget["digest"], "per_class": {"all": budget["n"]}},
        "train": {
            **train_record(result),
            "n_val": int(len(val_idx)),
            "wall_seconds": time.perf_counter() - t_start,
            "device": str(device),
        },
        "history": result.history,
        "run_id": getattr(run, "run_id", None),
        **(extra_meta or {}),
    }
    from physfm.finetune.model import save_model_dir

    model.cpu()
    return save_model_dir(out_dir, model, meta, WEIGHTS, META)


def load_segmenter(path: str | Path, map_location: str = "cpu") -> tuple[Segmenter, dict[str, Any]]:
    """A saved segmentation model and its meta (verified; no pickle is ever read)."""
    from safetensors.torch import load_file

    from physfm.artifacts import ArtifactError, open_artifact
    from physfm.io import read_json

    artifact = open_artifact(path, "finetuned")
    if artifact.info.get("meta") != META:
        raise ArtifactError(f"{path} is a fine-tuned model, but not a patch segmentation model (no {META})")
    meta = read_json(artifact.path / META)
    state = load_file(str(artifact.path / WEIGHTS), device=map_location)
    b = meta["backbone"]
    model = Segmenter(
        Backbone(BackboneConfig.from_dict(b["config"])),
        PatchConfig(**b["patches"]),
        len(meta["classes"]),
        SegmentationConfig.from_dict(meta["segmentation"]),
    )
    model.load_state_dict(state)
    return model.eval(), meta


@torch.no_grad()
def predict_events(
    model: Segmenter, ev: PointEvents, seg: SegmentationConfig, device: torch.device
) -> list[np.ndarray]:
    """Predicted class of every point of every event."""
    model.to(device).eval()
    out: list[np.ndarray] = []
    for a in range(0, len(ev), seg.eval_batch_size):
        idx = np.arange(a, min(a + seg.eval_batch_size, len(ev)))
        b = {k: v.to(device) for k, v in ev.rows(idx).items() if k != "target"}
        pred = model(**b).argmax(-1).cpu().numpy()
        out += [pred[j, : len(ev.points[i])] for j, i in enumerate(idx)]
    return out


def score_events(labels: list[np.ndarray], preds: list[np.ndarray], n_bootstrap: int, seed: int = 0) -> dict[str, Any]:
    """``metrics`` / ``std`` (bootstrap over events) / ``confusion`` / ``n_events`` of per-point predictions."""
    c = len(SEMANTIC_CLASSES)
    per_event = np.stack([confusion_matrix(y, p, c) for y, p in zip(labels, preds, strict=True)])
    full, std = bootstrap_metrics(per_event, SEMANTIC_CLASSES, n_bootstrap, seed)
    return {
        "metrics": flat_metrics(full),
        "std": std,
        "confusion": full["confusion"],
        "n_points": full["n_points"],
        "n_events": len(labels),
        "lower_bounds": [],
    }


def evaluate_segmentation(
    model_dir: str | Path, data_dir: str | Path, split: str = "test", *, n_bootstrap: int = 200, device: str = "auto"
) -> dict[str, Any]:
    """Per-point metrics of a segmentation model on ``split``, with the cell it belongs to."""
    from physfm.runtime import device_of

    model, meta = load_segmenter(model_dir)
    ds = open_dataset(data_dir, verify=True)
    if ds.data_version != meta["data_version"]:
        print(f"note: model fine-tuned on data_version {meta['data_version']}, scored on {ds.data_version}")
    seg = SegmentationConfig.from_dict(meta["segmentation"])
    ev = load_events(ds, split, list(meta["backbone"]["features"]), None, seg.max_points)
    preds = predict_events(model, ev, seg, device_of(device))
    cell = {k: meta.get(k) for k in ("mode", "labels", "n_labels", "seed", "run_id", "data_version")}
    cell.update(meta.get("cell", {}))
    return {
        **cell,
        "task": "segmentation",
        "split": split,
        "classes": meta["classes"],
        "model_dir": str(model_dir),
        "subset_digest": meta["subset"]["digest"],
        "backbone_objective": meta["backbone"].get("objective"),
        "tokenizer_version": None,
        "backbone_version": meta["backbone"].get("backbone_version"),
        "train": meta["train"],
        "history": meta.get("history", []),
        **score_events(ev.labels, preds, n_bootstrap),
    }


def evaluate_floor(data_dir: str | Path, split: str = "test", *, n_bootstrap: int = 200) -> dict[str, Any]:
    """The zero-label floor (:mod:`physfm.models.segmentation_floor`) scored like a model: mode
    ``floor``, 0 labels; the report's zero-label reference (like the jets' ``cut``)."""
    from physfm.models.segmentation_floor import FloorConfig, floor_segmentation

    ds = open_dataset(data_dir, verify=True)
    if not is_segmentation_dataset(ds.manifest):
        raise DataError(f"{ds.path} is not a lartpc dataset: the segmentation floor needs per-point labels")
    ev = load_events(ds, split, ["x", "y", "z"], None)
    preds = [floor_segmentation(p[:, :3]) for p in ev.points]
    return {
        "mode": "floor",
        "labels": "0",
        "n_labels": 0,
        "seed": 1,
        "backbone": "none",
        "run_name": "baseline floor",
        "task": "segmentation",
        "split": split,
        "classes": list(SEMANTIC_CLASSES),
        "data_version": ds.data_version,
        "config": FloorConfig().to_dict(),
        "train": {},
        "history": [],
        **score_events(ev.labels, preds, n_bootstrap),
    }
