"""Label-efficiency factor: how many more labels the from-scratch model needs.

For a fine-tuned model trained on ``n`` labels reaching metric ``m``, the factor is
``n_scratch(m) / n`` where ``n_scratch(m)`` is read off the scratch curve (mean over seeds of the
metric vs number of labels) by linear interpolation in ``log n``. The scratch curve is made
monotone first (running maximum: more labels never hurt a model that could ignore them). When
``m`` lies above the whole scratch curve the factor is only a lower bound ``n_max / n``; below it,
an upper bound ``n_min / n``.

:func:`best_method_factors` (issue 18) rates a method against the *best* of several reference
methods trained without pretraining (scratch, BDT, point-cloud net, a zero-label cut): the labels
the best of them needs, read off the upper envelope of their curves (piecewise-linear in log n, or
a fitted saturating learning curve ``a - b n^-c``), with a t-interval (jackknife over seeds) or a
joint bootstrap over seeds; metrics where lower is better are negated first.

The report's factor against same-architecture scratch is :func:`best_method_factors` with scratch as
the only reference: one computation and one interval for every factor the report quotes.
"""

from __future__ import annotations

import functools
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


def format_factor(row: dict[str, Any]) -> str:
    """``"3.2× (2.1–4.8)"``, ``"≥ 10×"`` or ``"≤ 0.5×"`` for tables and the report."""
    if row["kind"] == "zero":
        return "0× (matched with no labels)"
    sign = {"lower": "≥ ", "upper": "≤ "}.get(row["kind"], "")
    text = f"{sign}{row['factor']:.3g}×"
    if np.isfinite(row.get("low", np.nan)) and row["kind"] == "value":
        text += f" ({row['low']:.3g}–{row['high']:.3g})"
    return text


# --------------------------------------------------------------------------- against the best method (issue 18)
#: Reference-curve models of :func:`best_method_factors`.
CURVE_MODELS = ("loglinear", "saturating")
#: Interval methods of :func:`best_method_factors`.
INTERVALS = ("t", "bootstrap")
#: Fewer seeds than this and an interval is flagged ``few_seeds`` (issue 18: at least 5).
MIN_SEEDS = 5


def runs_from_records(records: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """``{"mode", "n", "seed", "value"}`` of evaluation records (``physfm evaluate``, ``physfm linefit``, ...)
    for :func:`best_method_factors`; records without a finite ``metric`` (e.g. an infinite rejection,
    which is only a lower bound) are left out, so a cell's ``n_seeds`` shows how many remain."""
    out = []
    for r in records:
        value = r["metrics"].get(metric)
        if value is not None and np.isfinite(value):
            out.append({"mode": r["mode"], "n": float(r["n_labels"]), "seed": r.get("seed"), "value": float(value)})
    return out


def saturating_curve(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """The learning-curve model ``a - b * n**(-c)`` (``a``: the metric with unlimited labels)."""
    return a - b * np.power(np.asarray(n, dtype=np.float64), -c)


def fit_saturating(n: Sequence[float], metric: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``(a, b, c)`` of :func:`saturating_curve` with ``b >= 0`` and ``0 < c <= 3`` (monotone).

    Needs at least three label counts. For a fixed ``c`` the model is linear in ``(a, b)``, so the fit
    profiles ``c``: exact linear least squares per ``c`` (``b`` clipped at 0), the best of a log grid
    of ``c`` refined by scipy's bounded scalar minimiser.
    """
    from scipy.optimize import minimize_scalar

    x, y = np.asarray(n, dtype=np.float64), np.asarray(metric, dtype=np.float64)
    if len(np.unique(x)) < 3:
        raise ValueError(
            f"a saturating learning curve needs at least 3 label counts, got {len(np.unique(x))}; "
            "add label counts or use the loglinear model"
        )

    def linear(c: float) -> tuple[float, float, float]:
        basis = -np.power(x, -c)
        design = np.column_stack([np.ones_like(x), basis])
        (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        if b < 0:  # a falling curve: the best monotone fit is flat
            a, b = float(y.mean()), 0.0
        return float(a), float(b), float(np.sum((y - a - b * basis) ** 2))

    grid = np.geomspace(1e-3, 3.0, 40)
    sse = [linear(c)[2] for c in grid]
    k = int(np.argmin(sse))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    c = float(minimize_scalar(lambda c: linear(c)[2], bounds=(lo, hi), method="bounded").x) if hi > lo else lo
    if linear(c)[2] > sse[k]:
        c = float(grid[k])
    a, b, _ = linear(c)
    return a, b, c


@functools.lru_cache(maxsize=4096)
def _fit_saturating_cached(n: tuple[float, ...], y: tuple[float, ...]) -> tuple[float, float, float]:
    """One fit per curve (a resampled curve serves every target of its replicate)."""
    return fit_saturating(n, y)


def _labels_needed_one(n: np.ndarray, y: np.ndarray, target: float, model: str) -> tuple[float, float]:
    """``[lo, hi]`` bracketing the labels one reference method needs to reach ``target`` (higher = better).

    Inside the tried range: ``lo == hi`` (interpolated). Above the curve: ``[n_max, inf]``; at or below
    its first point: ``[0, n_min]`` (``[n_min, n_min]`` when equal). A zero-label method (``n == 0``
    only) is a constant: ``[0, 0]`` when it reaches ``target``, else ``[inf, inf]`` (more labels do not help it).
    """
    if len(n) == 1 and n[0] == 0:
        return (0.0, 0.0) if y[0] >= target else (np.inf, np.inf)
    keep = n > 0
    n, y = n[keep], y[keep]
    if model == "saturating":
        a, b, c = _fit_saturating_cached(tuple(n.tolist()), tuple(y.tolist()))
        lo_y, hi_y = saturating_curve(n.min(), a, b, c), saturating_curve(n.max(), a, b, c)
        if target > hi_y:
            return float(n.max()), np.inf
        if target < lo_y:
            return 0.0, float(n.min())
        if b == 0:
            return float(n.min()), float(n.min())
        needed = float((b / (a - target)) ** (1.0 / c)) if a > target else float(n.max())
        needed = min(max(needed, float(n.min())), float(n.max()))
        return needed, needed
    needed, kind = scratch_labels_needed(n, y, target)
    if kind == "lower":
        return needed, np.inf
    if kind == "upper":
        return 0.0, needed
    return needed, needed


def labels_needed_best(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]], target: float, model: str = "loglinear"
) -> tuple[float, str, str]:
    """Labels the best of several reference methods needs to reach ``target``: ``(n, kind, method)``.

    ``curves``: ``{method: (label counts, mean metric)}``, higher is better. The best method at a
    target is the one that needs the fewest labels, i.e. the target is read off the upper envelope
    of the (monotone) reference curves. ``kind``: ``"value"``; ``"lower"`` (no method reaches the
    target in its tried range: at least ``n``); ``"upper"`` (some method reaches it at or before its
    first label count, or a method with a shorter curve might still win: at most ``n``); ``"zero"``
    (a zero-label method, such as a cut, already reaches it: ``n = 0``).
    """
    if model not in CURVE_MODELS:
        raise ValueError(f"reference-curve model must be one of {CURVE_MODELS}, got '{model}'")
    brackets = {}
    for method, (n, y) in curves.items():
        n_arr, y_arr = np.asarray(n, dtype=np.float64), np.asarray(y, dtype=np.float64)
        ok = np.isfinite(y_arr)
        if ok.any():
            brackets[method] = _labels_needed_one(n_arr[ok], y_arr[ok], target, model)
    if not brackets or not np.isfinite(target):
        return float("nan"), "value", ""
    lo = min(b[0] for b in brackets.values())
    hi_method = min(brackets, key=lambda m: (brackets[m][1], brackets[m][0]))
    hi = brackets[hi_method][1]
    if hi == 0:
        return 0.0, "zero", hi_method
    if not np.isfinite(hi):
        lo_method = min(brackets, key=lambda m: brackets[m][0])
        return (float("nan"), "value", "") if not np.isfinite(lo) else (lo, "lower", lo_method)
    return (hi, "value", hi_method) if lo == hi else (hi, "upper", hi_method)


def _cells(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, float], dict[Any, float]]:
    cells: dict[tuple[str, float], dict[Any, float]] = {}
    for r in runs:
        value = float(r["value"])
        if np.isfinite(value):
            cells.setdefault((str(r["mode"]), float(r["n"])), {})[r.get("seed")] = value
    return cells


def _means(cells: dict[tuple[str, float], dict[Any, float]], weights: dict[Any, float] | None) -> dict:
    """Seed means of every cell; ``weights`` (seed -> multiplicity) resamples, cells of one run stay fixed."""
    out = {}
    for key, by_seed in cells.items():
        if weights is None or len(by_seed) < 2:
            out[key] = float(np.mean(list(by_seed.values())))
            continue
        w = np.array([weights.get(s, 0.0) for s in by_seed])
        v = np.array(list(by_seed.values()))
        out[key] = float(np.sum(w * v) / w.sum()) if w.sum() > 0 else float(np.mean(v))
    return out


def best_method_factors(
    runs: Sequence[dict[str, Any]],
    references: Sequence[str],
    *,
    methods: Sequence[str] | None = None,
    higher_is_better: bool = True,
    model: str = "loglinear",
    interval: str = "t",
    level: float = 0.68,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Label-efficiency factor of each method against the best reference method at every label count.

    ``runs``: one dict per trained model (or deterministic baseline): ``{"mode", "n", "seed", "value"}``
    (``value``: its test metric; ``n``: its label budget, 0 for a zero-label cut). ``references``: the
    methods trained without pretraining (``scratch``, ``bdt``, ``pfn``, ``cut``, ...); ``methods``: those
    to rate (default: every other mode). For a method reaching mean metric ``m`` with ``n`` labels, the
    factor is ``n_best(m) / n``, ``n_best`` from :func:`labels_needed_best` on the seed-mean reference
    curves (``model``: ``loglinear``, piecewise-linear in log n on the running best of each curve, or
    ``saturating``, a fit of ``a - b n^-c`` per reference method). ``higher_is_better=False`` (angular
    error) compares negated values.

    Interval at ``level``, over seeds (a seed's runs share its label subset, so every cell is resampled
    jointly by seed): ``t`` (default) is a jackknife over seeds of log ``n_best`` with Student's t at
    ``k - 1`` degrees of freedom (``k`` seeds); ``bootstrap`` draws ``k`` seeds with replacement
    ``n_bootstrap`` times, recomputes curves and target together, and takes percentiles. Cells with a
    single run (a deterministic cut) are held fixed. Rows: ``mode, n, metric, n_seeds, reference_metric``
    (best reference mean at the same ``n``), ``n_needed``, ``best_reference``, ``factor``, ``kind``,
    ``low``, ``high``, ``frac_bound`` (replicates that fell off the reference range), ``few_seeds``
    (fewer than :data:`MIN_SEEDS`), ``references``, ``model``, ``interval``, ``level``.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got '{interval}'")
    if not 0 < level < 1:
        raise ValueError(f"interval level must lie in (0, 1), got {level}")
    sign = 1.0 if higher_is_better else -1.0
    cells = _cells([{**r, "value": sign * float(r["value"])} for r in runs])
    refs = [m for m in references if any(k[0] == m for k in cells)]
    if not refs:
        return []
    methods = list(methods) if methods is not None else sorted({k[0] for k in cells} - set(references))
    seeds = sorted({s for by_seed in cells.values() for s in by_seed if s is not None}, key=str)

    def evaluate(weights: dict[Any, float] | None) -> dict[tuple[str, float], tuple[float, str, str]]:
        means = _means(cells, weights)
        curves = {}
        for m in refs:
            ns = sorted(n for (mm, n) in means if mm == m)
            curves[m] = (ns, [means[(m, n)] for n in ns])
        return {key: labels_needed_best(curves, means[key], model) for key in cells if key[0] in methods and key[1] > 0}

    point = evaluate(None)
    point_means = _means(cells, None)
    if interval == "t":
        replicates = [evaluate({s: float(s != drop) for s in seeds}) for drop in seeds] if len(seeds) >= 2 else []
    else:
        rng = np.random.default_rng([seed, 0xBE57])
        replicates = []
        for _ in range(n_bootstrap if len(seeds) >= 2 else 0):
            w = np.bincount(rng.integers(0, len(seeds), len(seeds)), minlength=len(seeds))
            replicates.append(evaluate(dict(zip(seeds, w.astype(float), strict=True))))
    rows = []
    for key in sorted(point, key=lambda k: (k[0], k[1])):
        mode, n = key
        needed, kind, best = point[key]
        same_n = [point_means[(m, n)] for m in refs if (m, n) in point_means]
        low = high = float("nan")
        reps = [r[key] for r in replicates]
        bounded = sum(k != "value" for _, k, _ in reps)
        vals = np.array([v for v, _, _ in reps], dtype=np.float64)
        if kind == "value" and len(reps) >= 2 and np.all(np.isfinite(vals)):
            if interval == "t" and np.all(vals > 0):
                from scipy.stats import t as student_t

                k = len(reps)
                logs = np.log(vals)
                se = np.sqrt((k - 1) / k * np.sum((logs - logs.mean()) ** 2))
                half = float(student_t.ppf(0.5 + level / 2, k - 1)) * se
                low, high = needed * np.exp(-half), needed * np.exp(half)
            elif interval == "bootstrap":
                low, high = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
            low, high = float(low) / n, float(high) / n
        rows.append(
            {
                "mode": mode,
                "n": n,
                "metric": sign * point_means[key],
                "n_seeds": len(cells[key]),
                "reference_metric": sign * max(same_n) if same_n else None,
                "n_needed": needed,
                "best_reference": best,
                "factor": needed / n,
                "kind": kind,
                "low": low,
                "high": high,
                "frac_bound": bounded / len(reps) if reps else 0.0,
                "few_seeds": len(cells[key]) < MIN_SEEDS,
                "references": list(refs),
                "model": model,
                "interval": interval,
                "level": level,
            }
        )
    return rows
