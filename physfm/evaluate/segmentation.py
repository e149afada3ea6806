"""Per-point segmentation metrics: confusion matrix, per-class and macro F1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(C, C)`` counts, rows the true class, columns the predicted one."""
    true, pred = np.asarray(true, dtype=np.int64).ravel(), np.asarray(pred, dtype=np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"true and pred differ in length: {true.shape} vs {pred.shape}")
    values = np.concatenate([true, pred])
    outside = values[(values < 0) | (values >= n_classes)]
    if len(outside):
        raise ValueError(f"class indices must be in 0..{n_classes - 1}; found {int(outside[0])}")
    return np.bincount(true * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def f1_scores(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 ``2 TP / (2 TP + FP + FN)``; NaN for a class neither present nor predicted."""
    tp = np.diag(cm).astype(np.float64)
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def segmentation_metrics(true: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Macro F1 (over classes present or predicted), F1 per class, accuracy and the confusion matrix."""
    return metrics_from_confusion(confusion_matrix(true, pred, len(classes)), classes)


def metrics_from_confusion(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """:func:`segmentation_metrics` of a summed confusion matrix (e.g. of resampled events)."""
    cm = np.asarray(cm)
    f1 = f1_scores(cm)
    n = int(cm.sum())
    return {
        "macro_f1": float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan"),
        "f1": {c: float(v) for c, v in zip(classes, f1, strict=True)},
        "accuracy": float(np.trace(cm) / n) if n else float("nan"),
        "n_points": n,
        "confusion": cm.tolist(),
        "classes": list(classes),
    }


def flat_metrics(m: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics a study reports: ``macro_f1``, ``seg_error`` (1 - macro F1), ``accuracy``
    and ``f1_<class>`` per class (Michel and delta apart)."""
    out = {"macro_f1": m["macro_f1"], "seg_error": 1.0 - m["macro_f1"], "accuracy": m["accuracy"]}
    out.update({f"f1_{c}": v for c, v in m["f1"].items()})
    return out


def bootstrap_metrics(
    per_event: np.ndarray, classes: Sequence[str], n_bootstrap: int, seed: int = 0
) -> tuple[dict[str, Any], dict[str, float]]:
    """Metrics of the summed per-event confusion matrices ``(E, C, C)`` and their standard deviation
    over ``n_bootstrap`` resamples of the events (the unit the label budget counts)."""
    per_event = np.asarray(per_event, dtype=np.int64)
    full = metrics_from_confusion(per_event.sum(0), classes)
    rng = np.random.default_rng([seed, 0xB007])
    draws = []
    for _ in range(n_bootstrap if len(per_event) > 1 else 0):
        idx = rng.integers(0, len(per_event), len(per_event))
        draws.append(flat_metrics(metrics_from_confusion(per_event[idx].sum(0), classes)))
    std = {k: float(np.nanstd([d[k] for d in draws])) if draws else 0.0 for k in flat_metrics(full)}
    return full, std
