"""PolarBERT (Timiryasov, Tastet, Ruchayskiy 2025): masked-DOM pretraining for neutrino telescopes.

Each pulse enters the backbone as the sum of a **DOM embedding** (its sensor id, a token of the
backbone's vocabulary) and the embedding of its continuous features (by default ``t_rel,
log_charge, aux``; PolarBERT concatenates a 128-d DOM embedding with 128 projected features, which
the sum of two learned d-dimensional embeddings contains). A fraction of each event's
**non-auxiliary** pulses has its DOM replaced by a mask id; their time, charge and flag stay
visible, while input features that would give the DOM away (``hide_features``, by default any of
``x, y, z, x_cog, y_cog, z_cog``) are set to their mean. The model predicts which DOM the masked
pulses came from: cross-entropy over the DOM vocabulary, on masked non-auxiliary pulses only
(auxiliary pulses are mostly noise, hence unpredictable; padding never counts). The class token
regresses the event's log10 total charge (global target ``log10_qtot``, weight ``global_weight`` =
lambda): loss = DOM-CE + lambda * MSE.

Sequences are subsampled to ``max_len`` pulses keeping non-auxiliary pulses first: IceCube readers
store each event's non-auxiliary pulses first (``order: nonaux_first``), and the loader keeps the
first ``max_len``. The class-token target is computed over all pulses of the event (feature
``event_log10_qtot``), not only the kept ones.

Config (``pretrain:`` section): ``objective: polarbert``, ``features: [t_rel, log_charge, aux]``,
``global_targets: [log10_qtot]``, ``global_weight: <lambda>``, ``objectives.polarbert.mask_fraction``
(0.25), ``objectives.polarbert.n_doms`` (5160, IceCube-86; sensor ids must be below it),
``objectives.polarbert.hide_features``. Adding the DOM positions relative to the event's
charge-weighted centre (``x_cog, y_cog, z_cog``, with ``t_cog``) as inputs, beyond PolarBERT's
three, lets small models learn directions from few labels (see docs/icecube.md).

Downstream models built on such a backbone must pass the DOM ids as ``tokens``: see
:func:`dom_tokens` and :func:`uses_dom_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from physfm.models.backbone import Backbone
from physfm.models.objectives import (
    NpBatch,
    Objective,
    ObjectiveOptions,
    Stats,
    _stat,
    choose_masked,
    register_objective,
)

DOM_FEATURE = "dom"  # physfm.features name of the sensor id
AUX_FEATURE = "aux"


#: Input features that would give a masked pulse's DOM away; zeroed (= their mean) for masked pulses.
GEOMETRY_FEATURES = ("x", "y", "z", "x_cog", "y_cog", "z_cog")


@dataclass
class PolarBERTOptions(ObjectiveOptions):
    mask_fraction: float = 0.25  # fraction of each event's non-auxiliary pulses whose DOM is hidden
    n_doms: int = 5160  # DOM vocabulary: sensor ids 0 .. n_doms-1 (id n_doms = mask)
    hide_features: list[str] = field(default_factory=lambda: list(GEOMETRY_FEATURES))


@register_objective
class PolarBERT(Objective):
    """Masked-DOM prediction on non-auxiliary pulses + class-token total-charge regression."""

    name = "polarbert"
    needs_tokenizer = False
    Options = PolarBERTOptions

    def __init__(self, d_model: int, options: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(d_model, options, **kw)
        if not 0.0 < self.options.mask_fraction <= 1.0:
            raise ValueError(f"polarbert mask_fraction must be in (0, 1], got {self.options.mask_fraction}")
        if self.options.n_doms < 2:
            raise ValueError(f"polarbert n_doms must be >= 2, got {self.options.n_doms}")
        self.mask_id = self.options.n_doms
        self.hidden_columns = [j for j, f in enumerate(self.features) if f in set(self.options.hide_features)]
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, self.options.n_doms))

    @classmethod
    def configure_backbone(cls, model: dict[str, Any], options: dict[str, Any], codebook_size: int) -> dict[str, Any]:
        n_doms = int(options.get("n_doms", PolarBERTOptions.n_doms))
        m = {**model, "causal": False, "mask_token": False, "vocab_size": n_doms + 1}
        m["n_cls"] = max(1, int(m.get("n_cls", 1)))
        if m.get("pos_embedding", "auto") == "auto":
            m["pos_embedding"] = "none"  # a set of pulses: time is a feature, the order carries no meaning
        return m

    @classmethod
    def raw_features(cls, options: dict[str, Any]) -> list[str]:
        return [DOM_FEATURE, AUX_FEATURE]

    def prepare(self, batch: NpBatch, *, salt: int) -> NpBatch:
        mask = batch["mask"]
        dom = dom_tokens(batch["raw"][DOM_FEATURE], mask, self.options.n_doms)
        eligible = mask & (batch["raw"][AUX_FEATURE] < 0.5)
        masked = choose_masked(batch["event_key"], eligible, self.options.mask_fraction, salt)
        if self.hidden_columns and masked.any():  # geometry of a masked pulse would reveal its DOM
            x = np.array(batch["x"], copy=True)
            x[..., self.hidden_columns] = np.where(masked[..., None], 0.0, x[..., self.hidden_columns])
            batch["x"] = x
        batch["dom"] = dom
        batch["dom_in"] = np.where(masked, self.mask_id, dom)
        batch["dom_masked"] = masked
        return batch

    def dom_loss(self, logits: Tensor, target: Tensor, selected: Tensor) -> tuple[Tensor, Stats]:
        """Cross-entropy over DOMs at ``selected`` positions only (masked, non-auxiliary, real)."""
        lg, tg = logits[selected].float(), target[selected]
        total = F.cross_entropy(lg, tg, reduction="sum")
        n = tg.numel()
        correct = (lg.argmax(-1) == tg).sum().float() if n else total.new_zeros(())
        return total / max(n, 1), {"loss_dom": _stat(total, n), "acc_dom": _stat(correct, n)}

    def forward(self, model: Backbone, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        mask, selected = batch["mask"], batch["dom_masked"]
        h = model(batch["x"], mask, tokens=batch["dom_in"])
        logits = self.head(h[:, model.config.n_cls :])
        loss_dom, stats = self.dom_loss(logits, batch["dom"], selected)
        loss_g, gstats = self.global_loss(model, h, batch)
        stats.update(gstats)
        loss = loss_dom + self.global_weight * loss_g
        stats["loss"] = _stat(loss * len(mask), len(mask))
        return loss, stats


def dom_tokens(dom: np.ndarray, mask: np.ndarray, n_doms: int) -> np.ndarray:
    """``(B, L)`` int64 DOM ids from the (float) ``dom`` feature; 0 at padding. Checks the range."""
    ids = np.where(mask, np.rint(dom), 0).astype(np.int64)
    bad = mask & ((ids < 0) | (ids >= n_doms))
    if bad.any():
        raise ValueError(
            f"sensor id {int(ids[bad][0])} is outside the DOM vocabulary [0, {n_doms}); set "
            "pretrain.objectives.polarbert.n_doms to the dataset's physfm.data.icecube.n_sensors(DIR)"
        )
    return ids


def uses_dom_tokens(meta: dict[str, Any]) -> bool:
    """True when a backbone (its ``meta``) embeds DOM ids: pass ``tokens=dom_tokens(...)`` to it."""
    return meta.get("objective") == PolarBERT.name and int(meta.get("config", {}).get("vocab_size", 0)) > 0
