"""Shared part of the objectives that compare views of an event (``contrastive``, ``dino``).

The loader builds the views (:mod:`physfm.data.views`) and puts view ``i`` in the batch as
``x_v{i}`` / ``mask_v{i}``; such an objective encodes each view with the backbone, pools it to the
event embedding (:meth:`Backbone.pool`) and compares the embeddings. The unaugmented event stays in
``x`` / ``mask`` for the optional class-token global targets (reused from a ``full`` view when there is one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from physfm.data.views import AugmentParams, ViewSpec, check_views
from physfm.models.backbone import Backbone
from physfm.models.diagnostics import alignment, effective_rank, uniformity
from physfm.models.objectives import Objective, ObjectiveOptions, Stats, _stat


@dataclass
class ViewOptions(ObjectiveOptions):
    """Parameters of the view steps (see :class:`physfm.data.views.AugmentParams`)."""

    translate_width: float = 1.0
    smear_strength: float = 0.1
    smear_pt_clip: float = 0.1
    kt_radius: float = 10.0
    dropout_fraction: float = 0.1
    time_jitter: float = 3.0


class MultiViewObjective(Objective):
    """Base of view-comparing objectives: the view spec, per-view encoding, global targets, diagnostics."""

    needs_tokenizer = False
    Options = ViewOptions

    def __init__(self, d_model: int, options: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(d_model, options, **kw)
        check_views(self.views())

    def views(self) -> list[str]:
        """The views of a batch, in order."""
        raise NotImplementedError

    def view_spec(self) -> ViewSpec:
        o = self.options
        params = AugmentParams(
            translate_width=o.translate_width,
            smear_strength=o.smear_strength,
            smear_pt_clip=o.smear_pt_clip,
            kt_radius=o.kt_radius,
            dropout_fraction=o.dropout_fraction,
            time_jitter=o.time_jitter,
        )
        return ViewSpec(tuple(self.views()), params)

    @classmethod
    def configure_backbone(cls, model: dict[str, Any], options: dict[str, Any], codebook_size: int) -> dict[str, Any]:
        return {**model, "causal": False, "mask_token": False}

    def encode(self, model: Backbone, batch: dict[str, Tensor], i: int) -> tuple[Tensor, Tensor]:
        """Hidden states and pooled embedding ``(B, d_model)`` of view ``i``."""
        x, mask = batch[f"x_v{i}"], batch[f"mask_v{i}"]
        h = model(x, mask)
        return h, model.pool(h, mask)

    def view_global_loss(
        self, model: Backbone, batch: dict[str, Tensor], hidden: dict[int, Tensor]
    ) -> tuple[Tensor, Stats]:
        """Class-token global-target loss on the unaugmented event (a ``full`` view's states when there is one)."""
        if not hasattr(self, "global_head"):
            return batch["mask"].new_zeros((), dtype=batch["x"].dtype), {}
        full = [i for i, v in enumerate(self.views()) if v == "full" and i in hidden]
        h = hidden[full[0]] if full else model(batch["x"], batch["mask"])
        return self.global_loss(model, h, batch)

    @staticmethod
    def embedding_stats(a: Tensor, b: Tensor, pooled: Tensor) -> Stats:
        """Alignment of the pair (a, b), uniformity of ``a`` and effective rank of the pooled embeddings."""
        a, b, pooled = a.detach(), b.detach(), pooled.detach()
        n = a.shape[0]
        stats = {"alignment": _stat(alignment(a, b) * n, n)}
        if n >= 2:
            stats["uniformity"] = _stat(uniformity(a), 1)
            stats["embedding_rank"] = _stat(effective_rank(pooled), 1)
        return stats
