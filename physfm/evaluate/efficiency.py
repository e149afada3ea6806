"""Label-efficiency factor: how many more labels the from-scratch model needs.

For a fine-tuned model trained on ``n`` labels reaching metric ``m``, the factor is
``n_scratch(m) / n`` where ``n_scratch(m)`` is read off the scratch curve (mean over seeds of the
metric vs number of labels) by linear interpolation in ``log n``. The scratch curve is made
monotone first (running maximum: more labels never hurt a model that could ignore them). When
``m`` lies above the whole scratch curve the factor is only a lower bound ``n_max / n``; below it,
an upper bound ``n_min / n``.

Uncertainty: :func:`efficiency_table` resamples seeds with replacement in every cell and draws each
run's metric from its test-set bootstrap spread, recomputes the factors, and quotes the 16th-84th
percentiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def scratch_labels_needed(n: Sequence[float], metric: Sequence[float], target: float) -> tuple[float, str]:
    """Labels the scratch curve needs to reach ``target``: ``(n_needed, kind)``.

    ``kind`` is ``"value"`` (interpolated), ``"lower"`` (target above the curve: at least ``max n``)
    or ``"upper"`` (target at or below the curve's first point: at most ``min n``).
    """
    n_arr = np.asarray(n, dtype=np.float64)
    order = np.argsort(n_arr)
    x = np.log(n_arr[order])
    y = np.maximum.accumulate(np.asarray(metric, dtype=np.float64)[order])
    if len(x) == 0 or not np.isfinite(target):
        return float("nan"), "value"
    if target > y[-1]:
        return float(np.exp(x[-1])), "lower"
    if target <= y[0]:
        return float(np.exp(x[0])), "upper" if target < y[0] else "value"
    i = int(np.searchsorted(y, target, side="left"))  # first point with y >= target; i >= 1
    t = (target - y[i - 1]) / (y[i] - y[i - 1])
    return float(np.exp(x[i - 1] + t * (x[i] - x[i - 1]))), "value"


def efficiency_factor(
    scratch_n: Sequence[float], scratch_metric: Sequence[float], n: float, metric: float
) -> tuple[float, str]:
    """``(factor, kind)`` for one fine-tuned point; kind as in :func:`scratch_labels_needed`."""
    needed, kind = scratch_labels_needed(scratch_n, scratch_metric, metric)
    return needed / n, kind


def _cell_means(runs: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r["mode"], float(r["n"])), []).append(r)
    return cells


def efficiency_table(
    runs: list[dict[str, Any]],
    *,
    reference: str = "scratch",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Label-efficiency factors of every non-reference mode at every label count.

    ``runs``: one dict per trained model, ``{"mode", "n", "value", "std"}`` (``std`` = test-set
    bootstrap spread of ``value``, may be 0). Returns rows ``{"mode", "n", "metric", "factor",
    "kind", "low", "high", "frac_bound"}``: ``factor``/``kind`` from the seed means, ``low``/``high``
    the 16th/84th percentiles of the resampled factors, ``frac_bound`` the fraction of resamples
    that fell off either end of the scratch curve.
    """
    cells = _cell_means(runs)
    ref_ns = sorted(n for m, n in cells if m == reference)
    if len(ref_ns) < 1:
        return []
    modes = sorted({m for m, _ in cells if m != reference})

    def means(draw: np.random.Generator | None) -> dict[tuple[str, float], float]:
        out = {}
        for key, rs in cells.items():
            vals = np.array([r["value"] for r in rs], dtype=np.float64)
            if draw is not None:
                stds = np.nan_to_num(np.array([r.get("std", 0.0) or 0.0 for r in rs], dtype=np.float64))
                pick = draw.integers(0, len(rs), len(rs))
                vals = vals[pick] + draw.normal(size=len(rs)) * stds[pick]
            out[key] = float(np.mean(vals))
        return out

    point = means(None)
    rng = np.random.default_rng([seed, 0xEFF])
    boots = [means(rng) for _ in range(n_bootstrap)]
    rows = []
    for mode in modes:
        for n in sorted(n for m, n in cells if m == mode):
            ref_metric = [point[(reference, x)] for x in ref_ns]
            factor, kind = efficiency_factor(ref_ns, ref_metric, n, point[(mode, n)])
            samples, bounded = [], 0
            for b in boots:
                f, k = efficiency_factor(ref_ns, [b[(reference, x)] for x in ref_ns], n, b[(mode, n)])
                samples.append(f)
                bounded += k != "value"
            lo, hi = np.percentile(samples, [16, 84]) if samples else (np.nan, np.nan)
            rows.append(
                {
                    "mode": mode,
                    "n": n,
                    "metric": point[(mode, n)],
                    "reference_metric": point.get((reference, n)),
                    "factor": factor,
                    "kind": kind,
                    "low": float(lo),
                    "high": float(hi),
                    "frac_bound": bounded / max(len(boots), 1),
                }
            )
    return rows


def format_factor(row: dict[str, Any]) -> str:
    """``"3.2× (2.1–4.8)"``, ``"≥ 10×"`` or ``"≤ 0.5×"`` for tables and the report."""
    sign = {"lower": "≥ ", "upper": "≤ "}.get(row["kind"], "")
    text = f"{sign}{row['factor']:.3g}×"
    if np.isfinite(row.get("low", np.nan)) and row["kind"] == "value":
        text += f" ({row['low']:.3g}–{row['high']:.3g})"
    return text
