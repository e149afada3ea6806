"""The ``polarmae`` pretraining objective: PoLAr-MAE on LArTPC point clouds in the shared pretraining loop.

Registered in :data:`physfm.models.objectives.OBJECTIVES`, so ``physfm pretrain`` with
``objective: polarmae`` trains it on a converted ``lartpc`` dataset like any other objective (same
optimiser, schedule, checkpoints, resume, MLflow). Per batch:

* ``prepare`` (loader workers, numpy): the event's points as read by the loader (``pretrain.max_len``
  must hold the largest event; a cut event is refused), in the configured features' raw values
  (not normalised: x, y, z in voxels first, then an energy feature, by default ``log_energy``);
  at most ``max_points`` of them per event, drawn from the event key and the epoch's salt
  (:func:`physfm.data.pointcloud.cap_points`: a new subsample each training epoch, a fixed one for
  validation); and one hashed score per patch that decides which patches are masked, so that a
  resumed or distributed run masks exactly as an uninterrupted one.
* ``forward``: :class:`physfm.models.polarmae.PolarMAEHeads` cuts the cloud into patches (FPS
  centres, ball query, mini-PointNet + centre MLP), masks ``mask_ratio`` of them, and the backbone
  under training, as the encoder, sees the visible patch tokens only; the decoder reconstructs the
  masked patches: Chamfer distance in (x, y, z, log E) + energy infilling, weighted 1 : ``energy_weight``.

The backbone is built with ``n_features = embed_dim`` (patch tokens in), ``max_len = n_patches``,
no mask token and no index position embedding (the centre MLP is the position). The saved
backbone's ``objective.safetensors`` holds the patch embedding (``mae.patch_embed.*``), which
fine-tuning (:mod:`physfm.finetune.patch_segmentation`) loads with the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from physfm.data.pointcloud import cap_points, check_not_truncated, check_point_inputs
from physfm.features import NpBatch
from physfm.hashing import hash_uniform
from physfm.models.backbone import Backbone, BackboneConfig
from physfm.models.objectives import Objective, ObjectiveOptions, Stats, _stat, register_objective
from physfm.models.patching import PatchConfig
from physfm.models.polarmae import PolarMAEConfig, PolarMAEHeads

#: Added to the epoch's salt for the patch-mask scores (the point subsample uses the salt itself).
PATCH_SALT = 0x9A7C


@dataclass
class PolarMAEOptions(ObjectiveOptions):
    max_points: int = 2048  # cap on points per event fed to the patching (random, from the event key)
    mask_ratio: float = 0.6  # fraction of each event's patches masked
    n_patches: int = 128  # FPS centres per event at most (the backbone's sequence length)
    group_size: int = 32  # points per patch at most
    radius: float = 5.0  # ball-query radius, voxels
    grouping: str = "ball"  # ball | knn
    embed_dim: int = 128  # patch token width (the backbone's n_features)
    decoder_dim: int = 128
    decoder_layers: int = 2
    decoder_heads: int = 4
    energy_weight: float = 1.0  # energy infilling : Chamfer


def patch_config(options: dict[str, Any], point_features: int) -> PatchConfig:
    """The :class:`PatchConfig` of a ``polarmae`` objective's options (also what fine-tuning rebuilds)."""
    o = {**PolarMAEOptions().to_dict(), **options}
    return PatchConfig(
        n_patches=int(o["n_patches"]),
        group_size=int(o["group_size"]),
        radius=float(o["radius"]),
        grouping=str(o["grouping"]),
        embed_dim=int(o["embed_dim"]),
        point_features=point_features,
    )


@register_objective
class PolarMAEObjective(Objective):
    """PoLAr-MAE: masked patch reconstruction (Chamfer + energy infilling) with the backbone as encoder."""

    name = "polarmae"
    needs_tokenizer = False
    Options = PolarMAEOptions

    def __init__(self, d_model: int, options: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(d_model, options, **kw)
        check_point_inputs(self.features)
        o = self.options
        if o.max_points < 1:
            raise ValueError(f"polarmae max_points must be >= 1, got {o.max_points}")
        pc = patch_config(o.to_dict(), len(self.features))
        cfg = PolarMAEConfig(
            mask_ratio=o.mask_ratio,
            decoder_dim=o.decoder_dim,
            decoder_layers=o.decoder_layers,
            decoder_heads=o.decoder_heads,
            energy_weight=o.energy_weight,
            patches=pc,
        )
        encoder = BackboneConfig(n_features=pc.embed_dim, d_model=d_model, max_len=pc.n_patches)
        self.mae = PolarMAEHeads(cfg, encoder)

    @classmethod
    def configure_backbone(cls, model: dict[str, Any], options: dict[str, Any], codebook_size: int) -> dict[str, Any]:
        o = {**PolarMAEOptions().to_dict(), **options}
        m = {**model, "n_features": int(o["embed_dim"]), "max_len": int(o["n_patches"])}
        m.update(causal=False, mask_token=False, vocab_size=0)
        if m.get("pos_embedding", "auto") == "auto":
            m["pos_embedding"] = "none"  # a set of patches: the centre MLP is the position
        return m

    def prepare(self, batch: NpBatch, *, salt: int) -> NpBatch:
        mask = batch["mask"]
        check_not_truncated(batch["n_particles"], mask.shape[1])
        raw = batch["raw"]
        points = np.stack([raw[f] for f in self.features], axis=-1).astype(np.float32)
        pts, ok, _ = cap_points(points, mask, batch["event_key"], self.options.max_points, salt)
        batch["x"], batch["mask"] = pts, ok  # the model's input is the capped raw cloud
        batch["patch_score"] = hash_uniform(batch["event_key"], salt + PATCH_SALT, self.mae.config.patches.n_patches)
        return batch

    def forward(self, model: Backbone, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        mask = batch["mask"]
        loss, stats = self.mae.loss(model, batch["x"], mask, score=batch["patch_score"])
        stats["loss"] = _stat(loss * len(mask), len(mask))
        return loss, stats
