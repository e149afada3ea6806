"""A classification head on the physfm backbone, and how classifiers are saved and loaded.

Heads (``HeadConfig``):

* ``pool="cls"``: the class token's final state (the backbone's :meth:`~physfm.models.Backbone.pool`,
  which mean-pools instead for causal backbones or ones without a class token);
* ``pool="mean"``: the mean of the real particles' final states;
* ``pool="sum"``: OmniJet-α's summation head: a per-particle MLP, summed over the real particles;

followed by ``kind="linear"`` (a linear probe) or ``kind="mlp"`` (one hidden layer, GELU, dropout).

A saved classifier is a directory with ``classifier.safetensors`` (backbone + head weights, no
pickle) and ``classifier.json`` (backbone meta, head config, classes, subset, training record).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from physfm.io import atomic_dir, read_json, sha256_file, write_json
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

    def __post_init__(self) -> None:
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


class Head(nn.Module):
    """Hidden states ``(B, n_cls + L, d)`` + mask ``(B, L)`` -> class logits ``(B, n_classes)``."""

    def __init__(self, backbone_config: BackboneConfig, n_classes: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg, self.bcfg = cfg, backbone_config
        d = backbone_config.d_model
        if cfg.pool == "sum":
            self.particle = nn.Sequential(nn.Linear(d, cfg.hidden), nn.GELU())
            d = cfg.hidden
        if cfg.kind == "linear":
            self.out = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d, n_classes))
        else:
            self.out = nn.Sequential(
                nn.Linear(d, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, n_classes)
            )

    @property
    def uses_class_token_only(self) -> bool:
        """True when only ``h[:, :1]`` is read (frozen training may then cache just that)."""
        return self.cfg.pool == "cls" and self.bcfg.n_cls > 0 and not self.bcfg.causal

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        n_cls = self.bcfg.n_cls
        if self.uses_class_token_only:
            pooled = h[:, 0]
        else:
            parts = h[:, n_cls:] if h.shape[1] > mask.shape[1] else h
            w = mask.unsqueeze(-1).to(parts.dtype)
            if self.cfg.pool == "sum":
                pooled = (self.particle(parts) * w).sum(1)
            else:
                pooled = (parts * w).sum(1) / w.sum(1).clamp(min=1.0)
        return self.out(pooled)


class Classifier(nn.Module):
    """Backbone + head; ``forward(x, mask)`` takes normalised features and returns logits."""

    def __init__(self, backbone: Backbone, n_classes: int, head: HeadConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = Head(backbone.config, n_classes, head)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.head(self.backbone(x, mask), mask)


def layer_depth(name: str, n_layers: int) -> int:
    """Depth of a backbone parameter: 0 for input embeddings/tokens, i+1 for block i, top for ln_f."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith("ln_f"):
        return n_layers + 1
    return 0


def param_groups(
    model: Classifier, mode: str, lr: float, backbone_lr_scale: float, layer_decay: float, weight_decay: float
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
    """Write a fine-tuned model directory atomically: safetensors ``weights`` + JSON ``meta_name``
    (with the weights' sha256); return the meta as written."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / weights))
        meta = {**meta, "weights_sha256": sha256_file(tmp / weights)}
        write_json(tmp / meta_name, meta)
    return meta


def read_model_dir(
    path: str | Path, what: str, weights: str = WEIGHTS, meta_name: str = META, map_location: str = "cpu"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(meta, state_dict)`` of a directory written by :func:`save_model_dir`, after checking the
    weights against the recorded sha256 (no pickle is ever read); ``what`` names it in errors."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / meta_name).is_file():
        raise FileNotFoundError(f"{path} is not a {what} (no {meta_name}); create one with `physfm finetune`")
    meta = read_json(path / meta_name)
    if sha256_file(path / weights) != meta["weights_sha256"]:
        raise ValueError(f"{path / weights} does not match {meta_name} (modified or truncated); re-run physfm finetune")
    return meta, load_file(str(path / weights), device=map_location)


def save_classifier(out_dir: str | Path, model: Classifier, meta: dict[str, Any]) -> dict[str, Any]:
    """Write a classifier directory atomically (safetensors weights + JSON meta)."""
    return save_model_dir(out_dir, model, meta)


def load_classifier(path: str | Path, map_location: str = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """Load a classifier directory (safetensors weights + JSON; no pickle is ever read)."""
    meta, state = read_model_dir(path, "fine-tuned classifier", map_location=map_location)
    backbone = Backbone(BackboneConfig.from_dict(meta["backbone"]["config"]))
    model = Classifier(backbone, len(meta["classes"]), HeadConfig.from_dict(meta["head"]))
    model.load_state_dict(state)
    return model.eval(), meta


def head_meta(cfg: HeadConfig) -> dict[str, Any]:
    return asdict(cfg)


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
) -> np.ndarray:
    """Apply ``fn(x_norm, mask)`` to normalised numpy inputs in batches; concatenate the numpy outputs.
    With ``tokens`` (``(N, L)`` ids, e.g. PolarBERT's DOM ids) it calls ``fn(x_norm, mask, tokens=...)``."""
    outs = []
    for a in range(0, len(x), batch_size):
        xb = torch.from_numpy(normalize(x[a : a + batch_size], mask[a : a + batch_size], meta)).to(device)
        mb = torch.from_numpy(mask[a : a + batch_size]).to(device)
        if tokens is None:
            outs.append(fn(xb, mb).float().cpu().numpy())
        else:
            tb = torch.from_numpy(tokens[a : a + batch_size]).to(device)
            outs.append(fn(xb, mb, tokens=tb).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,), dtype=np.float32)
