"""``dino``: self-distillation with an EMA teacher (DINO, Caron et al. 2021); with kT views it is RINO.

The student (the backbone under training plus a projection head onto ``n_prototypes`` L2-normalised
prototypes) sees every view; the teacher (an exponential moving average of the student, never
trained by gradients) sees the *global* views. For every pair (teacher on global view i, student on
view j ≠ i) the loss is the cross-entropy between the teacher's sharpened, balanced distribution over
the K prototypes and the student's: Σ −p_t log p_s, averaged over pairs and events.

* **EMA teacher** (:meth:`Dino.after_step`, called by the loop after every optimizer step):
  θ_t ← m θ_t + (1 − m) θ_s, with m cosine-scheduled from ``teacher_momentum`` (0.996) to 1 over the run
  (:func:`teacher_momentum`).
* **Balancing**: ``center`` (default): teacher logits minus a centre c, updated after each training
  step as c ← 0.9 c + 0.1 · mean(teacher logits) (``center_momentum``); or ``sinkhorn``:
  Sinkhorn–Knopp (3 iterations) equipartition of the batch over prototypes (SwAV / DINOv2).
* **Temperatures**: student ``student_temp`` (0.1); teacher warmed up linearly from
  ``warmup_teacher_temp`` (0.04) to ``teacher_temp`` (0.07) over ``warmup_teacher_temp_steps``.
* **Views**: ``global_views`` then ``local_views`` (:mod:`physfm.data.views` strings). RINO:
  ``global_views: [full, kt16]``, ``local_views: [kt2, kt4, kt8]``.

The backbone written out is the teacher (``export: teacher``; DINO evaluates the teacher) or the
student (``export: student``); both are in ``objective.safetensors`` (``teacher.*`` and the heads).

Diagnostics, logged as metrics: ``teacher_entropy`` (mean entropy of the teacher's distributions;
ln K when it is uniform), ``teacher_marginal_entropy`` (entropy of their batch mean; 0 when one
prototype takes everything), ``kl_teacher_student`` (KL(p_t ‖ p_s) over pairs), ``prototypes_used``
(distinct teacher argmax prototypes in the batch), ``embedding_rank`` of the pooled embeddings.
Every ``collapse_check_every`` steps :meth:`Dino.after_step` checks for the two collapses: the
teacher uniform and the loss pinned at ln K (both within ``collapse_tolerance`` × ln K), or the
teacher using one prototype; ``collapse_patience`` checks in a row raise :class:`CollapseError`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physfm.models.backbone import Backbone
from physfm.models.contrastive import JETCLR_VIEWS
from physfm.models.diagnostics import effective_rank, koleo
from physfm.models.multiview import MultiViewObjective, ViewOptions
from physfm.models.objectives import Stats, _stat, register_objective
from physfm.runtime.distributed import all_reduce, world_size

BALANCING = ("center", "sinkhorn")


class CollapseError(ValueError):
    """Self-distillation collapsed (uniform teacher with the loss at ln K, or a single prototype): the
    configuration does not train (a ValueError, so the CLI reports it as a configuration error)."""


def teacher_momentum(step: int, total_steps: int, base: float) -> float:
    """EMA momentum for the update after optimizer step ``step`` (0-based): base at 0, cosine to 1 at the end."""
    t = min(max(step, 0) / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * t))


def teacher_temperature(step: int, warmup: float, final: float, warmup_steps: int) -> float:
    """Linear warm-up of the teacher temperature from ``warmup`` to ``final`` over ``warmup_steps``."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return final
    return warmup + (final - warmup) * step / warmup_steps


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← momentum · teacher + (1 − momentum) · student, parameter by parameter (and float buffers)."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameters")
    for t, s in zip(t_params, s_params, strict=True):
        t.mul_(momentum).add_(s.detach() * (1.0 - momentum))
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        if t.is_floating_point():
            t.mul_(momentum).add_(s * (1.0 - momentum))
        else:
            t.copy_(s)


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temperature: float, n_iters: int = 3, distributed: bool = True) -> Tensor:
    """``(B, K)`` teacher targets whose columns (prototypes) are used equally over the batch: over all
    ranks' batches with ``distributed`` (training), over this rank's (validation: ranks may see
    different numbers of batches, so no collective may run)."""
    reduce = all_reduce if distributed else (lambda t: t)
    q = torch.exp((logits.float() - 1.0) / temperature).T  # K x B; cosine logits are <= 1
    k, b = q.shape[0], q.shape[1] * (world_size() if distributed else 1)
    q /= reduce(q.sum())
    for _ in range(n_iters):
        q /= reduce(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T


def is_collapsed(loss: float, teacher_entropy: float, prototypes_used: float, k: int, tolerance: float) -> str:
    """Which collapse the numbers show ('' for none): 'uniform' (teacher ≈ uniform and loss ≈ ln K)
    or 'one prototype' (the teacher's argmax is the same prototype for every event)."""
    log_k = math.log(k)
    if abs(loss - log_k) <= tolerance * log_k and teacher_entropy >= (1.0 - tolerance) * log_k:
        return "uniform"
    if prototypes_used <= 1.0:
        return "one prototype"
    return ""


class DinoHead(nn.Module):
    """MLP → L2-normalised bottleneck → cosine logits against K L2-normalised prototypes."""

    def __init__(self, d_model: int, hidden: int, bottleneck: int, n_prototypes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.prototypes = nn.Parameter(torch.randn(n_prototypes, bottleneck) / math.sqrt(bottleneck))

    def forward(self, z: Tensor) -> Tensor:
        return F.normalize(self.mlp(z), dim=-1) @ F.normalize(self.prototypes, dim=-1).T


@dataclass
class DinoOptions(ViewOptions):
    global_views: list[str] = field(default_factory=lambda: list(JETCLR_VIEWS))
    local_views: list[str] = field(default_factory=list)
    n_prototypes: int = 256
    head_hidden: int = 256
    bottleneck_dim: int = 64
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 100
    teacher_momentum: float = 0.996
    balancing: str = "center"
    center_momentum: float = 0.9
    collapse_check_every: int = 10
    collapse_patience: int = 5
    collapse_tolerance: float = 0.02
    koleo_weight: float = 0.0  # DINOv2's KoLeo spread of the student's pooled global-view embeddings
    export: str = "teacher"  # the backbone written out: "teacher" (DINO's choice) or "student"


@register_objective
class Dino(MultiViewObjective):
    """DINO / RINO self-distillation; see the module docstring."""

    name = "dino"
    Options = DinoOptions

    def __init__(self, d_model: int, options: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(d_model, options, **kw)
        o = self.options
        if not o.global_views or len(self.views()) < 2:
            raise ValueError(
                f"dino needs at least one global view and two views in all; got global_views={o.global_views}, "
                f"local_views={o.local_views}"
            )
        if o.export not in ("teacher", "student"):
            raise ValueError(f"dino export must be 'teacher' or 'student', got '{o.export}'")
        if o.balancing not in BALANCING:
            raise ValueError(f"dino balancing must be one of {BALANCING}, got '{o.balancing}'")
        if o.n_prototypes < 2:
            raise ValueError(f"dino needs n_prototypes >= 2, got {o.n_prototypes}")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if getattr(o, name) <= 0:
                raise ValueError(f"dino {name} must be > 0, got {getattr(o, name)}")
        if not 0 <= o.teacher_momentum <= 1 or not 0 <= o.center_momentum <= 1:
            raise ValueError("dino teacher_momentum and center_momentum must lie in [0, 1]")
        self.head = DinoHead(d_model, o.head_hidden, o.bottleneck_dim, o.n_prototypes)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, o.n_prototypes))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("collapse_count", torch.zeros((), dtype=torch.long))
        self._student: tuple[Backbone, ...] = ()
        self._last: dict[str, Tensor] = {}

    def views(self) -> list[str]:
        return list(self.options.global_views) + list(self.options.local_views)

    # ------------------------------------------------------------------ teacher
    def attach(self, backbone: Backbone) -> None:
        """The teacher starts as a copy of the student backbone (not a registered submodule: a tuple)."""
        self._student = (backbone,)
        self.teacher = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher.eval()

    def export_backbone(self, backbone: Backbone) -> Backbone:
        """The EMA teacher (``export: teacher``, as DINO evaluates it) or the student."""
        if self.options.export == "student":
            return backbone
        self._check_attached()
        return self.teacher

    def train(self, mode: bool = True) -> Dino:
        super().train(mode)
        if hasattr(self, "teacher"):
            self.teacher.eval()  # no dropout in the teacher
        self.teacher_head.eval()
        return self

    def _check_attached(self) -> None:
        if not hasattr(self, "teacher"):
            raise RuntimeError("dino has no teacher yet: call objective.attach(backbone) before training")

    def after_step(self, step: int, total_steps: int) -> None:
        """EMA update of the teacher after optimizer step ``step`` (1-based), then the collapse check."""
        self._check_attached()
        m = teacher_momentum(step - 1, total_steps, self.options.teacher_momentum)
        ema_update(self.teacher, self._student[0], m)
        ema_update(self.teacher_head, self.head, m)
        self.steps_done.fill_(step)
        o = self.options
        if o.collapse_patience > 0 and step % max(o.collapse_check_every, 1) == 0 and self._last:
            vals = torch.stack([self._last[k].float() for k in ("loss", "teacher_entropy", "prototypes_used")])
            vals = all_reduce(vals.clone()) / world_size()
            loss, h_t, used = (float(v) for v in vals)
            kind = is_collapsed(loss, h_t, used, o.n_prototypes, o.collapse_tolerance)
            self.collapse_count.fill_(int(self.collapse_count) + 1 if kind else 0)
            if int(self.collapse_count) >= o.collapse_patience:
                log_k = math.log(o.n_prototypes)
                raise CollapseError(
                    f"dino collapsed ({kind}) at step {step}: {int(self.collapse_count)} checks in a row (every "
                    f"{o.collapse_check_every} steps) with loss {loss:.4f} (ln K = {log_k:.4f}), teacher entropy "
                    f"{h_t:.4f}, {used:.1f} prototype(s) used by the teacher. Try a lower teacher_temp / "
                    "warmup_teacher_temp, a higher center_momentum, balancing=sinkhorn, a lower lr or more views; "
                    "collapse_patience=0 turns the check off"
                )

    # ------------------------------------------------------------------ loss
    def forward(self, model: Backbone, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        self._check_attached()
        o = self.options
        n_views, n_global = len(self.views()), len(o.global_views)
        hidden, student, pooled = {}, [], []
        for i in range(n_views):
            h, e = self.encode(model, batch, i)
            hidden[i] = h
            pooled.append(e)
            student.append(self.head(e).float())
        with torch.no_grad():
            teacher = []
            for i in range(n_global):
                x, mask = batch[f"x_v{i}"], batch[f"mask_v{i}"]
                teacher.append(self.teacher_head(self.teacher.pool(self.teacher(x, mask), mask)).float())
            temp_t = teacher_temperature(
                int(self.steps_done), o.warmup_teacher_temp, o.teacher_temp, o.warmup_teacher_temp_steps
            )
            if o.balancing == "center":
                p_t = [F.softmax((t - self.center) / temp_t, dim=-1) for t in teacher]
            else:
                p_t = [sinkhorn_knopp(t, temp_t, distributed=self.training) for t in teacher]
            ent_t = [-(p * torch.log(p.clamp(min=1e-30))).sum(-1) for p in p_t]
        log_s = [F.log_softmax(s / o.student_temp, dim=-1) for s in student]
        n = student[0].shape[0]
        total, ce_sum, kl_sum, n_pairs = student[0].new_zeros(()), 0.0, 0.0, 0
        for i in range(n_global):
            for j in range(n_views):
                if j == i:
                    continue
                ce = -(p_t[i] * log_s[j]).sum(-1)
                total = total + ce.mean()
                ce_sum = ce_sum + ce.detach().sum()
                kl_sum = kl_sum + (ce.detach() - ent_t[i]).sum()
                n_pairs += 1
        loss_dino = total / n_pairs
        loss_koleo = loss_dino.new_zeros(())
        if o.koleo_weight > 0 and n >= 2:
            loss_koleo = sum(koleo(pooled[i]) for i in range(n_global)) / n_global
        with torch.no_grad():
            all_t = torch.cat(p_t)
            marginal = all_t.mean(0)
            used = torch.unique(all_t.argmax(-1)).numel()
            stats: Stats = {
                "loss_dino": _stat(ce_sum, n * n_pairs),
                "teacher_entropy": _stat(torch.stack(ent_t).sum(), n * n_global),
                "kl_teacher_student": _stat(kl_sum, n * n_pairs),
                "teacher_marginal_entropy": _stat(-(marginal * torch.log(marginal.clamp(min=1e-30))).sum(), 1),
                "prototypes_used": _stat(torch.tensor(float(used), device=all_t.device), 1),
                "teacher_temp": _stat(torch.tensor(temp_t, device=all_t.device), 1),
            }
            if n >= 2:
                stats["embedding_rank"] = _stat(effective_rank(pooled[0].detach()), 1)
                if o.koleo_weight > 0:
                    stats["loss_koleo"] = _stat(loss_koleo.detach(), 1)
            if self.training:
                self._last = {
                    "loss": loss_dino.detach(),
                    "teacher_entropy": torch.stack(ent_t).mean(),
                    "prototypes_used": stats["prototypes_used"][0],
                }
                if o.balancing == "center":
                    batch_center = all_reduce(torch.cat(teacher).sum(0, keepdim=True)) / (
                        len(teacher) * n * world_size()
                    )
                    self.center.mul_(o.center_momentum).add_(batch_center * (1 - o.center_momentum))
        loss_g, gstats = self.view_global_loss(model, batch, hidden)
        stats.update(gstats)
        loss = loss_dino + o.koleo_weight * loss_koleo + self.global_weight * loss_g
        stats["loss"] = _stat(loss * n, n)
        return loss, stats
