"""The downstream-task interface: what one fine-tuning task owns, and the registry of tasks.

A task object owns everything that differs between downstream tasks; the training loop
(:func:`physfm.finetune.loop.fit`), the fine-tuning entry point (:func:`physfm.finetune.train.finetune`),
saving/loading (:func:`physfm.finetune.model.save_model` / ``load_model``) and evaluation
(:func:`physfm.evaluate.evaluate.evaluate_model`) are the same for all of them:

* its **inputs and targets**: :meth:`Task.inputs` reads a split (or the events of a label subset)
  as padded arrays ``x``, ``mask``, ``target``, ``event_key`` (and ``tokens`` for PolarBERT backbones);
  :meth:`Task.iter_inputs` streams a whole split as the same arrays in bounded blocks, and
  ``eval_keys`` names the per-event arrays :meth:`Task.evaluate` reads (all that evaluation keeps);
* its **head**: :meth:`Task.head` maps the backbone's states ``(B, n_cls + L, d)`` and the mask to the
  output (per event ``(B, ...)``, or per particle ``(B, L, ...)`` for per-particle tasks);
* its **loss** (:meth:`Task.loss`, masked for per-particle tasks);
* its **in-budget validation score**: :meth:`Task.validate` returns ``val_loss`` (lower is better:
  early stopping and the checkpoint choice use it) and the other ``val_keys`` logged beside it
  (:meth:`Task.validate_batches`: the same from the loop's inference batches);
* its **test metrics and predictions file**: :meth:`Task.evaluate`;
* its **report section data**: ``metric_labels`` (axis labels of its metrics), ``lower_is_better``
  (metrics compared negated by the label-efficiency factor) and ``headline`` (its default metric).

* what it learns from the budget's train part before training (:meth:`Task.fit`, e.g. a target scale).

Adding a task is a :class:`Task` subclass in a module of its own, listed in :data:`TASK_MODULES`
(``physfm finetune --task NAME[:OPTION]`` then reaches it); the loop, the entry point, saving and
evaluation are not touched.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from physfm.data.dataset import Dataset
from physfm.data.loader import BLOCK_EVENTS, iter_arrays, load_arrays
from physfm.data.shards import DataError
from physfm.models.backbone import BackboneConfig

#: Modules that define tasks (each a :class:`Task` subclass with a ``name``); ``name -> class`` is built from them.
TASK_MODULES = (
    "physfm.finetune.classification",
    "physfm.finetune.direction",
    "physfm.finetune.regression",
    "physfm.finetune.segmentation",
)


#: A task's arrays of one split or part: ``x``, ``mask``, ``target``, ``event_key``, ... (see :meth:`Task.inputs`).
Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Scoring:
    """How test metrics are computed: bootstrap resamples and seed; signal:background ``pairs`` and
    signal efficiencies ``effs`` of the background rejections (classification; None: its defaults)."""

    n_bootstrap: int = 200
    seed: int = 0
    pairs: Sequence[tuple[str, str]] | None = None
    effs: Sequence[float] | None = None


class Task(ABC):
    """One downstream task: head, loss, validation score, metrics and report data (see the module doc)."""

    name: ClassVar[str]  # registry key, and ``meta["task"]`` of a saved model
    kind: ClassVar[str]  # ``meta["kind"]`` of a saved model; default ``physfm-<name>``
    files: ClassVar[tuple[str, str]]  # (weights, meta) files of a saved model; default ``<name>.safetensors/.json``
    val_keys: ClassVar[tuple[str, ...]]  # what validate() returns; the first is val_loss
    metric_labels: ClassVar[dict[str, str]] = {}
    lower_is_better: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str]
    default_features: ClassVar[tuple[str, ...]]  # inputs of a backbone-less scratch model
    eval_keys: ClassVar[tuple[str, ...]]  # the arrays of inputs() that evaluate() reads (kept while streaming)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls):
            cls.kind = vars(cls).get("kind", f"physfm-{cls.name}")
            cls.files = vars(cls).get("files", (f"{cls.name}.safetensors", f"{cls.name}.json"))

    # ------------------------------------------------------------------ construction and records
    @classmethod
    def for_dataset(cls, ds: Dataset, option: str | None = None) -> Task:
        """The task on dataset ``ds`` (``option``: the part after ``:`` of a task spec, e.g. the target)."""
        return cls()

    def to_meta(self) -> dict[str, Any]:
        """What a saved model records to rebuild this task (:meth:`from_meta`); ``classes`` always."""
        return {"task": self.name, "classes": []}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Task:
        return cls()

    def fit(self, train: dict[str, np.ndarray]) -> None:
        """Fit what the task learns from the budget's train part before training (e.g. a target scale)."""
        return None

    # ------------------------------------------------------------------ data, head, loss, scores
    def extra_columns(self) -> tuple[str, ...]:
        """Per-particle columns the task reads beside the backbone's inputs (``extra`` of :func:`load_inputs`)."""
        return ()

    def complete(self, ds: Dataset, inp: Inputs, whole: bool) -> Inputs:
        """``target`` (and what else the task derives) of a block of :func:`load_inputs` arrays; ``whole``:
        they come from a whole split, not a label subset's ``indices``. Row-wise, so blocks concatenate."""
        return inp

    def inputs(
        self, ds: Dataset, split: str, bmeta: dict[str, Any], indices: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """``x`` (raw features in ``bmeta["features"]`` order), ``mask``, ``target``, ``event_key`` (+ ``tokens``)."""
        return self.complete(ds, load_inputs(ds, split, bmeta, indices, self.extra_columns()), indices is None)

    def iter_inputs(
        self, ds: Dataset, split: str, bmeta: dict[str, Any], block_events: int = BLOCK_EVENTS
    ) -> Iterator[Inputs]:
        """:meth:`inputs` of the whole split in blocks of at most ``block_events`` events, in stored order
        (concatenated, equal to ``inputs(ds, split, bmeta, None)``): memory bounded by the block."""
        for inp in iter_inputs(ds, split, bmeta, self.extra_columns(), block_events):
            yield self.complete(ds, inp, True)

    @abstractmethod
    def head(self, backbone_config: BackboneConfig, head: dict[str, Any]) -> nn.Module:
        """A fresh head ``(h, mask) -> output``, from the settings recorded by :meth:`head_meta`."""

    def head_meta(self, head: Any) -> dict[str, Any]:
        """The head settings this task uses, from a :class:`physfm.finetune.model.HeadConfig`."""
        from dataclasses import asdict

        return asdict(head)

    @abstractmethod
    def loss(self, out: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """The training loss of a batch (``mask``: real particles, for per-particle tasks)."""

    @abstractmethod
    def validate(self, out: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
        """``val_loss`` (the early-stopping score, lower is better) and the other ``val_keys``."""

    def validate_batches(self, batches: Iterable[tuple[Tensor, Tensor, Tensor]]) -> dict[str, float]:
        """:meth:`validate` of a whole validation part given as ``(out, target, mask)`` batches (the loop's
        inference batches): by default the batches concatenated; a task whose outputs differ in shape
        from batch to batch (point clouds padded per batch) reduces them itself."""
        outs, targets, masks = zip(*batches, strict=True)
        return self.validate(torch.cat(outs), torch.cat(targets), torch.cat(masks))

    @abstractmethod
    def evaluate(self, out: np.ndarray, inp: Inputs, ds: Dataset, how: Scoring) -> tuple[dict[str, Any], Inputs]:
        """``(record, predictions)``: the test metrics (``metrics``, ``std``, ``lower_bounds``, ``n_events``,
        ...) merged into the evaluation record, and the arrays of the predictions ``.npz``."""

    def check(self, ds: Dataset, meta: dict[str, Any]) -> None:
        """Refuse a dataset a saved model of this task cannot be evaluated on (clear error)."""
        return None


def load_inputs(
    ds: Dataset,
    split: str,
    bmeta: dict[str, Any],
    indices: np.ndarray | None,
    extra: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """The backbone's inputs of a split's events (all, or ``indices``): raw ``x`` in ``bmeta["features"]``
    order, ``mask``, ``label``, ``events``, ``event_key``, ``n_particles``; ``tokens`` (DOM ids) when the
    backbone embeds them (:func:`physfm.models.polarbert.uses_dom_tokens`); ``extra`` per-particle columns
    (e.g. a per-particle label) as ``extra`` ``(N, L, len(extra))``."""
    names = input_columns(bmeta, extra)
    arr = load_arrays(ds, split, features=names, max_len=int(bmeta["max_len"]), indices=indices)
    return shape_inputs(arr, bmeta, extra)


def iter_inputs(
    ds: Dataset, split: str, bmeta: dict[str, Any], extra: tuple[str, ...] = (), block_events: int = BLOCK_EVENTS
) -> Iterator[dict[str, np.ndarray]]:
    """:func:`load_inputs` of a whole split in blocks of at most ``block_events`` events, in stored order."""
    names = input_columns(bmeta, extra)
    for arr in iter_arrays(ds, split, features=names, max_len=int(bmeta["max_len"]), block_events=block_events):
        yield shape_inputs(arr, bmeta, extra)


def input_columns(bmeta: dict[str, Any], extra: tuple[str, ...] = ()) -> list[str]:
    """The columns read for a backbone: its features, the DOM id when it embeds them, then ``extra``."""
    from physfm.models.polarbert import DOM_FEATURE, uses_dom_tokens

    return list(bmeta["features"]) + ([DOM_FEATURE] if uses_dom_tokens(bmeta) else []) + list(extra)


def shape_inputs(arr: dict[str, np.ndarray], bmeta: dict[str, Any], extra: tuple[str, ...] = ()) -> Inputs:
    """Padded arrays of :func:`input_columns` as the inputs of :func:`load_inputs` (``x``, ``tokens``, ``extra``)."""
    from physfm.models.polarbert import dom_tokens, uses_dom_tokens

    n_features = len(bmeta["features"])
    x = arr.pop("x")
    out = {**arr, "x": np.ascontiguousarray(x[..., :n_features])}
    if uses_dom_tokens(bmeta):
        n_doms = int(bmeta["config"]["vocab_size"]) - 1
        out["tokens"] = dom_tokens(x[..., n_features], arr["mask"], n_doms)
    if extra:
        out["extra"] = x[..., x.shape[-1] - len(extra) :]
    return out


# ---------------------------------------------------------------------- registry
def tasks() -> dict[str, type[Task]]:
    """``name -> Task`` subclass for every task module in :data:`TASK_MODULES`."""
    out: dict[str, type[Task]] = {}
    for module in TASK_MODULES:
        for obj in vars(importlib.import_module(module)).values():
            if isinstance(obj, type) and issubclass(obj, Task) and obj is not Task and "name" in vars(obj):
                out[obj.name] = obj
    return out


def make_task(spec: Task | str | None, ds: Dataset) -> Task:
    """The task a run trains: a :class:`Task`, or a spec ``NAME[:OPTION]`` (``regression:log_mass``), or
    ``auto``/None: classification when the dataset has classes, else IceCube direction."""
    if isinstance(spec, Task):
        return spec
    spec = "auto" if spec in (None, "") else str(spec)
    if spec == "auto":
        spec = "classification" if ds.classes else "direction"
    name, _, option = spec.partition(":")
    known = tasks()
    if name not in known:
        raise ValueError(f"unknown task '{name}'; choose from auto, {', '.join(sorted(known))}")
    return known[name].for_dataset(ds, option or None)


#: ``meta["kind"]`` of models saved before a meta named its task.
_KINDS = {"physfm-classifier": "classification", "physfm-direction": "direction"}


def task_from_meta(meta: dict[str, Any]) -> Task:
    """The task of a saved model's meta."""
    name = meta.get("task") or _KINDS.get(str(meta.get("kind")))
    known = tasks()
    if name not in known:
        raise DataError(
            f"a fine-tuned model of unknown task '{name}' (kind {meta.get('kind')}); known: {sorted(known)}"
        )
    return known[name].from_meta(meta)


def report_metrics() -> tuple[dict[str, str], tuple[str, ...]]:
    """Every task's report data: ``(metric -> axis label, metrics where lower is better)``."""
    labels: dict[str, str] = {}
    lower: list[str] = []
    for cls in tasks().values():
        labels.update(cls.metric_labels)
        lower += [m for m in cls.lower_is_better if m not in lower]
    return labels, tuple(lower)
