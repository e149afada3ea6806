"""``flow``: generative pretraining by flow matching (rectified flow), OmniLearned-style.

Why flow matching and not OmniLearn's v-prediction diffusion: OmniLearned (OmniLearn's PyTorch
successor) moved to it; the straight interpolation needs no noise schedule to clip or tune (its
endpoints are exact, :func:`interpolate`); the ODE it learns is close to straight, so a few Euler /
midpoint steps sample well; and the loss is one MSE with no SNR weighting.

* **Noising**: ``x_t = (1 − t) x_0 + t ε`` with ``x_0`` the backbone's normalised particle features and
  ``ε ~ N(0, I)``; the target velocity is ``ε − x_0``. ``t`` is drawn per jet, ``logit_normal``
  (SD3's rectified-flow sampling, weighting the middle of the path) or ``uniform``.
* **Model**: the backbone encodes the *noised* jet (so pretraining trains it, as OmniLearn's PET body
  is trained); a small conditional head (:class:`VelocityHead`) predicts the velocity of each particle
  from the backbone's state of that particle, its noised features, a time embedding and the jet
  globals (the normalised ``global_targets``, e.g. log mass and log multiplicity: generation is
  conditional on them, as OmniLearn's on the jet kinematics and multiplicity). The globals are the
  condition here, not a regression target: this objective has no class-token loss.
* **Loss**: squared error summed over features' mean and over real particles, divided by the number
  of real particles in the batch (padding never counts).
* **EMA**: an exponential moving average of the backbone and the head (``ema_decay``, warmed up as
  ``min(decay, (1 + step) / (10 + step))``), updated by the loop's after-step hook as DINO's teacher
  is; it samples, and it is the backbone written out (``export: ema``; ``student`` for the trained one).
* **Sampling** (:meth:`FlowMatching.generate`): from ``ε`` at t = 1 to t = 0 with :func:`integrate`
  (Euler or midpoint, a configurable number of steps), given each jet's multiplicity and globals
  (``physfm sample`` takes them from real jets of a split and compares the generated jets with them).

Label-free pretraining uses only this generative term; OmniLearn's classifier and class-smear terms
need labels and would belong to fine-tuning (not built).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from physfm.models.backbone import Backbone
from physfm.models.dino import ema_update
from physfm.models.objectives import Objective, ObjectiveOptions, Stats, _stat, register_objective

TIME_SAMPLING = ("logit_normal", "uniform")
SOLVERS = ("euler", "midpoint")


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The rectified-flow path ``(1 − t) x0 + t noise``: the data at t = 0, pure noise at t = 1.
    ``t`` has one value per event (``(B,)``) or broadcasts against ``x0``."""
    while t.dim() < x0.dim():
        t = t.unsqueeze(-1)
    return (1.0 - t) * x0 + t * noise


def sample_time(n: int, kind: str, generator: torch.Generator | None = None) -> Tensor:
    """``(n,)`` training times in (0, 1): ``uniform``, or ``logit_normal`` (sigmoid of a standard normal)."""
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    if kind == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=generator))
    raise ValueError(f"time_sampling must be one of {TIME_SAMPLING}, got '{kind}'")


@torch.no_grad()
def integrate(velocity: Callable[[Tensor, Tensor], Tensor], x1: Tensor, steps: int, solver: str = "midpoint") -> Tensor:
    """Solve ``dx/dt = velocity(x, t)`` from t = 1 (``x1``, noise) to t = 0 in ``steps`` equal steps.

    ``velocity(x, t)`` gets ``t`` as a ``(B,)`` tensor. ``euler`` calls it once per step, ``midpoint``
    (second order) twice."""
    if steps < 1:
        raise ValueError(f"the ODE needs at least one step, got {steps}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got '{solver}'")
    x, dt = x1, -1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), 1.0 - i / steps, dtype=x.dtype, device=x.device)
        v = velocity(x, t)
        if solver == "midpoint":
            v = velocity(x + 0.5 * dt * v, t + 0.5 * dt)
        x = x + dt * v
    return x


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t (periods up to 10⁴ in units of t/1000), then an MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        arg = 1000.0 * t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
        if self.dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return self.mlp(emb)


class VelocityHead(nn.Module):
    """Per-particle velocity from [context, noised features, time embedding, globals]: an MLP with
    residual hidden layers."""

    def __init__(self, d_context: int, n_features: int, n_globals: int, hidden: int, layers: int, time_dim: int):
        super().__init__()
        self.time = TimeEmbedding(time_dim)
        self.inp = nn.Linear(d_context + n_features + time_dim + n_globals, hidden)
        self.hidden = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU()) for _ in range(layers)
        )
        self.out = nn.Linear(hidden, n_features)

    def forward(self, context: Tensor, xt: Tensor, t: Tensor, globals_: Tensor) -> Tensor:
        b, length = xt.shape[:2]
        cond = torch.cat([self.time(t), globals_.to(self.time.mlp[0].weight.dtype)], dim=-1)
        z = torch.cat([context, xt.to(context.dtype), cond[:, None].expand(b, length, -1).to(context.dtype)], -1)
        h = self.inp(z)
        for layer in self.hidden:
            h = h + layer(h)
        return self.out(h)


@dataclass
class FlowOptions(ObjectiveOptions):
    head_hidden: int = 128  # width of the velocity head
    head_layers: int = 2  # residual hidden layers of the velocity head
    time_dim: int = 64  # size of the time embedding
    time_sampling: str = "logit_normal"  # "logit_normal" (SD3 rectified flow) or "uniform"
    ema_decay: float = 0.999  # EMA of backbone + head, used for sampling
    export: str = "ema"  # the backbone written out: "ema" or "student"


@register_objective
class FlowMatching(Objective):
    """Conditional flow matching of the particle features; see the module docstring."""

    name = "flow"
    needs_tokenizer = False
    Options = FlowOptions

    def __init__(self, d_model: int, options: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(d_model, options, **kw)
        o = self.options
        if o.time_sampling not in TIME_SAMPLING:
            raise ValueError(f"flow time_sampling must be one of {TIME_SAMPLING}, got '{o.time_sampling}'")
        if o.export not in ("ema", "student"):
            raise ValueError(f"flow export must be 'ema' or 'student', got '{o.export}'")
        if not 0.0 <= o.ema_decay < 1.0:
            raise ValueError(f"flow ema_decay must lie in [0, 1), got {o.ema_decay}")
        if self.n_features <= 0:
            raise ValueError("flow generates continuous particle features: the backbone needs n_features > 0")
        if hasattr(self, "global_head"):
            del self.global_head  # the globals condition the flow; they are not regressed
        self.head = VelocityHead(
            d_model, self.n_features, len(self.global_names), o.head_hidden, o.head_layers, o.time_dim
        )
        self._student: tuple[Backbone, ...] = ()

    @classmethod
    def configure_backbone(cls, model: dict[str, Any], options: dict[str, Any], codebook_size: int) -> dict[str, Any]:
        return {**model, "causal": False, "mask_token": False}

    # ------------------------------------------------------------------ EMA
    def attach(self, backbone: Backbone) -> None:
        """The EMA starts as a copy of the backbone and the head (registered: it is checkpointed)."""
        self._student = (backbone,)
        self.ema = copy.deepcopy(backbone).requires_grad_(False).eval()
        self.ema_head = copy.deepcopy(self.head).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FlowMatching:
        super().train(mode)
        for name in ("ema", "ema_head"):
            if hasattr(self, name):
                getattr(self, name).eval()
        return self

    def after_step(self, step: int, total_steps: int) -> None:
        if not self._student:
            raise RuntimeError("flow has no EMA yet: call objective.attach(backbone) before training")
        decay = min(self.options.ema_decay, (1.0 + step) / (10.0 + step))
        ema_update(self.ema, self._student[0], decay)
        ema_update(self.ema_head, self.head, decay)

    def export_backbone(self, backbone: Backbone) -> Backbone:
        return self.ema if self.options.export == "ema" and hasattr(self, "ema") else backbone

    # ------------------------------------------------------------------ loss
    def velocity(self, model: Backbone, head: VelocityHead, xt: Tensor, mask: Tensor, t: Tensor, g: Tensor) -> Tensor:
        """``(B, L, F)`` predicted velocity of the noised jets ``xt`` at times ``t`` ``(B,)``."""
        h = model(xt, mask)[:, model.config.n_cls :]
        return head(h, xt, t, g).float() * mask.unsqueeze(-1)

    def forward(self, model: Backbone, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        x0, mask = batch["x"], batch["mask"]
        b, dev = x0.shape[0], x0.device
        gen = None
        if not self.training:  # validation: the same noise and times at every evaluation
            gen = torch.Generator().manual_seed(int(batch["event_key"][0]) & 0x7FFFFFFF)
        t = sample_time(b, self.options.time_sampling, gen).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev) if gen is not None else torch.randn_like(x0)
        w = mask.unsqueeze(-1).to(x0.dtype)
        xt = interpolate(x0, noise, t) * w
        g = batch["global"] if self.global_names else x0.new_zeros(b, 0)
        v = self.velocity(model, self.head, xt, mask, t, g)
        err = ((v - (noise - x0).float() * w) ** 2).mean(-1) * w[..., 0]
        n_real = mask.sum()
        loss = err.sum() / n_real.clamp(min=1)
        stats = {"loss_flow": _stat(err.sum(), n_real), "loss": _stat(loss * b, b)}
        return loss, stats

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        mask: Tensor,
        globals_: Tensor,
        *,
        steps: int = 20,
        solver: str = "midpoint",
        seed: int = 0,
        use_ema: bool = True,
    ) -> Tensor:
        """``(B, L, F)`` generated normalised features for jets of the given multiplicity (``mask``) and
        normalised globals ``(B, n_globals)``, with the EMA weights (``use_ema``) or the trained ones."""
        if use_ema and not hasattr(self, "ema"):
            raise RuntimeError("flow has no EMA: call objective.attach(backbone) and load its weights first")
        model = self.ema if use_ema else self._student[0]
        head = self.ema_head if use_ema else self.head
        gen = torch.Generator().manual_seed(seed)
        x1 = torch.randn((*mask.shape, self.n_features), generator=gen).to(mask.device)
        w = mask.unsqueeze(-1).to(x1.dtype)
        return integrate(lambda x, t: self.velocity(model, head, x * w, mask, t, globals_), x1 * w, steps, solver) * w
