"""A gradient-boosted tree on jet observables: scikit-learn's HistGradientBoostingClassifier.

Inputs: the observables of :mod:`physfm.baselines.observables` (``NAMES``). Labels: the n of the
cell's subset only. Early stopping runs inside that budget: the subset's validation part (the study's budget protocol,
the same parts every fine-tuning run uses) is passed to ``fit`` as ``X_val, y_val``;
boosting stops after ``n_iter_no_change`` iterations without a lower validation log-loss, and the
model is cut back to the iteration count with the lowest one (refitted on the same fit part with that
``max_iter``: the same trees, as nothing is subsampled). With a non-empty ``grid`` every combination is
fitted on the same carve and the one with the lowest validation log-loss is kept (its choice is also
in-budget). No refit on all n labels follows. The hyperparameters are fixed and declared in ``BDTConfig``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class BDTConfig:
    """Settings of the BDT baseline (schema: ``baselines.bdt``)."""

    learning_rate: float = 0.1
    max_iter: int = 500
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 20
    l2_regularization: float = 0.0
    n_iter_no_change: int = 20
    grid: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = {"learning_rate", "max_iter", "max_leaf_nodes", "min_samples_leaf", "l2_regularization"}
        bad = sorted(set(self.grid) - known)
        if bad:
            raise ValueError(f"baselines.bdt.grid: cannot search over {bad}; choose among {sorted(known)}")
        if any(not isinstance(v, list) or not v for v in self.grid.values()):
            raise ValueError("baselines.bdt.grid: every entry must be a non-empty list of values")
        if self.max_iter < 1 or self.n_iter_no_change < 1:
            raise ValueError("baselines.bdt max_iter and n_iter_no_change must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def candidates(self) -> list[dict[str, Any]]:
        """Every hyperparameter combination to try (one when ``grid`` is empty)."""
        base = {k: getattr(self, k) for k in ("learning_rate", "max_iter", "max_leaf_nodes", "min_samples_leaf")}
        base["l2_regularization"] = self.l2_regularization
        keys = sorted(self.grid)
        return [
            {**base, **dict(zip(keys, combo, strict=True))}
            for combo in itertools.product(*(self.grid[k] for k in keys))
        ]


def _log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(probs[np.arange(len(y)), y], 1e-15, 1.0)
    return float(-np.mean(np.log(p)))


def full_probs(model: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n, n_classes)`` probabilities; classes the model never saw get probability 0."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_.astype(np.int64)] = model.predict_proba(x)
    return out


def fit_bdt(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cfg: BDTConfig,
    seed: int,
    parts: tuple[np.ndarray, np.ndarray],
    threads: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit on the n labelled events ``(x, y)``; return the model and its record.

    ``parts``: positions into ``x`` of the budget's train and validation parts (the label subsets'
    protocol, :func:`physfm.finetune.subsets.load_split`); early stopping and the grid choice see
    the validation part only.

    The record holds the fit/validation positions (into ``x``), the tried candidates and their
    validation log-loss, the chosen one, the boosting iterations and the wall time.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    y = np.asarray(y, dtype=np.int64)
    fit_pos, val_pos = parts
    tried, best, best_model = [], None, None
    with threadpool_limits(threads):
        for params in cfg.candidates():
            model = HistGradientBoostingClassifier(
                **params,
                early_stopping=True,
                n_iter_no_change=cfg.n_iter_no_change,
                scoring="loss",
                random_state=seed,
            )
            model.fit(x[fit_pos], y[fit_pos], X_val=x[val_pos], y_val=y[val_pos])
            grown = int(model.n_iter_)
            # validation_score_[k]: minus the validation loss after k trees; keep the best count, as the
            # PFN keeps its best step: refit without early stopping (the same trees: no subsampling)
            best_iter = max(1, int(np.argmax(model.validation_score_)))
            if best_iter < grown:
                model = HistGradientBoostingClassifier(
                    **{**params, "max_iter": best_iter}, early_stopping=False, random_state=seed
                )
                model.fit(x[fit_pos], y[fit_pos])
            val_loss = _log_loss(full_probs(model, x[val_pos], n_classes), y[val_pos])
            tried.append({"params": params, "val_loss": val_loss, "n_iter": best_iter, "n_iter_grown": grown})
            if best is None or val_loss < best["val_loss"]:
                best, best_model = tried[-1], model
    assert best is not None and best_model is not None
    val_acc = float(np.mean(full_probs(best_model, x[val_pos], n_classes).argmax(1) == y[val_pos]))
    record = {
        "fit_positions": fit_pos.tolist(),
        "val_positions": val_pos.tolist(),
        "n_fit": int(len(fit_pos)),
        "n_val": int(len(val_pos)),
        "candidates": tried,
        "chosen": best["params"],
        "best_val_loss": best["val_loss"],
        "best_val_accuracy": val_acc,
        "n_iter": best["n_iter"],
        "best_step": best["n_iter"],
        "wall_seconds": time.perf_counter() - t0,
    }
    return best_model, record
