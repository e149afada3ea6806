"""``mpm2``: masked particle modelling v2 (arXiv 2409.12589, jetssl): an MAE encoder/decoder split.

MPM v1 (``mpm``) stays as it is, so the method benchmark shows the step.

* **Encoder** = the backbone, on the *unmasked* particles only (:func:`visible_subset` packs them into
  a shorter padded sequence, so the masked particles are not even padding of the encoder's input), with
  ``registers`` extra register tokens after the class token (``n_cls = 1 + registers``). The encoder is
  what fine-tuning reuses: a plain set transformer with no mask token.
* **Decoder**: a smaller transformer (``decoder_dim``, ``decoder_layers``, ``decoder_heads``) over the
  encoder's class/register states and every real particle position: unmasked particles carry their
  encoder state (projected), masked ones a learned mask token plus a learned embedding of their pT rank
  (their position in the pT-ordered sequence), which tells otherwise identical mask tokens apart.
* **Targets** of the masked particles: the tokenizer's k-means code (cross-entropy) and, with weight
  ``pid_weight`` (0.3), the particle ID (cross-entropy over the five ``is_*`` flags), plus the
  class-token global targets of every objective (``global_weight``).
* ``mask_fraction``: 0.35 by default (the paper uses 30–40 %).

* ``flow_weight`` > 0 adds the paper's continuous target: a flow-matching density head
  (:class:`physfm.models.flow.VelocityHead`, rectified flow with logit-normal times) on each masked
  particle's normalised input features, conditioned on its decoder state, beside the code
  cross-entropy (0 = off, the default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from physfm.features import NpBatch
from physfm.models.backbone import Backbone, BackboneConfig, Block, padding_attention_mask
from physfm.models.flow import VelocityHead, interpolate, sample_time
from physfm.models.objectives import (
    PID_FEATURES,
    Objective,
    ObjectiveOptions,
    Stats,
    _stat,
    masked_particle_loss,
    prepare_masked,
    register_objective,
)


def visible_subset(x: Tensor, visible: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The visible particles packed to the front, order kept: features ``(B, V, F)`` (zero where
    padded), mask ``(B, V)`` and their positions ``(B, V)`` in the full sequence, ``V`` the most visible
    particles of any event. No masked or padded particle's features are in the packed tensor."""
    order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)
    n_vis = int(visible.sum(1).max()) if visible.numel() else 0
    idx = order[:, :n_vis]
    vmask = torch.gather(visible, 1, idx)
    xv = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])) * vmask.unsqueeze(-1).to(x.dtype)
    return xv, vmask, idx


class MAEDecoder(nn.Module):
    """Small transformer over [encoder class/registers, all particle positions]; see the module docstring."""

    def __init__(self, d_encoder: int, dim: int, layers: int, heads: int, max_len: int) -> None:
        super().__init__()
        cfg = BackboneConfig(n_features=1, d_model=dim, n_layers=layers, n_heads=heads)
        self.proj = nn.Linear(d_encoder, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.rank_embed = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.rank_embed.weight, std=0.02)

    def forward(self, h_enc: Tensor, n_cls: int, idx: Tensor, vmask: Tensor, mask: Tensor, masked: Tensor) -> Tensor:
        """``(B, L, dim)`` decoder states of every particle position."""
        b, length = mask.shape
        if length > self.rank_embed.num_embeddings:
            raise ValueError(f"{length} particles; the decoder's pT-rank table has {self.rank_embed.num_embeddings}")
        z = self.proj(h_enc)
        prefix, vis = z[:, :n_cls], z[:, n_cls:]
        fill = (self.mask_token + self.rank_embed.weight[:length].unsqueeze(0)).to(z.dtype).expand(b, -1, -1)
        seq = torch.where(masked.unsqueeze(-1), fill, torch.zeros_like(fill))
        src = vis * vmask.unsqueeze(-1).to(vis.dtype)
        seq = seq.scatter_add(1, idx.unsqueeze(-1).expand(-1, -1, seq.shape[-1]), src)
        seq = seq * mask.unsqueeze(-1).to(seq.dtype)
        hd = torch.cat([prefix, seq], dim=1)
        attn, is_causal = padding_attention_mask(mask, n_cls, False)
        for block in self.blocks:
            hd = block(hd, attn, is_causal)
        return self.ln(hd)[:, n_cls:]


@dataclass
class MPM2Options(ObjectiveOptions):
    mask_fraction: float = 0.35  # fraction of each event's particles masked (paper: 0.3-0.4)
    registers: int = 4  # register tokens after the class token (n_cls = 1 + registers)
    decoder_dim: int = 64
    decoder_layers: int = 2
    decoder_heads: int = 4
    pid_weight: float = 0.3  # weight of the particle-ID reconstruction (0 = off)
    flow_weight: float = 0.0  # weight of the flow-matching head on the masked particles' features (0 = off)


@register_objective
class MaskedParticleModelling2(Objective):
    """MPM v2: MAE encoder/decoder, registers, code + particle-ID reconstruction; see the module docstring."""

    name = "mpm2"
    Options = MPM2Options

    def __init__(self, d_model: int, options: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(d_model, options, **kw)
        o = self.options
        if not 0 < o.mask_fraction < 1:
            raise ValueError(f"mpm2 mask_fraction must lie in (0, 1), got {o.mask_fraction}")
        if o.decoder_dim % o.decoder_heads:
            raise ValueError(f"mpm2 decoder_dim={o.decoder_dim} must be divisible by decoder_heads={o.decoder_heads}")
        self.d_model = d_model
        self.head = nn.Linear(o.decoder_dim, self.codebook_size)
        if o.pid_weight > 0:
            self.pid_head = nn.Linear(o.decoder_dim, len(PID_FEATURES))
        if o.flow_weight > 0:
            if self.n_features <= 0:
                raise ValueError("mpm2 flow_weight > 0 needs continuous input features (n_features > 0)")
            self.flow_head = VelocityHead(o.decoder_dim, self.n_features, 0, 2 * o.decoder_dim, 2, 32)

    @classmethod
    def configure_backbone(cls, model: dict[str, Any], options: dict[str, Any], codebook_size: int) -> dict[str, Any]:
        registers = int(options.get("registers", MPM2Options.registers))
        return {**model, "causal": False, "mask_token": False, "n_cls": 1 + registers}

    @classmethod
    def raw_features(cls, options: dict[str, Any]) -> list[str]:
        return list(PID_FEATURES) if options.get("pid_weight", MPM2Options.pid_weight) > 0 else []

    def attach(self, backbone: Backbone) -> None:
        """The decoder's pT-rank table is as long as the backbone's sequences."""
        if not hasattr(self, "decoder"):
            o = self.options
            self.decoder = MAEDecoder(
                self.d_model, o.decoder_dim, o.decoder_layers, o.decoder_heads, backbone.config.max_len
            ).to(next(backbone.parameters()).device)

    def prepare(self, batch: NpBatch, *, salt: int) -> NpBatch:
        return prepare_masked(batch, self.options.mask_fraction, self.options.pid_weight, salt)

    def encode(self, model: Backbone, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Encoder states ``(B, n_cls + V, d)`` of the visible particles, their mask and positions."""
        visible = batch["mask"] & ~batch["masked"]
        xv, vmask, idx = visible_subset(batch["x"], visible)
        return model(xv, vmask), vmask, idx

    def forward(self, model: Backbone, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        if not hasattr(self, "decoder"):
            raise RuntimeError("mpm2 has no decoder yet: call objective.attach(backbone) before training")
        masked, mask = batch["masked"], batch["mask"]
        h, vmask, idx = self.encode(model, batch)
        n_cls = model.config.n_cls
        hd = self.decoder(h, n_cls, idx, vmask, mask, masked)[masked]
        loss, stats = masked_particle_loss(self, hd, batch)
        if self.options.flow_weight > 0:
            loss_flow, flow_sum = self.flow_loss(hd, batch["x"][masked], batch["event_key"])
            stats["loss_flow"] = _stat(flow_sum, hd.shape[0])
            loss = loss + self.options.flow_weight * loss_flow
        loss_g, gstats = self.global_loss(model, h, {**batch, "mask": vmask})
        stats.update(gstats)
        loss = loss + self.global_weight * loss_g
        stats["loss"] = _stat(loss * len(mask), len(mask))
        return loss, stats

    def flow_loss(self, hd: Tensor, x0: Tensor, event_key: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and sum over the masked particles of the flow-matching error on their features ``x0``
        ``(M, F)``, given their decoder states ``hd`` ``(M, dim)``; validation noise is fixed by the batch."""
        m = x0.shape[0]
        gen = None if self.training else torch.Generator().manual_seed(int(event_key[0]) & 0x7FFFFFFF)
        t = sample_time(m, "logit_normal", gen).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device) if gen is not None else torch.randn_like(x0)
        xt = interpolate(x0, noise, t)
        v = self.flow_head(hd[:, None], xt[:, None], t, x0.new_zeros(m, 0))[:, 0].float()
        err = ((v - (noise - x0).float()) ** 2).mean(-1)
        return (err.mean() if m else err.sum()), err.sum()
