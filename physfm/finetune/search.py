"""In-budget hyperparameter search of one grid cell: every candidate trained, the best kept.

The fine-tuning section's ``search`` grid (``finetune.search`` in the config: e.g. ``{lr: [5e-4,
2e-3], "head.dropout": [0.1, 0.3], max_steps: [400, 800]}``) is expanded into its combinations; each
is one call of the cell's training entry point (:func:`physfm.finetune.train.finetune`, any task) on
the same label subset, seed and mode. The
candidate with the lowest best validation loss **on the subset's in-budget validation part** wins;
the dataset's labelled val split and the test split are never read (the training entry point reads
only the train split's subset parts). Every mode (scratch, finetune, frozen and the ablation modes)
gets the same grid, so the tuning budget is symmetric. The chosen model is written to ``out_dir``
with its meta's ``search`` record: the grid, every candidate's settings and in-budget validation
score, and the index chosen. Under budget protocol ``fixed`` there is no validation part, so a grid
of more than one candidate is refused.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from physfm.finetune.model import load_model, save_model

#: Settings a grid may vary: FinetuneConfig fields and the head's (as ``head.<key>``).
SEARCHABLE = (
    "lr",
    "weight_decay",
    "max_steps",
    "patience",
    "warmup_steps",
    "backbone_lr_scale",
    "layer_decay",
    "batch_size",
    "head.dropout",
    "head.hidden",
)


def candidates(grid: dict[str, list[Any]] | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Every combination of the grid (keys sorted), as ``{key: value}``; ``[{}]`` for an empty grid.

    A list of mappings is taken as the candidates themselves (a declared set of points, e.g. two
    candidates that differ in lr, weight decay and max_steps together, where a product would be too big).
    """
    if isinstance(grid, list):
        if not grid or not all(isinstance(c, dict) for c in grid):
            raise ValueError("finetune.search as a list: give a non-empty list of mappings (one per candidate)")
        for c in grid:
            if bad := sorted(set(c) - set(SEARCHABLE)):
                raise ValueError(f"finetune.search: cannot search over {bad}; choose among {list(SEARCHABLE)}")
        return [dict(sorted(c.items())) for c in grid]
    grid = dict(grid or {})
    if bad := sorted(set(grid) - set(SEARCHABLE)):
        raise ValueError(f"finetune.search: cannot search over {bad}; choose among {list(SEARCHABLE)}")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ValueError(f"finetune.search.{k}: give a non-empty list of values, got {v!r}")
    keys = sorted(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def apply(cfg: Any, settings: dict[str, Any]) -> Any:
    """A copy of ``cfg`` (a FinetuneConfig) with one candidate's settings (``head.<key>`` into its head)."""

    def cast(owner: Any, key: str, value: Any) -> Any:  # "0.001" from a command line -> the field's type
        kind = type(getattr(owner, key))
        return kind(value) if kind in (int, float) and not isinstance(value, bool) else value

    head = {k[5:]: cast(cfg.head, k[5:], v) for k, v in settings.items() if k.startswith("head.")}
    top = {k: cast(cfg, k, v) for k, v in settings.items() if not k.startswith("head.")}
    if head:
        top["head"] = dataclasses.replace(cfg.head, **head)
    return dataclasses.replace(cfg, **top)


class _Prefixed:
    """A run that logs a candidate's metrics under ``search.c<i>.`` (the chosen one is replayed unprefixed)."""

    def __init__(self, run: Any, prefix: str) -> None:
        self.run, self.prefix = run, prefix

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log_metrics({f"{self.prefix}{k}": v for k, v in metrics.items()}, step=step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.run, name)


def search(
    train_fn: Callable[..., dict[str, Any]],
    data: Any,
    out_dir: str | Path,
    cfg: Any,
    grid: dict[str, list[Any]] | list[dict[str, Any]] | None,
    *,
    run: Any = None,
    extra_meta: dict[str, Any] | None = None,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Train every candidate of ``grid`` with ``train_fn(data, dir, cfg_i, run=..., **train_kwargs)``,
    keep the one with the lowest in-budget validation loss in ``out_dir``; return its meta.

    ``meta["search"]``: ``grid``, ``candidates`` (``settings``, ``val_loss``, ``best_step``,
    ``steps``), ``chosen`` (index), ``criterion``. Ties go to the earlier candidate.
    """
    out_dir = Path(out_dir)
    cands = candidates(grid)
    declared = list(grid) if isinstance(grid, list) else dict(grid or {})
    record: dict[str, Any] = {"grid": declared, "criterion": "in-budget validation loss", "candidates": []}
    if len(cands) == 1:  # nothing to choose: trained straight into out_dir (its score is meta["train"])
        one = {**record, "candidates": [{"settings": cands[0]}], "chosen": 0}
        meta = train_fn(
            data,
            out_dir,
            apply(cfg, cands[0]),
            run=run,
            **train_kwargs,
            extra_meta={**(extra_meta or {}), "search": one},
        )
        return {**meta, "search": {**one, "candidates": [_summary(cands[0], meta)]}}
    work = out_dir.with_name(out_dir.name + ".search")
    shutil.rmtree(work, ignore_errors=True)
    try:
        metas = []
        for i, settings in enumerate(cands):
            sub = None if run is None else _Prefixed(run, f"search.c{i}.")
            meta = train_fn(data, work / f"c{i}", apply(cfg, settings), run=sub, **train_kwargs, extra_meta=extra_meta)
            if meta["budget"]["n_val"] == 0:
                raise ValueError(
                    "finetune.search has several candidates but the budget protocol has no validation part "
                    "(budget.name fixed): use protocol holdout, or a single candidate"
                )
            metas.append(meta)
            record["candidates"].append(_summary(settings, meta))
            if run is not None:
                run.log_metrics({f"search.c{i}.best_val_loss": meta["train"]["best_val_loss"]})
        losses = [c["val_loss"] for c in record["candidates"]]
        best = min(range(len(losses)), key=lambda i: (losses[i], i))
        record["chosen"] = best
        model, _, meta = load_model(work / f"c{best}")  # any task's model directory
        meta = {**meta, "search": record}
        save_model(out_dir, model, meta)
        if run is not None:
            for rec in meta.get("history") or []:
                run.log_metrics({k: v for k, v in rec.items() if k != "step"}, step=int(rec["step"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return meta


def _summary(settings: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    tr = meta["train"]
    return {
        "settings": settings,
        "val_loss": float(tr["best_val_loss"]),
        "best_step": tr["best_step"],
        "steps": tr["steps"],
        "wall_seconds": tr.get("wall_seconds"),
    }


def mlflow_params(record: dict[str, Any]) -> dict[str, Any]:
    """The search's grid and choice as flat MLflow params."""
    chosen = record["candidates"][record["chosen"]]["settings"]
    grid = record["grid"]
    if isinstance(grid, list):  # declared candidates: each one's settings
        out: dict[str, Any] = {f"search.c{i}": json.dumps(c, sort_keys=True) for i, c in enumerate(grid)}
    else:
        out = {f"search.grid.{k}": ",".join(map(str, v)) for k, v in grid.items()}
    out["search.n_candidates"] = len(record["candidates"])
    out["search.chosen"] = record["chosen"]
    out.update({f"search.chosen.{k}": v for k, v in chosen.items()})
    return out
