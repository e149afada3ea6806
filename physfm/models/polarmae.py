"""The PoLAr-MAE objective as a module, tensors in and tensors out (the pretraining loop's objective
``polarmae`` wraps it: :mod:`physfm.models.polarmae_objective`).

For a padded batch of point clouds (``points (B, N, F)``: x, y, z in voxels, then an energy
feature such as log voxel energy, then optional extras; ``mask (B, N)``):

1. :class:`~physfm.models.patching.PatchEmbedding` cuts each event into patches (FPS centres,
   ball-query groups) and embeds them;
2. a fraction ``mask_ratio`` (0.6) of each event's valid patches is masked, at random;
3. the encoder, the existing :class:`~physfm.models.backbone.Backbone` (``n_features`` =
   patch ``embed_dim``), sees the visible patches only;
4. a small decoder (also a ``Backbone``, without class tokens) sees the encoded visible patches
   and a learned mask token at each masked patch, each plus an MLP embedding of its centre;
5. for every masked patch it predicts ``group_size`` points in the patch's local coordinates and
   energy feature; the loss is their Chamfer distance to the true points in (x, y, z, log E),
   plus **energy infilling**: the energy feature of each true point from the decoder state and
   the point's true local position (mean squared error), weighted ``energy_weight`` (1:1).

``forward`` returns ``(loss, stats)`` with ``stats[name] = tensor([sum, count])`` like
:mod:`physfm.models.objectives`. Masking draws from ``generator`` (a ``torch.Generator``), so it
is reproducible for a seed, or ranks given per-patch scores (``score``, e.g. hashed from the event
key). :class:`PolarMAEHeads` is everything but the encoder, which its :meth:`~PolarMAEHeads.loss`
takes as an argument (the pretraining loop owns the backbone); :class:`PolarMAE` adds the encoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from physfm.models.backbone import Backbone, BackboneConfig
from physfm.models.patching import CentreEmbedding, PatchConfig, PatchEmbedding

Stats = dict[str, Tensor]


@dataclass
class PolarMAEConfig:
    """Sizes of the PoLAr-MAE objective's parts (the encoder is a :class:`BackboneConfig`)."""

    mask_ratio: float = 0.6
    decoder_dim: int = 128
    decoder_layers: int = 2
    decoder_heads: int = 4
    energy_weight: float = 1.0  # energy infilling : Chamfer
    patches: PatchConfig = field(default_factory=PatchConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.patches.point_features < 4:
            raise ValueError("PoLAr-MAE reconstructs (x, y, z, log E): point_features must be >= 4")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stat(total: Tensor, count: Tensor | float) -> Tensor:
    return torch.stack([total.detach().float(), torch.as_tensor(count, dtype=torch.float32, device=total.device)])


def choose_patch_mask(
    valid: Tensor, ratio: float, generator: torch.Generator | None = None, score: Tensor | None = None
) -> Tensor:
    """``(B, P)`` bool: ``round(ratio * n_valid)`` of each event's valid patches, at random.

    At least one patch stays visible and, when there are two or more, at least one is masked.
    ``score`` (``(B, P)`` in [0, 1)): the patches with the lowest scores are masked (default: uniform
    draws from ``generator``).
    """
    if score is None:
        score = torch.rand(valid.shape, generator=generator, device=valid.device)
    score = score.to(valid.device).float().masked_fill(~valid, 2.0)
    rank = torch.argsort(torch.argsort(score, dim=1), dim=1)
    n_valid = valid.sum(1)
    n_mask = torch.clamp(torch.round(n_valid * ratio).long(), min=(n_valid >= 2).long(), max=(n_valid - 1).clamp(min=0))
    return valid & (rank < n_mask[:, None])


def compact(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The entries of ``x (B, P, ...)`` where ``keep (B, P)``, moved to the front:
    ``(x (B, K, ...), mask (B, K), index (B, K))`` with ``K`` the largest count."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    k = int(keep.sum(1).max()) if keep.numel() else 0
    index = order[:, :k]
    mask = torch.gather(keep, 1, index)
    gathered = torch.gather(x, 1, index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))
    return gathered, mask, index


def chamfer(pred: Tensor, target: Tensor, target_ok: Tensor) -> Tensor:
    """Chamfer distance (squared L2) per set: ``pred (S, G, F)`` against the real rows of
    ``target (S, G, F)`` (``target_ok (S, G)``); mean nearest distance in each direction, summed."""
    d2 = ((pred[:, :, None, :] - target[:, None, :, :]) ** 2).sum(-1)  # (S, G_pred, G_true)
    d2 = d2.masked_fill(~target_ok[:, None, :], float("inf"))
    pred_to_true = d2.min(dim=2).values.mean(dim=1)
    true_to_pred = d2.min(dim=1).values.masked_fill(~target_ok, 0.0).sum(1) / target_ok.sum(1).clamp(min=1)
    return pred_to_true + true_to_pred


class PolarMAEHeads(nn.Module):
    """Patch embedding + decoder + reconstruction and energy heads: PoLAr-MAE without its encoder."""

    def __init__(self, config: PolarMAEConfig, encoder: BackboneConfig) -> None:
        super().__init__()
        pc = config.patches
        if encoder.n_features != pc.embed_dim:
            raise ValueError(f"the encoder's n_features ({encoder.n_features}) must equal embed_dim ({pc.embed_dim})")
        if encoder.max_len < pc.n_patches:
            raise ValueError(f"the encoder's max_len ({encoder.max_len}) must be >= n_patches ({pc.n_patches})")
        self.config = config
        self.patch_embed = PatchEmbedding(pc)
        dd = config.decoder_dim
        self.to_decoder = nn.Linear(encoder.d_model, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder_position = CentreEmbedding(dd, pc.position_scale)
        self.decoder = Backbone(
            BackboneConfig(
                n_features=dd,
                d_model=dd,
                n_layers=config.decoder_layers,
                n_heads=config.decoder_heads,
                n_cls=0,
                max_len=pc.n_patches,
            )
        )
        self.reconstruct = nn.Linear(dd, pc.group_size * 4)
        self.energy_head = nn.Sequential(nn.Linear(dd + 3, dd), nn.GELU(), nn.Linear(dd, 1))

    def encode_with(self, encoder: Backbone, points: Tensor, mask: Tensor) -> tuple[Tensor, Any]:
        """``encoder``'s states of every valid patch ``(B, P, d_model)`` (no masking) and the patches."""
        patches = self.patch_embed(points, mask)
        h = encoder(patches.tokens, patches.mask)[:, encoder.config.n_cls :]
        return h, patches

    def loss(
        self,
        encoder: Backbone,
        points: Tensor,
        mask: Tensor,
        generator: torch.Generator | None = None,
        score: Tensor | None = None,
    ) -> tuple[Tensor, Stats]:
        """Masked-patch reconstruction loss and stats, ``encoder`` seeing the visible patches only."""
        cfg = self.config
        patches = self.patch_embed(points, mask)
        masked = choose_patch_mask(patches.mask, cfg.mask_ratio, generator, score)
        visible = patches.mask & ~masked
        # encoder: visible patches only
        vis_tokens, vis_mask, vis_index = compact(patches.tokens, visible)
        h_vis = encoder(vis_tokens, vis_mask)[:, encoder.config.n_cls :]
        # decoder: every valid patch, encoded or a mask token, plus its centre
        b, p, _ = patches.tokens.shape
        dd = cfg.decoder_dim
        dec_in = self.mask_token.to(h_vis.dtype).expand(b, p, dd).clone()
        src = self.to_decoder(h_vis) * vis_mask.unsqueeze(-1).to(h_vis.dtype)
        dec_in = dec_in.scatter(1, vis_index.unsqueeze(-1).expand(-1, -1, dd), src)
        dec_in = torch.where(visible.unsqueeze(-1), dec_in, self.mask_token.to(dec_in.dtype).expand_as(dec_in))
        dec_in = dec_in + self.decoder_position(patches.centres)
        h_dec = self.decoder(dec_in, patches.mask)
        # heads on the masked patches
        hm = h_dec[masked]  # (S, dd)
        target = patches.local[masked][..., :4]  # (S, G, 4): local x, y, z and the energy feature
        ok = patches.group_mask[masked]
        pred = self.reconstruct(hm).reshape(len(hm), cfg.patches.group_size, 4)
        cd = chamfer(pred.float(), target.float(), ok)
        g = target.shape[1]
        e_pred = self.energy_head(torch.cat([hm[:, None, :].expand(-1, g, -1), target[..., :3]], -1)).squeeze(-1)
        se = ((e_pred.float() - target[..., 3].float()) ** 2).masked_fill(~ok, 0.0)
        n_pts = ok.sum()
        loss_cd = cd.mean() if len(cd) else points.new_zeros(())
        loss_e = se.sum() / n_pts.clamp(min=1)
        loss = loss_cd + cfg.energy_weight * loss_e
        stats = {
            "loss": _stat(loss, 1),
            "loss_chamfer": _stat(cd.sum(), len(cd)),
            "loss_energy": _stat(se.sum(), n_pts),
            "masked_fraction": _stat(masked.sum().float(), patches.mask.sum()),
        }
        return loss, stats


class PolarMAE(PolarMAEHeads):
    """Patch embedding + encoder (the backbone) + decoder + reconstruction and energy heads."""

    def __init__(self, config: PolarMAEConfig, encoder: BackboneConfig) -> None:
        super().__init__(config, encoder)
        self.encoder = Backbone(encoder)

    def encode(self, points: Tensor, mask: Tensor) -> tuple[Tensor, Any]:
        """Encoder states of every valid patch ``(B, P, d_model)`` (no masking: fine-tuning and
        embeddings) and the :class:`~physfm.models.patching.Patches`."""
        return self.encode_with(self.encoder, points, mask)

    def forward(self, points: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Stats]:
        return self.loss(self.encoder, points, mask, generator)
