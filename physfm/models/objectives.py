"""Self-supervised objectives: each a small module with a numpy ``prepare`` and a torch ``forward``.

``prepare(batch)`` runs in the data-loader workers on CPU (masks, inputs, targets, from numpy
arrays; it never touches parameters). ``forward(model, batch)`` runs the backbone plus this
objective's heads and returns ``(loss, stats)`` where ``stats[name] = tensor([sum, count])`` so
that means over batches and ranks are exact.

=============  ==================================================================================
``mpm``        masked particle modelling: a fraction of the particles is replaced by the mask
               embedding; cross-entropy of their tokenizer code (plus optional particle-ID CE)
``next_token`` causal next-token prediction (OmniJet-alpha): the class token is the start token;
               the particles, in stored (pT) order, predict the next particle's code or stop
``regression`` masked feature regression baseline: MSE of the masked particles' normalised inputs
=============  ==================================================================================

Every objective can also give the event embedding (:meth:`Backbone.pool`: the class token) a
label-free global target, as PolarBERT does with log total charge: standardised event quantities
computed from the particles (for jets: log jet mass, log multiplicity), MSE with weight
``global_weight`` (lambda). Without it MPM leaves the class token untrained.

Masking is a pure function of each event's ``event_key``, a salt (seed and epoch) and the particle
position (:func:`hash_uniform`), so it does not depend on batching, workers or ranks: a resumed or
distributed run masks exactly as an uninterrupted single-process run.

New objectives register in :data:`OBJECTIVES`; the global targets live in :data:`physfm.features.GLOBAL_TARGETS`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physfm.features import NpBatch
from physfm.hashing import hash_uniform
from physfm.models.backbone import Backbone

Stats = dict[str, Tensor]

PID_FEATURES = ("is_charged_hadron", "is_neutral_hadron", "is_photon", "is_electron", "is_muon")


# --------------------------------------------------------------------------- deterministic masking
def choose_masked(event_key: np.ndarray, mask: np.ndarray, fraction: float, salt: int) -> np.ndarray:
    """``(B, L)`` bool: ``max(1, round(fraction * n))`` of each event's ``n`` real particles, chosen
    uniformly at random from the hash of the event key, never a padding position."""
    u = hash_uniform(event_key, salt, mask.shape[1])
    u[~mask] = np.inf
    rank = np.argsort(np.argsort(u, axis=1, kind="stable"), axis=1, kind="stable")
    n = mask.sum(axis=1)
    k = np.where(n > 0, np.maximum(1, np.rint(fraction * n)), 0).astype(np.int64)
    return (rank < k[:, None]) & mask


def pid_targets(raw: dict[str, np.ndarray]) -> np.ndarray:
    """``(B, L)`` int64: each particle's index in :data:`PID_FEATURES` (the ``is_*`` flag it has set),
    -1 where no flag is set (padding)."""
    flags = np.stack([raw[f] for f in PID_FEATURES], axis=-1)
    pid = flags.argmax(-1).astype(np.int64)
    pid[flags.max(-1) <= 0] = -1
    return pid


def prepare_masked(batch: NpBatch, fraction: float, pid_weight: float, salt: int) -> NpBatch:
    """The masked-particle inputs of a numpy batch: ``masked`` (:func:`choose_masked`) and, with
    ``pid_weight > 0``, the particle-ID targets ``pid`` (:func:`pid_targets`) of every particle."""
    batch["masked"] = choose_masked(batch["event_key"], batch["mask"], fraction, salt)
    if pid_weight > 0:
        batch["pid"] = pid_targets(batch["raw"])
    return batch


def salt_for(seed: int, epoch: int, split: str) -> int:
    """Mask salt: a new one each training epoch; one fixed salt per seed for validation/test."""
    return zlib.crc32(f"{seed}/{split}/{epoch if split == 'train' else 0}".encode())


# --------------------------------------------------------------------------- base class
def _stat(total: Tensor, count: Tensor | float) -> Tensor:
    count = torch.as_tensor(count, dtype=torch.float32, device=total.device)
    return torch.stack([total.detach().float(), count])


@dataclass
class ObjectiveOptions:
    """Options shared by every objective; subclasses add their own fields."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Objective(nn.Module):
    """Base class: the global (class-token) head and the plumbing; see the module docstring."""

    name: ClassVar[str] = ""
    needs_tokenizer: ClassVar[bool] = True
    Options: ClassVar[type[ObjectiveOptions]] = ObjectiveOptions

    def __init__(
        self,
        d_model: int,
        options: dict[str, Any] | None = None,
        *,
        codebook_size: int = 0,
        n_features: int = 0,
        features: list[str] | None = None,
        global_names: list[str] | None = None,
        global_weight: float = 0.0,
    ) -> None:
        super().__init__()
        known = {f.name for f in fields(self.Options)}
        if unknown := set(options or {}) - known:
            raise ValueError(f"unknown options {sorted(unknown)} for objective '{self.name}'; known: {sorted(known)}")
        self.options = self.Options(**(options or {}))
        self.codebook_size, self.n_features = codebook_size, n_features
        self.features = list(features or [])  # names of the n_features model inputs, in order
        if self.needs_tokenizer and codebook_size <= 1:
            raise ValueError(f"objective '{self.name}' needs a tokenizer with a codebook (got K={codebook_size})")
        self.global_names = list(global_names or [])
        self.global_weight = float(global_weight)
        if self.global_names and self.global_weight > 0:
            self.global_head = nn.Sequential(
                nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, len(self.global_names))
            )

    # ---- configuration hooks
    @classmethod
    def configure_backbone(cls, model: dict[str, Any], options: dict[str, Any], codebook_size: int) -> dict[str, Any]:
        """BackboneConfig fields as this objective needs them (e.g. causal, mask_token), from ``model``."""
        return model

    @classmethod
    def input_features(cls, options: dict[str, Any], features: list[str], tokenizer: Any) -> list[str]:
        """The per-particle features fed to the backbone (default: the configured ones)."""
        return features

    @classmethod
    def raw_features(cls, options: dict[str, Any]) -> list[str]:
        """Extra per-particle features ``prepare`` reads from ``batch["raw"]``."""
        return []

    def prepare(self, batch: NpBatch, *, salt: int) -> NpBatch:
        """Add this objective's inputs/targets to a numpy batch (runs in loader workers)."""
        return batch

    def view_spec(self) -> Any:
        """The views of each event the loader adds to a batch (a :class:`physfm.data.views.ViewSpec`), or
        ``None``: objectives that compare views (``contrastive``, ``dino``) return theirs."""
        return None

    # ---- training-loop hooks
    def attach(self, backbone: Backbone) -> None:
        """Called once with the backbone under training, before any checkpoint is loaded (e.g. to copy
        it into an EMA teacher)."""

    def after_step(self, step: int, total_steps: int) -> None:
        """Called by the training loop after every optimizer step (``step`` steps done of ``total_steps``),
        e.g. for an EMA teacher update or a collapse check."""

    def export_backbone(self, backbone: Backbone) -> Backbone:
        """The backbone written as the pretraining result (default: the trained one; DINO: its teacher)."""
        return backbone

    # ---- loss
    def global_loss(self, model: Backbone, h: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        if not hasattr(self, "global_head"):
            return h.new_zeros(()), {}
        pred = self.global_head(model.pool(h, batch["mask"])).float()
        err = (pred - batch["global"].float()) ** 2
        stats = {"loss_global": _stat(err.mean(dim=1).sum(), err.shape[0])}
        for j, n in enumerate(self.global_names):
            stats[f"mse_{n}"] = _stat(err[:, j].sum(), err.shape[0])
        return err.mean(), stats

    def forward(self, model: Backbone, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        raise NotImplementedError


def _ce(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean CE, summed CE and number of correct argmax predictions (targets already selected)."""
    logits = logits.float()
    total = F.cross_entropy(logits, target, reduction="sum")
    n = max(int(target.numel()), 1)
    correct = (logits.argmax(-1) == target).sum()
    return total / n, total, correct


def masked_particle_loss(objective: Objective, hm: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
    """Loss and stats of the masked particles' states ``hm`` ``(M, d)``: the cross-entropy of their
    tokenizer codes (``objective.head``) plus, with ``objective.options.pid_weight > 0``, that weight times
    the cross-entropy of their particle IDs (``objective.pid_head``; particles with no ID left out)."""
    masked = batch["masked"]
    target = batch["tokens"][masked]
    loss, tok_sum, correct = _ce(objective.head(hm), target)
    n = target.numel()
    stats = {"loss_token": _stat(tok_sum, n), "acc_token": _stat(correct.float(), n)}
    pid_weight = objective.options.pid_weight
    if pid_weight > 0:
        pid = batch["pid"][masked]
        ok = pid >= 0
        loss_pid, pid_sum, pid_ok = _ce(objective.pid_head(hm[ok]), pid[ok])
        stats["loss_pid"], stats["acc_pid"] = _stat(pid_sum, ok.sum()), _stat(pid_ok.float(), ok.sum())
        loss = loss + pid_weight * loss_pid
    return loss, stats


# --------------------------------------------------------------------------- MPM
@dataclass
class MPMOptions(ObjectiveOptions):
    mask_fraction: float = 0.3  # fraction of each event's particles masked
    pid_weight: float = 0.0  # weight of the particle-ID cross-entropy on masked particles (0 = off)


class MaskedParticleModelling(Objective):
    """MPM: predict the tokenizer code (and optionally the particle ID) of masked particles."""

    name = "mpm"
    Options = MPMOptions

    def __init__(self, d_model: int, options: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(d_model, options, **kw)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, self.codebook_size))
        if self.options.pid_weight > 0:
            self.pid_head = nn.Linear(d_model, len(PID_FEATURES))

    @classmethod
    def configure_backbone(cls, model: dict[str, Any], options: dict[str, Any], codebook_size: int) -> dict[str, Any]:
        return {**model, "causal": False, "mask_token": True}

    @classmethod
    def raw_features(cls, options: dict[str, Any]) -> list[str]:
        return list(PID_FEATURES) if options.get("pid_weight", 0) > 0 else []

    def prepare(self, batch: NpBatch, *, salt: int) -> NpBatch:
        return prepare_masked(batch, self.options.mask_fraction, self.options.pid_weight, salt)

    def forward(self, model: Backbone, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        masked, mask = batch["masked"], batch["mask"]
        h = model(batch["x"], mask, tokens=batch.get("tokens_in"), masked=masked)
        hm = h[:, model.config.n_cls :][masked]
        loss, stats = masked_particle_loss(self, hm, batch)
        loss_g, gstats = self.global_loss(model, h, batch)
        stats.update(gstats)
        loss = loss + self.global_weight * loss_g
        stats["loss"] = _stat(loss * len(mask), len(mask))
        return loss, stats


# --------------------------------------------------------------------------- next token
@dataclass
class NextTokenOptions(ObjectiveOptions):
    input: str = "features"  # "features": normalised tokenizer features in; "tokens": code ids in
    quantized_inputs: bool = False  # features mode: feed decode(encode(x)), as generation will


class NextTokenPrediction(Objective):
    """Causal next-token prediction; vocabulary = K codes + stop, the class token is the start."""

    name = "next_token"
    Options = NextTokenOptions

    def __init__(self, d_model: int, options: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(d_model, options, **kw)
        if self.options.input not in ("features", "tokens"):
            raise ValueError(f"next_token input must be 'features' or 'tokens', got '{self.options.input}'")
        self.stop = self.codebook_size
        self.head = nn.Linear(d_model, self.codebook_size + 1)

    @classmethod
    def configure_backbone(cls, model: dict[str, Any], options: dict[str, Any], codebook_size: int) -> dict[str, Any]:
        model = {**model, "causal": True, "mask_token": False, "n_cls": max(1, model.get("n_cls", 1))}
        if options.get("input", "features") == "tokens":
            model.update(vocab_size=codebook_size, n_features=0)
        return model

    @classmethod
    def input_features(cls, options: dict[str, Any], features: list[str], tokenizer: Any) -> list[str]:
        """Generation feeds decoded particles back in, so the inputs are the tokenizer's features."""
        return [] if options.get("input", "features") == "tokens" else list(tokenizer.features)

    def prepare(self, batch: NpBatch, *, salt: int) -> NpBatch:
        codes, mask = batch["tokens"], batch["mask"]
        b, length = codes.shape
        n = mask.sum(1)
        target = np.full((b, length + 1), -1, dtype=np.int64)
        target[:, :length] = np.where(mask, codes, -1)
        truncated = batch["n_particles"] > length
        rows = np.flatnonzero(~truncated)
        target[rows, n[rows]] = self.stop  # a truncated event has no stop: it did not end
        batch["next"] = target
        if self.options.input == "tokens":
            batch["tokens_in"] = np.where(mask, codes, 0)
        return batch

    def logits(self, model: Backbone, h: Tensor) -> Tensor:
        """``(B, L+1, K+1)``: from the last class token (the start) and every particle."""
        return self.head(h[:, model.config.n_cls - 1 :])

    def forward(self, model: Backbone, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        h = model(batch["x"], batch["mask"], tokens=batch.get("tokens_in"))
        target = batch["next"]
        sel = target >= 0
        loss_tok, tok_sum, correct = _ce(self.logits(model, h)[sel], target[sel])
        n = sel.sum()
        stats = {"loss_token": _stat(tok_sum, n), "acc_token": _stat(correct.float(), n)}
        loss_g, gstats = self.global_loss(model, h, batch)
        stats.update(gstats)
        loss = loss_tok + self.global_weight * loss_g
        stats["loss"] = _stat(loss * len(target), len(target))
        return loss, stats


# --------------------------------------------------------------------------- masked regression
@dataclass
class RegressionOptions(ObjectiveOptions):
    mask_fraction: float = 0.3


class MaskedRegression(Objective):
    """Baseline: regress the masked particles' normalised input features (MSE)."""

    name = "regression"
    needs_tokenizer = False
    Options = RegressionOptions

    def __init__(self, d_model: int, options: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(d_model, options, **kw)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, self.n_features))

    @classmethod
    def configure_backbone(cls, model: dict[str, Any], options: dict[str, Any], codebook_size: int) -> dict[str, Any]:
        return {**model, "causal": False, "mask_token": True}

    def prepare(self, batch: NpBatch, *, salt: int) -> NpBatch:
        return prepare_masked(batch, self.options.mask_fraction, 0.0, salt)

    def forward(self, model: Backbone, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        masked, mask = batch["masked"], batch["mask"]
        h = model(batch["x"], mask, masked=masked)
        pred = self.head(h[:, model.config.n_cls :][masked]).float()
        err = ((pred - batch["x"][masked].float()) ** 2).mean(-1)
        loss_reg = err.mean() if err.numel() else err.sum()
        stats = {"loss_regression": _stat(err.sum(), err.numel())}
        loss_g, gstats = self.global_loss(model, h, batch)
        stats.update(gstats)
        loss = loss_reg + self.global_weight * loss_g
        stats["loss"] = _stat(loss * len(mask), len(mask))
        return loss, stats


#: Objectives by config name. Issue 6 adds ``polarbert`` here.
OBJECTIVES: dict[str, type[Objective]] = {
    c.name: c for c in (MaskedParticleModelling, NextTokenPrediction, MaskedRegression)
}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator adding an objective to :data:`OBJECTIVES` under ``cls.name``."""
    OBJECTIVES[cls.name] = cls
    return cls


def uniform_baseline(codebook_size: int) -> float:
    """Cross-entropy of a uniform guess over K codes: log K (nats)."""
    return math.log(codebook_size)
