"""The one supervised training loop: any model, any :class:`physfm.finetune.task.Task`.

Fine-tuning cells of every task (:func:`physfm.finetune.train.finetune`) and the PFN baseline
(:func:`physfm.baselines.pfn.train_pfn`) train here. The labelled events are held in memory as
tensors (fine for the label counts of a label-efficiency study):

* batches are drawn without replacement from a seeded permutation, reshuffled each epoch
  (``np.random.default_rng([seed, order_salt])``), so a run is a function of its seed;
* every ``eval_every`` steps (and at the last) the task scores the in-budget validation part
  (:meth:`Task.validate`); the model with the lowest ``val_loss`` is kept, and training stops after
  ``patience`` evaluations without improvement. With no validation part (budget protocol ``fixed``)
  it trains ``max_steps`` and keeps the last model;
* ``frozen``: the model's ``backbone`` is not trained; its states are computed once and the
  ``head`` trains on the cache (only the class token's when the head reads nothing else);
* forward passes run under :func:`physfm.runtime.autocast` (bf16 on CUDA, nothing on CPU, so CPU
  runs stay fp32 and bit-reproducible); outputs reach the task's loss and scores in float32.

Budgets are steps, not seconds, so results do not depend on the machine.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from physfm.finetune.task import Task
from physfm.runtime import autocast, due, optimizer_step, progress_bar

#: Tensors of one part (train or validation): ``x`` normalised features, ``mask``, ``target``, optional ``tokens``.
Part = dict[str, Tensor]


@dataclass
class LoopSettings:
    """How long and how the loop trains (taken from a stage's settings dataclass)."""

    max_steps: int
    eval_every: int
    patience: int
    batch_size: int
    seed: int
    order_salt: int = 0xF17E  # second word of the batch-order seed
    clip_norm: float | None = 1.0  # gradient-norm clipping (None: none); :func:`physfm.runtime.optimizer_step`
    eval_batch: int = 256


@dataclass
class FitResult:
    """The best model's validation scores (``step``, ``val_loss``, the task's ``val_keys``) and the curve."""

    best: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    max_steps: int = 0

    @property
    def stopped_early(self) -> bool:
        return self.steps < self.max_steps


def tensors(inp: dict[str, np.ndarray], x_norm: np.ndarray) -> Part:
    """A :data:`Part` from a task's inputs and their normalised features."""
    part = {
        "x": torch.from_numpy(x_norm),
        "mask": torch.from_numpy(inp["mask"]),
        "target": torch.from_numpy(inp["target"]),
    }
    if "tokens" in inp:
        part["tokens"] = torch.from_numpy(inp["tokens"])
    return part


class _Forward:
    """``model(x, mask[, tokens])`` on rows of a part, or ``model.head`` on cached backbone states (frozen)."""

    def __init__(self, model: nn.Module, frozen: bool, device: torch.device, eval_batch: int) -> None:
        self.model, self.frozen, self.device, self.eval_batch = model, frozen, device, eval_batch
        self.keep = 1 if frozen and getattr(model.head, "uses_class_token_only", False) else None

    @torch.no_grad()
    def cache(self, part: Part, on_device: bool) -> Tensor | None:
        """The frozen backbone's states of every row of ``part`` (None unless frozen)."""
        if not self.frozen:
            return None
        self.model.backbone.eval()
        out = []
        for a in range(0, len(part["mask"]), self.eval_batch):
            sl = slice(a, a + self.eval_batch)
            tok = part["tokens"][sl].to(self.device) if "tokens" in part else None
            with autocast(self.device):
                h = self.model.backbone(part["x"][sl].to(self.device), part["mask"][sl].to(self.device), tokens=tok)
            out.append((h[:, : self.keep] if self.keep else h).float().cpu())
        states = torch.cat(out)
        return states.to(self.device) if on_device else states

    def __call__(self, part: Part, cache: Tensor | None, idx: Tensor) -> Tensor:
        """The model's output on rows ``idx`` of ``part``, in float32 (bf16 autocast inside on CUDA)."""
        m = part["mask"][idx].to(self.device)
        with autocast(self.device):
            if cache is not None:
                out = self.model.head(cache[idx].to(self.device), m)
            elif "tokens" in part:
                out = self.model(part["x"][idx].to(self.device), m, tokens=part["tokens"][idx].to(self.device))
            else:
                out = self.model(part["x"][idx].to(self.device), m)
        return out.float()


def fit(
    model: nn.Module,
    task: Task,
    train: Part,
    val: Part | None,
    opt: torch.optim.Optimizer,
    settings: LoopSettings,
    *,
    sched: Any = None,
    frozen: bool = False,
    extra_loss: Callable[[Tensor], Tensor] | None = None,
    device: torch.device | None = None,
    run: Any = None,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """Train ``model`` on ``train`` with ``task``'s loss; early-stop on ``val`` (see the module doc).

    The model ends holding its best (or, without ``val``, its last) weights. ``extra_loss(idx)``: a term
    added to the task's loss of the batch at rows ``idx`` of ``train``, after its forward pass (the
    ``scratch_global`` ablation's global-target loss, :mod:`physfm.finetune.auxiliary`). ``run``: an object
    with ``log_metrics(dict, step=)`` (a :class:`physfm.tracking.StageRun`) for the validation curve.
    """
    device = device or next(model.parameters()).device
    fwd = _Forward(model, frozen, device, settings.eval_batch)
    cache_tr, cache_va = fwd.cache(train, on_device=False), None if val is None else fwd.cache(val, on_device=True)
    y_tr, m_tr = train["target"], train["mask"]
    y_va = None if val is None else val["target"].to(device)
    m_va = None if val is None else val["mask"].to(device)
    params = [p for g in opt.param_groups for p in g["params"]]
    clip = math.inf if settings.clip_norm is None else settings.clip_norm  # inf: the norm is measured, not clipped

    @torch.no_grad()
    def validate() -> dict[str, float]:
        assert val is not None and y_va is not None and m_va is not None
        model.eval()
        n_va = len(y_va)
        eb = settings.eval_batch
        out = torch.cat([fwd(val, cache_va, torch.arange(a, min(a + eb, n_va))) for a in range(0, n_va, eb)])
        return task.validate(out, y_va, m_va)

    n = len(y_tr)
    if n == 0:
        raise ValueError("the training part is empty: no labelled events to train on")
    bs = min(settings.batch_size, n)
    rng = np.random.default_rng([settings.seed, settings.order_salt])
    order, pos = rng.permutation(n), 0
    best: dict[str, float] = {"step": 0, **{k: math.inf if k == "val_loss" else math.nan for k in task.val_keys}}
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    bad_evals, step, loss_sum, loss_n = 0, 0, 0.0, 0
    bar = progress_bar(settings.max_steps, desc=desc, show=progress)
    while step < settings.max_steps:
        if pos + bs > n:
            order, pos = rng.permutation(n), 0
        idx = torch.from_numpy(order[pos : pos + bs])
        pos += bs
        model.train()
        if frozen:
            model.backbone.eval()
        loss = task.loss(fwd(train, cache_tr, idx), y_tr[idx].to(device), m_tr[idx].to(device))
        if extra_loss is not None:
            loss = loss + extra_loss(idx)
        step += 1
        optimizer_step(loss, opt, sched, params, clip, step=step, total_steps=settings.max_steps)
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        bar.update(1)
        if val is not None and due(step, settings.eval_every, settings.max_steps):
            scores = validate()
            rec = {"step": step, "train_loss": loss_sum / loss_n, **scores, "lr": opt.param_groups[0]["lr"]}
            history.append(rec)
            loss_sum, loss_n = 0.0, 0
            if run is not None:
                run.log_metrics({k: v for k, v in rec.items() if k != "step"}, step=step)
            bar.set_postfix(
                val_loss=f"{scores['val_loss']:.4f}", best=f"{min(best['val_loss'], scores['val_loss']):.4f}"
            )
            if scores["val_loss"] < best["val_loss"] - 1e-6:
                best = {"step": step, **scores}
                best_state = copy.deepcopy(model.state_dict())
                bad_evals = 0
            else:
                bad_evals += 1
                if bad_evals >= settings.patience:
                    break
    bar.close()
    if val is not None:
        model.load_state_dict(best_state)
    else:  # budget protocol fixed: no labels to choose a checkpoint with; the last model is kept
        best = {"step": step, **{k: math.nan for k in task.val_keys}}
    return FitResult(best=best, history=history, steps=step, max_steps=settings.max_steps)


def train_record(result: FitResult) -> dict[str, Any]:
    """The ``train`` record of a fit: ``best_step``, ``best_<val key>`` for each score, ``steps``, ``stopped_early``."""
    rec: dict[str, Any] = {"best_step": result.best["step"]}
    rec.update({f"best_{k}": v for k, v in result.best.items() if k != "step"})
    rec.update({"steps": result.steps, "stopped_early": result.stopped_early})
    return rec
