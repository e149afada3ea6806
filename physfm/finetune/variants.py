"""Ablation modes of the label-efficiency grid: a grid mode that is a base mode with fixed settings.

* ``scratch_global``: ``scratch`` with the pretraining's global targets as an auxiliary loss
  (:mod:`physfm.finetune.auxiliary`; ``global_aux_weight`` must be positive, the workflow sets it and
  ``global_aux_targets`` to ``pretrain.global_weight`` and ``pretrain.global_targets``);
* ``linear``: ``frozen`` with a linear probe (head ``kind: linear``) instead of the MLP.

A run of a variant is recorded (meta, evaluation record, MLflow tag ``mode``) under the variant's name,
with ``base_mode`` beside it; its training is exactly the base mode's with those settings.
"""

from __future__ import annotations

from typing import Any

from physfm.finetune.train import MODES

#: Variant -> (base mode, what it changes).
VARIANTS: dict[str, tuple[str, str]] = {
    "scratch_global": ("scratch", "scratch + the pretraining's global targets as an auxiliary loss"),
    "linear": ("frozen", "frozen backbone, linear probe (head kind linear)"),
}
#: Every mode a grid cell may have.
GRID_MODES = (*MODES, *VARIANTS)


def resolve(mode: str, settings: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(base mode, settings)`` of a grid mode: the variant's settings applied to ``settings``."""
    if mode not in GRID_MODES:
        raise ValueError(f"mode '{mode}' is not one of {', '.join(GRID_MODES)}")
    out = dict(settings)
    aux = float(out.get("global_aux_weight", 0.0) or 0.0)
    if mode == "scratch_global":
        if aux <= 0:
            raise ValueError(
                "mode scratch_global needs global_aux_weight > 0 in --config (the workflow passes "
                "pretrain.global_weight)"
            )
    elif aux > 0:
        raise ValueError(f"global_aux_weight > 0 is the scratch_global ablation; mode {mode} trains without it")
    if mode == "linear":
        out["head"] = {**(out.get("head") or {}), "kind": "linear"}
    return VARIANTS[mode][0] if mode in VARIANTS else mode, out
