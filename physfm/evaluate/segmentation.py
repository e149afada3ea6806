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
    cm = confusion_matrix(true, pred, len(classes))
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
