"""The one supervised training loop: any model, any :class:`physfm.finetune.task.Task`.

Fine-tuning cells of every task (:func:`physfm.finetune.train.finetune`), LArTPC per-point
segmentation on a patch backbone (:func:`physfm.finetune.patch_segmentation.finetune_segmentation`)
and the PFN baseline (:func:`physfm.baselines.pfn.train_pfn`) train here. The labelled events are
held in memory (fine for the label counts of a label-efficiency study):

* batches are drawn without replacement from a seeded permutation, reshuffled each epoch
  (``np.random.default_rng([seed, order_salt])``), so a run is a function of its seed;
* every ``eval_every`` steps (and at the last) the task scores the in-budget validation part
  (:meth:`Task.validate`); the model with the lowest ``val_loss`` is kept, and training stops after
  ``patience`` evaluations without improvement. With no validation part (budget protocol ``fixed``)
  it trains ``max_steps`` and keeps the last model;
* ``frozen``: the model's ``backbone`` is not trained; what the head reads of it
  (``model.encode``) is computed once and the head trains on the cache (``model.decode``);
* forward passes run under :func:`physfm.runtime.autocast` (bf16 on CUDA, nothing on CPU, so CPU
  runs stay fp32 and bit-reproducible); outputs reach the task's loss and scores in float32.

A **part** (train or validation) is a dict of tensors with one row per event (``x``, ``mask``,
``target``, and any further model input such as ``tokens`` or a head's ``side`` inputs), or any object
with ``len()`` and ``rows(idx)`` giving that dict for rows ``idx`` (ragged point clouds padded per batch:
:class:`physfm.finetune.patch_segmentation.PointEvents`). A batch's entries other than ``target`` are
the model's keyword inputs. The loop asks of a model only ``model(**inputs)`` and, when frozen, a
``backbone`` (kept in eval mode), ``encode(**inputs)`` (a tensor or a tuple of tensors, one row per
event) and ``decode(states, **inputs)``; of a task its ``loss``, ``val_keys`` and
:meth:`~physfm.finetune.task.Task.validate_batches`.

Budgets are steps, not seconds, so results do not depend on the machine.
"""

from __future__ import annotations

import collections
import copy
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from physfm.finetune.task import Task
from physfm.runtime import autocast, due, optimizer_step, progress_bar


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
    # the model before any step is a checkpoint candidate: validated at step 0 and kept unless a step beats it
    # (a head whose untrained output is a baseline, e.g. head.inputs linefit, then never ends worse than it on val)
    initial_candidate: bool = False
    # weight averaging: the mean of the weights at the last `average_last` evaluations is one more checkpoint
    # candidate, validated like the others and kept only if it beats the best (0 or 1: off)
    average_last: int = 0


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


class RowSource(Protocol):
    """A part whose batches are built per batch (e.g. ragged events padded to the batch's longest)."""

    def __len__(self) -> int: ...

    def rows(self, idx: Tensor) -> dict[str, Tensor]: ...


#: One part (train or validation): tensors with a row per event (``x``, ``mask``, ``target``, optional
#: ``tokens``, ...), or a :class:`RowSource` (see the module doc).
Part = Mapping[str, Tensor] | RowSource
#: Cached frozen states: one tensor, or a tuple of tensors, with a row per event.
States = Tensor | tuple[Tensor, ...]


def tensors(inp: dict[str, np.ndarray], x_norm: np.ndarray) -> dict[str, Tensor]:
    """A :data:`Part` from a task's inputs and their normalised features."""
    part = {
        "x": torch.from_numpy(x_norm),
        "mask": torch.from_numpy(inp["mask"]),
        "target": torch.from_numpy(inp["target"]),
    }
    for key in ("tokens", "side"):  # DOM ids (PolarBERT), a head's side inputs (physfm.finetune.head_inputs)
        if key in inp:
            part[key] = torch.from_numpy(inp[key])
    return part


def part_len(part: Part) -> int:
    """Events in a part."""
    return len(part) if not isinstance(part, Mapping) else len(part["target"])


def rows(part: Part, idx: Tensor) -> dict[str, Tensor]:
    """The batch of rows ``idx`` of a part: ``target``, ``mask`` and the model's other inputs."""
    return {k: v[idx] for k, v in part.items()} if isinstance(part, Mapping) else part.rows(idx)


def _states_rows(states: States, idx: Tensor) -> States:
    return tuple(s[idx] for s in states) if isinstance(states, tuple) else states[idx]


class _Forward:
    """``model(**inputs)`` on a batch, or ``model.decode`` on cached ``model.encode`` states (frozen)."""

    def __init__(self, model: nn.Module, frozen: bool, device: torch.device, eval_batch: int) -> None:
        self.model, self.frozen, self.device, self.eval_batch = model, frozen, device, eval_batch

    def inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in batch.items() if k != "target"}

    @torch.no_grad()
    def cache(self, part: Part, on_device: bool) -> States | None:
        """The frozen encoder's states of every row of ``part`` (None unless frozen)."""
        if not self.frozen:
            return None
        self.model.eval()
        out: list[tuple[Tensor, ...]] = []
        n = part_len(part)
        for a in range(0, n, self.eval_batch):
            with autocast(self.device):
                s = self.model.encode(**self.inputs(rows(part, torch.arange(a, min(a + self.eval_batch, n)))))
            out.append(tuple(s) if isinstance(s, tuple) else (s,))
        where = self.device if on_device else torch.device("cpu")
        cat = tuple(
            torch.cat([(t.float() if t.is_floating_point() else t).cpu() for t in c]).to(where)
            for c in zip(*out, strict=True)
        )
        return cat if len(cat) > 1 else cat[0]

    def __call__(self, batch: dict[str, Tensor], cache: States | None, idx: Tensor) -> Tensor:
        """The model's output on ``batch`` (rows ``idx`` of its part), in float32 (bf16 autocast inside on CUDA)."""
        inputs = self.inputs(batch)
        with autocast(self.device):
            if cache is not None:
                states = _states_rows(cache, idx)
                st = tuple(t.to(self.device) for t in states) if isinstance(states, tuple) else states.to(self.device)
                out = self.model.decode(st, **inputs)
            else:
                out = self.model(**inputs)
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
    params = [p for g in opt.param_groups for p in g["params"]]
    clip = math.inf if settings.clip_norm is None else settings.clip_norm  # inf: the norm is measured, not clipped

    @torch.no_grad()
    def validate() -> dict[str, float]:
        assert val is not None
        model.eval()
        n_va, eb = part_len(val), settings.eval_batch

        def batches() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
            for a in range(0, n_va, eb):
                idx = torch.arange(a, min(a + eb, n_va))
                b = rows(val, idx)
                yield fwd(b, cache_va, idx), b["target"].to(device), b["mask"].to(device)

        return task.validate_batches(batches())

    n = part_len(train)
    if n == 0:
        raise ValueError("the training part is empty: no labelled events to train on")
    bs = min(settings.batch_size, n)
    rng = np.random.default_rng([settings.seed, settings.order_salt])
    order, pos = rng.permutation(n), 0
    best: dict[str, float] = {"step": 0, **{k: math.inf if k == "val_loss" else math.nan for k in task.val_keys}}
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    bad_evals, step, loss_sum, loss_n = 0, 0, 0.0, 0
    if val is not None and settings.initial_candidate:
        best = {"step": 0, **validate()}
        history.append({**best, "lr": opt.param_groups[0]["lr"]})
        if run is not None:
            run.log_metrics({k: v for k, v in history[0].items() if k != "step"}, step=0)
    tail: collections.deque[dict[str, Tensor]] = collections.deque(maxlen=max(settings.average_last, 1))
    bar = progress_bar(settings.max_steps, desc=desc, show=progress)
    while step < settings.max_steps:
        if pos + bs > n:
            order, pos = rng.permutation(n), 0
        idx = torch.from_numpy(order[pos : pos + bs])
        pos += bs
        model.train()
        if frozen:
            model.backbone.eval()
        b = rows(train, idx)
        loss = task.loss(fwd(b, cache_tr, idx), b["target"].to(device), b["mask"].to(device))
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
            if settings.average_last > 1:
                tail.append(copy.deepcopy(model.state_dict()))
            if scores["val_loss"] < best["val_loss"] - 1e-6:
                best = {"step": step, **scores}
                best_state = copy.deepcopy(model.state_dict())
                bad_evals = 0
            else:
                bad_evals += 1
                if bad_evals >= settings.patience:
                    break
    bar.close()
    if val is not None and settings.average_last > 1 and len(tail) > 1:
        model.load_state_dict(average_states(list(tail)))
        scores = validate()
        history.append({"step": step, "averaged": len(tail), **scores})
        if scores["val_loss"] < best["val_loss"] - 1e-6:
            best = {"step": step, "averaged": len(tail), **scores}
            best_state = copy.deepcopy(model.state_dict())
    if val is not None:
        model.load_state_dict(best_state)
    else:  # budget protocol fixed: no labels to choose a checkpoint with; the last model is kept
        best = {"step": step, **{k: math.nan for k in task.val_keys}}
    return FitResult(best=best, history=history, steps=step, max_steps=settings.max_steps)


def average_states(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The element-wise mean of floating-point entries of ``states`` (the others from the last state)."""
    out = {}
    for k, v in states[-1].items():
        out[k] = torch.stack([s[k] for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v.clone()
    return out


def train_record(result: FitResult) -> dict[str, Any]:
    """The ``train`` record of a fit: ``best_step``, ``best_<val key>`` for each score, ``steps``, ``stopped_early``."""
    rec: dict[str, Any] = {"best_step": result.best["step"]}
    rec.update({f"best_{k}": v for k, v in result.best.items() if k != "step"})
    rec.update({"steps": result.steps, "stopped_early": result.stopped_early})
    return rec
