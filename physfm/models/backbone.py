"""The physfm backbone: one pre-LayerNorm transformer encoder over the particles of an event.

In the spirit of nanoGPT's ``model.py``: a handful of small modules, nothing hidden.

* Input: continuous per-particle features (``n_features`` > 0, embedded by a small MLP; the MPM
  papers found continuous inputs beat token inputs), token ids (``vocab_size`` > 0, an embedding
  table), or both (the embeddings are summed, e.g. a sensor id plus its pulse features).
* ``local="knn"`` adds PET's local kNN edge block (:mod:`physfm.models.pet`) to the input embeddings.
* ``n_cls`` learned class/register tokens are prepended; the first is the event's class token.
  In a causal model the class token comes first and sees only itself: it is the start-of-sequence
  token of next-token prediction, and :meth:`Backbone.embed` mean-pools the particles instead.
* Attention is ``torch.nn.functional.scaled_dot_product_attention``: the fused flash kernel on GPU
  when there is no padding mask, the memory-efficient fused kernel when there is one.
* Padding (``mask`` False) is never attended to. ``causal=True`` also blocks attention to later
  positions, so changing particle ``j`` can never change the output at any position ``i < j``.
* Masked modelling replaces the input embedding of the ``masked`` positions by a learned mask
  embedding (``mask_token=True``), optionally plus a learned embedding of the particle's position
  in the (pT-ordered) sequence (``pos_embedding="masked"``: MPM's ordered prediction, which tells
  otherwise identical mask tokens apart without giving the unmasked set an order).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physfm.models.pet import LocalBlock

POS_EMBEDDINGS = ("none", "all", "masked")
LOCAL_BLOCKS = ("none", "knn")


@dataclass
class BackboneConfig:
    """Sizes and switches of a :class:`Backbone`; stored as ``meta["config"]`` with every saved model."""

    n_features: int = 13  # continuous inputs per particle (0 = token ids only)
    vocab_size: int = 0  # token-id vocabulary (0 = continuous inputs only)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    n_cls: int = 1  # class/register tokens prepended to the particles
    causal: bool = False
    max_len: int = 128  # longest particle sequence (size of the position table)
    pos_embedding: str = "none"  # "none" (a set), "all" (a sequence) or "masked" (ordered MPM)
    mask_token: bool = False  # learned embedding for masked particles (MPM, regression)
    bias: bool = True
    local: str = "none"  # "knn": PET's local kNN edge block in front of the transformer (physfm.models.pet)
    local_k: int = 10  # neighbours per particle in the local block
    local_coords: list[int] = field(default_factory=lambda: [1, 2])  # input columns of (deta, dphi)

    def __post_init__(self) -> None:
        if self.n_features <= 0 and self.vocab_size <= 0:
            raise ValueError("BackboneConfig needs continuous features (n_features > 0) or token ids (vocab_size > 0)")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.pos_embedding not in POS_EMBEDDINGS:
            raise ValueError(f"pos_embedding must be one of {POS_EMBEDDINGS}, got '{self.pos_embedding}'")
        if self.pos_embedding == "masked" and not self.mask_token:
            raise ValueError("pos_embedding='masked' needs mask_token=True")
        if self.local not in LOCAL_BLOCKS:
            raise ValueError(f"local must be one of {LOCAL_BLOCKS}, got '{self.local}'")
        if self.local != "none":
            if self.n_features <= 0:
                raise ValueError("local='knn' needs continuous inputs (n_features > 0) for its (deta, dphi) kNN")
            if self.causal:
                raise ValueError("local='knn' mixes each particle with its neighbours, later ones too: not causal")
            if self.local_k < 1 or not self.local_coords or max(self.local_coords) >= self.n_features:
                raise ValueError(
                    f"local_k must be >= 1 and local_coords {self.local_coords} input columns (< {self.n_features})"
                )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneConfig:
        """From a dict (e.g. ``meta["config"]``); unknown keys are an error that names them."""
        known = {f.name for f in fields(cls)}
        if unknown := set(d) - known:
            raise ValueError(f"unknown BackboneConfig keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SelfAttention(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )
        return self.resid_dropout(self.proj(y.transpose(1, 2).contiguous().view(b, t, c)))


class MLP(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
        x = x + self.attn(self.ln1(x), attn_mask, is_causal)
        return x + self.mlp(self.ln2(x))


def padding_attention_mask(mask: Tensor, n_prefix: int, causal: bool) -> tuple[Tensor | None, bool]:
    """Boolean ``(B, 1, T, T)`` attention mask (True = may attend) over ``n_prefix`` always-real tokens
    followed by the particles (``mask`` ``(B, L)``, True = real), or ``None`` together with ``is_causal``
    when SDPA can use its fused mask-free path (no padding)."""
    b, length = mask.shape
    t = n_prefix + length
    if bool(mask.all()):
        return None, causal  # no padding: flash attention on GPU
    keys = torch.cat([mask.new_ones(b, n_prefix), mask], dim=1)
    allowed = keys[:, None, None, :].expand(b, 1, t, t)
    eye = torch.eye(t, dtype=torch.bool, device=mask.device)
    allowed = allowed | eye  # padded queries attend to themselves: no all-masked rows, no NaN
    if causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=mask.device).tril()
    return allowed, False


class Backbone(nn.Module):
    """Transformer encoder over particles; see the module docstring for inputs and masks."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.d_model
        if cfg.n_features > 0:
            self.feature_embed = nn.Sequential(nn.Linear(cfg.n_features, d), nn.GELU(), nn.Linear(d, d))
        if cfg.vocab_size > 0:
            self.token_embed = nn.Embedding(cfg.vocab_size, d)
        if cfg.n_cls > 0:
            self.cls = nn.Parameter(torch.zeros(1, cfg.n_cls, d))
        if cfg.mask_token:
            self.mask_embed = nn.Parameter(torch.zeros(1, 1, d))
        if cfg.pos_embedding != "none":
            self.pos_embed = nn.Embedding(cfg.max_len, d)
        if cfg.local != "none":
            self.local = LocalBlock(d, cfg.local_k, cfg.local_coords)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d, bias=cfg.bias)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        for p in (getattr(self, "cls", None), getattr(self, "mask_embed", None)):
            if p is not None:
                nn.init.normal_(p, mean=0.0, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ forward
    def embed_inputs(
        self, x: Tensor | None, mask: Tensor, tokens: Tensor | None = None, masked: Tensor | None = None
    ) -> Tensor:
        """``(B, L, d_model)`` input embeddings of the particles (no class tokens yet)."""
        cfg = self.config
        parts = []
        if cfg.n_features > 0:
            if x is None:
                raise ValueError("this backbone embeds continuous features: pass x (B, L, n_features)")
            if x.shape[-1] != cfg.n_features:
                raise ValueError(f"x has {x.shape[-1]} features per particle, the backbone expects {cfg.n_features}")
            parts.append(self.feature_embed(x))
        if cfg.vocab_size > 0:
            if tokens is None:
                raise ValueError("this backbone embeds token ids: pass tokens (B, L) int64")
            parts.append(self.token_embed(tokens.clamp(min=0)))
        h = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        if cfg.local != "none":  # masked particles are neither neighbours nor given local features
            h = h + self.local(x, h, mask if masked is None else mask & ~masked)
        length = h.shape[1]
        if length > cfg.max_len:
            raise ValueError(f"sequence of {length} particles is longer than the backbone's max_len={cfg.max_len}")
        pos = self.pos_embed.weight[:length].unsqueeze(0) if cfg.pos_embedding != "none" else None
        if cfg.pos_embedding == "all":
            h = h + pos
        if masked is not None:
            if not cfg.mask_token:
                raise ValueError("masked positions given but the backbone has no mask token (mask_token=False)")
            fill = self.mask_embed.to(h.dtype) + (pos if cfg.pos_embedding == "masked" else 0)
            h = torch.where(masked.unsqueeze(-1), fill.expand_as(h), h)
        return h * mask.unsqueeze(-1).to(h.dtype)

    def attention_mask(self, mask: Tensor, causal: bool) -> tuple[Tensor | None, bool]:
        """Boolean ``(B, 1, T, T)`` mask (True = may attend) over class tokens + particles, or ``None``
        together with ``is_causal`` when SDPA can use its fused mask-free path."""
        return padding_attention_mask(mask, self.config.n_cls, causal)

    def forward(
        self,
        x: Tensor | None,
        mask: Tensor,
        *,
        tokens: Tensor | None = None,
        masked: Tensor | None = None,
        causal: bool | None = None,
    ) -> Tensor:
        """Hidden states ``(B, n_cls + L, d_model)`` after the final LayerNorm.

        x: ``(B, L, n_features)`` normalised features (see :func:`normalize`); mask: ``(B, L)`` bool,
        True = real particle; tokens: ``(B, L)`` int64 ids when ``vocab_size`` > 0; masked: ``(B, L)``
        bool, positions whose input is replaced by the mask embedding; causal: override the config.
        """
        causal = self.config.causal if causal is None else causal
        h = self.embed_inputs(x, mask, tokens, masked)
        if self.config.n_cls > 0:
            h = torch.cat([self.cls.to(h.dtype).expand(h.shape[0], -1, -1), h], dim=1)
        h = self.drop(h)
        attn_mask, is_causal = self.attention_mask(mask, causal)
        for block in self.blocks:
            h = block(h, attn_mask, is_causal)
        return self.ln_f(h)

    def pool(self, h: Tensor, mask: Tensor) -> Tensor:
        """``(B, d_model)`` event embedding from hidden states: the class token's state, or the mean
        over real particles when there is no class token or the model is causal."""
        if self.config.n_cls > 0 and not self.config.causal:
            return h[:, 0]
        parts = h[:, self.config.n_cls :]
        w = mask.unsqueeze(-1).to(parts.dtype)
        return (parts * w).sum(1) / w.sum(1).clamp(min=1.0)

    def embed(self, x: Tensor | None, mask: Tensor, *, tokens: Tensor | None = None) -> Tensor:
        """``(B, d_model)`` event embedding (see :meth:`pool`)."""
        return self.pool(self(x, mask, tokens=tokens), mask)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B / nanoGPT estimate."""
        cfg = self.config
        n = self.n_params() - (self.token_embed.weight.numel() if cfg.vocab_size > 0 else 0)
        return 6.0 * n + 12.0 * cfg.n_layers * cfg.d_model * (seq_len + cfg.n_cls)


def normalize(x: Any, mask: Any, meta: dict[str, Any]) -> Any:
    """Apply ``meta["norm"]`` (per-feature mean/std fitted on the train split) and zero the padding.

    Works on numpy arrays and torch tensors; ``x`` is ``(..., L, F)`` raw features in
    ``meta["features"]`` order and ``mask`` is ``(..., L)`` bool. The features listed in
    ``meta["input_fill"]["features"]`` (inputs the data set lacks, see
    :mod:`physfm.finetune.backbone_source`) are set to a raw zero first, the backbone's convention.
    """
    mean, std = meta["norm"]["mean"], meta["norm"]["std"]
    if x.shape[-1] != len(mean):
        raise ValueError(f"x has {x.shape[-1]} features; the backbone was trained on {meta.get('features', len(mean))}")
    if fill := (meta.get("input_fill") or {}).get("features"):
        cols = [list(meta["features"]).index(f) for f in fill]
        x = x.clone() if isinstance(x, Tensor) else np.array(x, dtype=np.float32)
        x[..., cols] = 0
    if isinstance(x, Tensor):
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device)
        return (x - m) / s * mask.unsqueeze(-1).to(x.dtype)
    out = (np.asarray(x, dtype=np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return out * np.asarray(mask)[..., None].astype(np.float32)


def denormalize(x: np.ndarray, mask: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`normalize` on numpy arrays: raw features in ``meta["features"]`` order, zero on padding."""
    mean, std = np.asarray(meta["norm"]["mean"], np.float32), np.asarray(meta["norm"]["std"], np.float32)
    return (np.asarray(x, np.float32) * std + mean) * np.asarray(mask)[..., None].astype(np.float32)
