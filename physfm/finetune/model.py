"""Task heads on the physfm backbone, the backbone + head model, and how fine-tuned models are saved and loaded.

The classification (and regression) head (``HeadConfig``):

* ``pool="cls"``: the class token's final state (the backbone's :meth:`~physfm.models.Backbone.pool`,
  which mean-pools instead for causal backbones or ones without a class token);
* ``pool="mean"``: the mean of the real particles' final states;
* ``pool="sum"``: OmniJet-α's summation head: a per-particle MLP, summed over the real particles;

followed by ``kind="linear"`` (a linear probe) or ``kind="mlp"`` (one hidden layer, GELU, dropout).
With ``inputs`` (:mod:`physfm.finetune.head_inputs`: the jet observables, LineFit), the event's side
inputs, standardised by the head (:class:`SideNorm`), are concatenated to the pooled state.

:class:`PooledMLP` is the event-level MLP of the direction task. :class:`TaskModel` is any backbone +
a task's head (:mod:`physfm.finetune.task`).

A saved model (:func:`save_model`, :func:`load_model`, every task) is a directory with
``<task file>.safetensors`` (backbone + head weights, no pickle; ``classifier.*`` for classification,
``direction.*`` for direction), ``<task file>.json`` (task, backbone meta, head config, classes or
target, subset, training record) and ``manifest.json`` (:mod:`physfm.artifacts`, kind ``finetuned``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from physfm.artifacts import ArtifactError, input_versions, open_artifact, write_artifact
from physfm.io import atomic_dir, read_json, write_json
from physfm.models.backbone import Backbone, BackboneConfig, normalize

POOLS = ("cls", "mean", "sum")
HEADS = ("linear", "mlp")
WEIGHTS = "classifier.safetensors"
META = "classifier.json"


@dataclass
class HeadConfig:
    pool: str = "cls"
    kind: str = "mlp"
    hidden: int = 128
    dropout: float = 0.1
    inputs: list[str] = field(default_factory=list)  # side inputs (physfm.finetune.head_inputs.SOURCES)

    def __post_init__(self) -> None:
        from physfm.finetune.head_inputs import check_inputs

        self.inputs = check_inputs(self.inputs)
        if self.pool not in POOLS:
            raise ValueError(f"head pool '{self.pool}' is not one of {POOLS}")
        if self.kind not in HEADS:
            raise ValueError(f"head kind '{self.kind}' is not one of {HEADS}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        known = {f.name for f in fields(cls)}
        if unknown := set(d) - known:
            raise ValueError(f"unknown head options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class SideNorm(nn.Module):
    """Raw side inputs ``(B, k)`` -> standardised ``(B, k)`` (NaN -> 0, the mean), with the ``mean``/``std`` of
    :func:`physfm.finetune.head_inputs.fit_norm` (recorded in the head meta's ``side``; buffers not saved)."""

    def __init__(self, side: dict[str, Any]) -> None:
        super().__init__()
        self.columns = list(side["columns"])
        if not len(self.columns) == len(side["mean"]) == len(side["std"]):
            raise ValueError(f"side norm of {len(self.columns)} columns has {len(side['mean'])} means")
        self.register_buffer("mean", torch.tensor(side["mean"], dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(side["std"], dtype=torch.float32), persistent=False)

    def __len__(self) -> int:
        return len(self.columns)

    def forward(self, side: Tensor) -> Tensor:
        return torch.nan_to_num((side.float() - self.mean) / self.std, nan=0.0)


def side_norm(head: dict[str, Any]) -> SideNorm | None:
    """The :class:`SideNorm` of a head meta with side inputs (its ``side`` entry), else None."""
    if not head.get("inputs"):
        return None
    if "side" not in head:
        raise ValueError(f"a head with inputs {head['inputs']} needs their standardisation ('side')")
    return SideNorm(head["side"])


def with_side(pooled: Tensor, norm: SideNorm | None, side: Tensor | None) -> Tensor:
    """``pooled`` ``(B, d)``, with the standardised side inputs concatenated when the head reads some."""
    if norm is None:
        return pooled
    if side is None:
        raise ValueError(f"this head reads side inputs {norm.columns}: pass side=")
    return torch.cat([pooled, norm(side).to(pooled.dtype)], dim=-1)


class Head(nn.Module):
    """Hidden states ``(B, n_cls + L, d)`` + mask ``(B, L)`` (+ side inputs ``(B, k)``) -> logits ``(B, n_classes)``."""

    def __init__(
        self, backbone_config: BackboneConfig, n_classes: int, cfg: HeadConfig, side: SideNorm | None = None
    ) -> None:
        super().__init__()
        self.cfg, self.bcfg, self.side = cfg, backbone_config, side
        d = backbone_config.d_model
        if cfg.pool == "sum":
            self.particle = nn.Sequential(nn.Linear(d, cfg.hidden), nn.GELU())
            d = cfg.hidden
        d += 0 if side is None else len(side)
        if cfg.kind == "linear":
            self.out = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d, n_classes))
        else:
            self.out = nn.Sequential(
                nn.Linear(d, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, n_classes)
            )

    @classmethod
    def from_meta(cls, backbone_config: BackboneConfig, n_classes: int, head: dict[str, Any]) -> Head:
        """The head of a head meta (:class:`HeadConfig`'s fields, plus ``side`` when it has inputs)."""
        cfg = HeadConfig.from_dict({k: v for k, v in head.items() if k != "side"})
        return cls(backbone_config, n_classes, cfg, side_norm(head))

    @property
    def uses_class_token_only(self) -> bool:
        """True when only ``h[:, :1]`` is read (frozen training may then cache just that)."""
        return uses_class_token_only(self.bcfg, self.cfg.pool)

    def forward(self, h: Tensor, mask: Tensor, side: Tensor | None = None) -> Tensor:
        if self.cfg.pool == "sum":
            parts, w = particle_states(h, mask, self.bcfg)
            return self.out(with_side((self.particle(parts) * w).sum(1), self.side, side))
        return self.out(with_side(pool_states(h, mask, self.bcfg, self.cfg.pool), self.side, side))


def uses_class_token_only(backbone_config: BackboneConfig, pool: str) -> bool:
    """True when a head pooling ``pool`` reads only ``h[:, :1]`` (frozen training may cache just that)."""
    return pool == "cls" and backbone_config.n_cls > 0 and not backbone_config.causal


def particle_states(h: Tensor, mask: Tensor, backbone_config: BackboneConfig) -> tuple[Tensor, Tensor]:
    """Particle states ``(B, L, d)`` of ``h`` (class tokens dropped) and ``(B, L, 1)`` weights, 1 for real ones."""
    parts = h[:, backbone_config.n_cls :] if h.shape[1] > mask.shape[1] else h
    return parts, mask.unsqueeze(-1).to(parts.dtype)


def pool_states(h: Tensor, mask: Tensor, backbone_config: BackboneConfig, pool: str) -> Tensor:
    """``(B, d)`` event state: the class token's (``cls``, where the backbone has one) or the real particles' mean."""
    if uses_class_token_only(backbone_config, pool):
        return h[:, 0]
    parts, w = particle_states(h, mask, backbone_config)
    return (parts * w).sum(1) / w.sum(1).clamp(min=1.0)


class PooledMLP(nn.Sequential):
    """Hidden states + mask (+ side inputs) -> pooled event state (+ standardised side inputs) -> Linear,
    GELU, Dropout, Linear -> ``(B, n_out)``; ``unit``: normalised to unit length (directions). The MLP of
    regression-style heads.

    ``seed``: ``n_out`` column positions of the raw side inputs that are a first guess (LineFit's
    direction): the MLP predicts a correction, ``output = seed + MLP(...)`` (then normalised), and its last
    layer starts at zero, so an untrained head returns the seed itself."""

    def __init__(
        self,
        backbone_config: BackboneConfig,
        n_out: int,
        pool: str,
        hidden: int,
        dropout: float,
        unit: bool = False,
        side: SideNorm | None = None,
        seed: Sequence[int] = (),
    ) -> None:
        d = backbone_config.d_model + (0 if side is None else len(side))
        super().__init__(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))
        self.bcfg, self.pool, self.unit, self.seed = backbone_config, pool, unit, list(seed)
        if self.seed:
            if side is None or len(self.seed) != n_out:
                raise ValueError(f"a seeded head needs {n_out} seed columns of its side inputs, got {self.seed}")
            nn.init.zeros_(self[3].weight)
            nn.init.zeros_(self[3].bias)
        self.side = side  # after the layers: a module of the sequence, but forward runs the MLP's 4 only

    @property
    def uses_class_token_only(self) -> bool:
        return uses_class_token_only(self.bcfg, self.pool)

    def forward(self, h: Tensor, mask: Tensor, side: Tensor | None = None) -> Tensor:  # type: ignore[override]
        y = with_side(pool_states(h, mask, self.bcfg, self.pool), self.side, side)
        for layer in list(self)[:4]:  # Linear, GELU, Dropout, Linear (not the side norm)
            y = layer(y)
        if self.seed:
            assert side is not None  # with_side refused a missing one
            y = side[:, self.seed].float() + y.float()
        return nn.functional.normalize(y.float(), dim=-1) if self.unit else y


class TaskModel(nn.Module):
    """Backbone + a task's head: ``forward(x, mask, tokens=None, side=None)`` takes normalised features
    (and, for PolarBERT backbones, DOM ids; for a head with inputs, the raw side inputs
    :mod:`physfm.finetune.head_inputs`) and returns the head's output (logits, a direction, a value, ...)."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor, mask: Tensor, tokens: Tensor | None = None, side: Tensor | None = None) -> Tensor:
        return self.decode(self.backbone(x, mask, tokens=tokens), x, mask, tokens, side)

    def encode(self, x: Tensor, mask: Tensor, tokens: Tensor | None = None, side: Tensor | None = None) -> Tensor:
        """The backbone states the head reads (only the class token's when that is all it reads): what
        frozen training caches (:func:`physfm.finetune.loop.fit`); never the side inputs."""
        h = self.backbone(x, mask, tokens=tokens)
        return h[:, :1] if getattr(self.head, "uses_class_token_only", False) else h

    def decode(
        self, h: Tensor, x: Tensor, mask: Tensor, tokens: Tensor | None = None, side: Tensor | None = None
    ) -> Tensor:
        """The head's output from :meth:`encode`'s states (and the batch's side inputs, when it reads some)."""
        return self.head(h, mask) if side is None else self.head(h, mask, side)


def layer_depth(name: str, n_layers: int) -> int:
    """Depth of a backbone parameter: 0 for input embeddings/tokens, i+1 for block i, top for ln_f."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith("ln_f"):
        return n_layers + 1
    return 0


def param_groups(
    model: TaskModel, mode: str, lr: float, backbone_lr_scale: float, layer_decay: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups for a mode.

    ``scratch``: everything at ``lr``. ``finetune``: the head at ``lr``, backbone parameters at
    ``lr * backbone_lr_scale * layer_decay**(top - depth)`` (the last block decays least).
    ``frozen``: the head only. Biases, norms and embeddings get no weight decay.
    """
    groups: dict[tuple[float, float], list[Tensor]] = {}

    def add(p: Tensor, name: str, scale: float) -> None:
        no_decay = p.ndim < 2 or "embed" in name or name.endswith("cls")
        groups.setdefault((lr * scale, 0.0 if no_decay else weight_decay), []).append(p)

    for name, p in model.head.named_parameters():
        add(p, name, 1.0)
    if mode != "frozen":
        top = model.backbone.config.n_layers + 1
        for name, p in model.backbone.named_parameters():
            scale = 1.0 if mode == "scratch" else backbone_lr_scale * layer_decay ** (top - layer_depth(name, top - 1))
            add(p, name, scale)
    return [{"params": ps, "lr": g_lr, "base_lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]


# --------------------------------------------------------------------------- saving / loading
def save_model_dir(
    out_dir: str | Path, model: nn.Module, meta: dict[str, Any], weights: str = WEIGHTS, meta_name: str = META
) -> dict[str, Any]:
    """Write a fine-tuned model directory atomically: safetensors ``weights``, JSON ``meta_name`` and
    the artefact manifest (kind ``finetuned``; its version hashes the weights and the input data,
    backbone and tokenizer versions; the meta, with its timings, is a record). Return the meta."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / weights))
        write_json(tmp / meta_name, meta)
        inputs = input_versions(meta, meta.get("backbone") or {})
        write_artifact(tmp, "finetuned", [weights, meta_name], inputs, info={"meta": meta_name}, records=[meta_name])
    return meta


def save_model(out_dir: str | Path, model: TaskModel, meta: dict[str, Any]) -> dict[str, Any]:
    """Write a fine-tuned model directory: the file names are its task's (``meta["task"]``)."""
    from physfm.finetune.task import task_from_meta

    weights, meta_name = task_from_meta(meta).files
    return save_model_dir(out_dir, model, meta, weights, meta_name)


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[TaskModel, Any, dict[str, Any]]:
    """``(model, task, meta)`` of a fine-tuned model directory of any task, verified (no pickle is read)."""
    from safetensors.torch import load_file

    from physfm.finetune.task import task_from_meta

    artifact = open_artifact(path, "finetuned")
    meta_name = artifact.info.get("meta")
    if not isinstance(meta_name, str) or not (artifact.path / meta_name).is_file():
        raise ArtifactError(f"{path}: the manifest names no model meta file; re-create it with `physfm finetune`")
    meta = read_json(artifact.path / meta_name)
    task = task_from_meta(meta)
    if task.files[1] != meta_name:
        raise ArtifactError(f"{path}: a {task.name} model keeps its meta in {task.files[1]}, not {meta_name}")
    backbone = Backbone(BackboneConfig.from_dict(meta["backbone"]["config"]))
    model = TaskModel(backbone, task.head(backbone.config, meta["head"]))
    model.load_state_dict(load_file(str(artifact.path / task.files[0]), device=map_location))
    return model.eval(), task, meta


# --------------------------------------------------------------------------- inference helpers
@torch.no_grad()
def batched(
    fn: Any,
    x: np.ndarray,
    mask: np.ndarray,
    meta: dict[str, Any],
    batch_size: int,
    device: torch.device,
    tokens: np.ndarray | None = None,
    side: np.ndarray | None = None,
) -> np.ndarray:
    """Apply ``fn(x_norm, mask)`` to normalised numpy inputs in batches; concatenate the numpy outputs.
    With ``tokens`` (``(N, L)`` ids, e.g. PolarBERT's DOM ids) it calls ``fn(x_norm, mask, tokens=...)``,
    with ``side`` (``(N, k)`` raw side inputs of a head, :mod:`physfm.finetune.head_inputs`) ``side=...``."""
    outs = []
    for a in range(0, len(x), batch_size):
        xb = torch.from_numpy(normalize(x[a : a + batch_size], mask[a : a + batch_size], meta)).to(device)
        mb = torch.from_numpy(mask[a : a + batch_size]).to(device)
        per_event = {"tokens": tokens, "side": side}
        extra = {k: torch.from_numpy(v[a : a + batch_size]).to(device) for k, v in per_event.items() if v is not None}
        outs.append(fn(xb, mb, **extra).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,), dtype=np.float32)
