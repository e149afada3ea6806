"""Classification metrics of the jet-tagging papers, with bootstrap uncertainties.

* ``accuracy``: fraction of events whose highest-score class is the true one;
* ``auc``: ROC AUC, one-vs-rest per class (``auc_<class>``) and their unweighted mean (``auc``);
* for each signal-vs-background pair (default top ``Tbqq`` vs ``QCD``): the AUC of the discriminant
  ``p_s / (p_s + p_b)`` on events of those two classes, and the background rejection ``1/εB`` at
  signal efficiency ``εS`` = 0.5 and 0.3 (``rej50_Tbqq_vs_QCD``, ``rej30_...``), the columns of the
  ParticleNet / ParT / OmniJet-α tables. When no background event passes the cut the rejection is
  only bounded: it is reported as the number of background events and flagged in ``bounds``.

Uncertainties come from resampling the test events with replacement (:func:`evaluate_scores`).
Everything is plain numpy: AUCs are Mann-Whitney statistics with tied scores sharing ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (("Tbqq", "QCD"),)
DEFAULT_EFFS: tuple[float, ...] = (0.5, 0.3)


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(xs)]])
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive``; NaN if one class is absent."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(np.asarray(scores, dtype=np.float64))
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(signal_eff, background_eff, thresholds)`` for cuts ``score >= threshold``, thresholds descending."""
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s, p = np.asarray(scores)[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(p)[last_of_tie]
    fp = np.cumsum(~p)[last_of_tie]
    n_pos, n_neg = max(int(positive.sum()), 1), max(int((~positive).sum()), 1)
    return (
        np.r_[0.0, tp / n_pos],
        np.r_[0.0, fp / n_neg],
        np.r_[np.inf, s[last_of_tie]],
    )


def rejection_at(scores: np.ndarray, positive: np.ndarray, signal_eff: float) -> tuple[float, bool]:
    """Background rejection ``1/εB`` at the loosest cut keeping at least ``signal_eff`` of the signal.

    Returns ``(rejection, is_lower_bound)``; the bound (no background passes) is the number of
    background events, the largest rejection the sample can resolve.
    """
    eff_s, eff_b, _ = roc_curve(scores, positive)
    n_neg = int((~np.asarray(positive, dtype=bool)).sum())
    if n_neg == 0 or not np.any(positive):
        return float("nan"), False
    i = int(np.searchsorted(eff_s, signal_eff - 1e-12, side="left"))
    i = min(i, len(eff_s) - 1)
    eb = float(eff_b[i])
    if eb <= 0:
        return float(n_neg), True
    return 1.0 / eb, False


def _pair_scores(probs: np.ndarray, labels: np.ndarray, s: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    keep = (labels == s) | (labels == b)
    ps, pb = probs[keep, s], probs[keep, b]
    return ps / np.maximum(ps + pb, 1e-12), labels[keep] == s


def pair_name(signal: str, background: str) -> str:
    return f"{signal}_vs_{background}"


def classification_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    effs: Sequence[float] = DEFAULT_EFFS,
) -> tuple[dict[str, float], dict[str, bool]]:
    """Point estimates ``{name: value}`` and ``{name: is_lower_bound}`` for the rejections."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[0] != len(labels) or probs.shape[1] != len(classes):
        raise ValueError(f"probs must be (n_events, {len(classes)}) to match the labels; got {probs.shape}")
    out: dict[str, float] = {"accuracy": float(np.mean(probs.argmax(1) == labels)) if len(labels) else float("nan")}
    aucs = []
    for c, name in enumerate(classes):
        auc = roc_auc(probs[:, c], labels == c)
        out[f"auc_{name}"] = auc
        if not np.isnan(auc):
            aucs.append(auc)
    out["auc"] = float(np.mean(aucs)) if aucs else float("nan")
    bounds: dict[str, bool] = {}
    for sig, bkg in pairs:
        if sig not in classes or bkg not in classes:
            continue
        d, pos = _pair_scores(probs, labels, list(classes).index(sig), list(classes).index(bkg))
        name = pair_name(sig, bkg)
        out[f"auc_{name}"] = roc_auc(d, pos)
        for eff in effs:
            key = f"rej{round(eff * 100):d}_{name}"
            out[key], bounds[key] = rejection_at(d, pos, eff)
    return out, bounds


def evaluate_scores(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    effs: Sequence[float] = DEFAULT_EFFS,
    n_bootstrap: int = 200,
    seed: int = 0,
    roc_points: int = 200,
) -> dict[str, Any]:
    """Metrics with bootstrap standard deviations and the pairs' ROC curves, ready to write as JSON.

    Returns ``{"metrics": {...}, "std": {...}, "lower_bounds": [...], "n_events": n,
    "n_per_class": {...}, "n_bootstrap": B, "roc": {pair: {"signal_eff": [...], "background_eff": [...]}}}``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    point, bounds = classification_metrics(probs, labels, classes, pairs, effs)
    rng = np.random.default_rng([seed, 0xB007])
    samples: dict[str, list[float]] = {k: [] for k in point}
    n = len(labels)
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        m, _ = classification_metrics(probs[idx], labels[idx], classes, pairs, effs)
        for k, v in m.items():
            samples[k].append(v)
    std = {k: float(np.nanstd(v)) if np.any(np.isfinite(v)) else float("nan") for k, v in samples.items()}
    roc: dict[str, dict[str, list[float]]] = {}
    for sig, bkg in pairs:
        if sig in classes and bkg in classes:
            d, pos = _pair_scores(probs, labels, list(classes).index(sig), list(classes).index(bkg))
            es, eb, _ = roc_curve(d, pos)
            keep = np.unique(np.linspace(0, len(es) - 1, min(roc_points, len(es))).round().astype(int))
            roc[pair_name(sig, bkg)] = {"signal_eff": es[keep].tolist(), "background_eff": eb[keep].tolist()}
    return {
        "metrics": point,
        "std": std if n_bootstrap > 1 else {k: float("nan") for k in point},
        "lower_bounds": sorted(k for k, v in bounds.items() if v),
        "n_events": int(n),
        "n_per_class": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
        "n_bootstrap": int(n_bootstrap),
        "roc": roc,
    }
