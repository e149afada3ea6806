"""Backbone transformer and self-supervised objectives.

>>> from physfm.models import Backbone, BackboneConfig, normalize
>>> from physfm.pretrain.checkpoints import load_backbone
>>> model, meta = load_backbone("results/default/pretrain/mpm")   # doctest: +SKIP
>>> e = model.embed(normalize(x, mask, meta), mask)                # (B, d_model)   # doctest: +SKIP

New objectives subclass :class:`Objective` and register with :func:`register_objective`
(or ``OBJECTIVES[name] = cls``); new label-free class-token targets go in :data:`physfm.features.GLOBAL_TARGETS`.
"""

# registering imports: the IceCube objective (issue 6), the view-comparing objectives (issue 14),
# the generative (flow) and MAE (mpm2) objectives (issue 15), PoLAr-MAE on LArTPC point clouds (issue 16)
from physfm.hashing import hash_uniform  # noqa: F401  (the masking and views draw from it)
from physfm.models import contrastive, dino, flow, mpm2, polarbert, polarmae_objective  # noqa: F401
from physfm.models.backbone import Backbone, BackboneConfig, normalize
from physfm.models.objectives import (
    OBJECTIVES,
    Objective,
    ObjectiveOptions,
    choose_masked,
    register_objective,
)

__all__ = [
    "Backbone",
    "BackboneConfig",
    "normalize",
    "OBJECTIVES",
    "Objective",
    "ObjectiveOptions",
    "register_objective",
    "choose_masked",
    "hash_uniform",
]
