"""The corpus-scaling curve (issue 19, lever 1): how the label-efficiency factor grows with the size of the
unlabelled corpus a backbone was pretrained on.

The backbones of a curve differ only in ``pretrain.corpus_events`` (the train split's first N events, stored
order; the same steps, so a smaller corpus is seen more often). Each point is the factor of
:func:`physfm.evaluate.report.best_method_rows` (one computation and one interval for the whole report) of one
backbone's fine-tuned (or frozen) mode at one label count; the fit is a power law, ``factor = A · N^b``, by least
squares in log-log over the points with a measured value (bounds and 0× carry no slope), and its
extrapolation says what corpus a target factor would need, *if* the law held that far.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physfm.io import read_json

#: Factors whose extrapolated corpus size the report states (issue 19's targets: 3× on the default study,
#: 10× on config/full.yaml, against the best method without pretraining at 100 labels).
TARGETS = (3.0, 10.0)


def corpus_sizes(pretrain_dirs: dict[str, Path], names: Sequence[str]) -> dict[str, int]:
    """Unlabelled events each backbone was pretrained on (``corpus_events`` of its ``backbone.json``)."""
    out = {}
    for name in names:
        if name not in pretrain_dirs:
            raise ValueError(f"scaling backbone '{name}' has no pretraining directory (pass --pretrain {name}=DIR)")
        meta = read_json(Path(pretrain_dirs[name]) / "backbone.json")
        if "corpus_events" not in meta:
            raise ValueError(
                f"{pretrain_dirs[name]}/backbone.json records no corpus_events (pretrained before physfm recorded "
                "its corpus): pretrain it again"
            )
        out[name] = int(meta["corpus_events"])
    if len(set(out.values())) < len(out):
        raise ValueError(f"the scaling backbones need distinct corpus sizes, got {out}")
    return out


def scaling_rows(best_rows: Sequence[dict[str, Any]], corpus: dict[str, int], metric: str) -> list[dict[str, Any]]:
    """The factor rows (headline ``metric``, against ``best`` and ``scratch``) of the backbones in ``corpus``,
    each with its ``backbone`` split off the mode and its ``corpus_events``, sorted by corpus size; only the
    (against, mode, labels) groups measured at two corpus sizes or more (the curve, not the main grid's rest)."""
    out = []
    for e in best_rows:
        mode, _, backbone = e["mode"].partition(" ")
        if e["metric_name"] != metric or e["against"] not in ("best", "scratch") or backbone not in corpus:
            continue
        out.append({**e, "mode": mode, "backbone": backbone, "corpus_events": corpus[backbone]})
    sizes: dict[tuple[str, str, float], set[int]] = {}
    for r in out:
        sizes.setdefault((r["against"], r["mode"], r["n"]), set()).add(r["corpus_events"])
    out = [r for r in out if len(sizes[(r["against"], r["mode"], r["n"])]) > 1]
    return sorted(out, key=lambda r: (r["against"], r["mode"], r["n"], r["corpus_events"]))


def fit_power_law(corpus: Sequence[float], factor: Sequence[float]) -> dict[str, Any]:
    """``factor = A · corpus^b`` by least squares in log-log: ``A``, ``b``, the standard error of ``b`` (NaN
    with two points) and the corpus each factor of :data:`TARGETS` would need (NaN when ``b`` <= 0)."""
    x, y = np.log(np.asarray(corpus, float)), np.log(np.asarray(factor, float))
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("a power-law fit needs at least two distinct corpus sizes")
    b, a = np.polyfit(x, y, 1)
    se = np.nan
    if len(x) > 2:
        resid = y - (a + b * x)
        se = float(np.sqrt(resid @ resid / (len(x) - 2) / ((x - x.mean()) @ (x - x.mean()))))
    need = {f"{t:g}": float(np.exp((np.log(t) - a) / b)) if b > 0 else float("nan") for t in TARGETS}
    return {"A": float(np.exp(a)), "b": float(b), "b_se": se, "n_points": len(x), "corpus_for": need}


def scaling_fits(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One power-law fit per (against, mode, labels) over its measured values (``kind == "value"``, factor > 0);
    a group with fewer than two such points gets ``b`` NaN and says why."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["against"], r["mode"], r["n"]), []).append(r)
    out = []
    for (against, mode, n), rs in sorted(groups.items()):
        pts = [r for r in rs if r["kind"] == "value" and r["factor"] > 0]
        base = {"against": against, "mode": mode, "n": n, "points": len(rs), "best_reference": rs[0]["best_reference"]}
        if len({r["corpus_events"] for r in pts}) < 2:
            out.append(
                {
                    **base,
                    "A": np.nan,
                    "b": np.nan,
                    "b_se": np.nan,
                    "n_points": len(pts),
                    "corpus_for": {},
                    "why": "fewer than two measured factors (0× or bounds carry no slope)",
                }
            )
            continue
        fit = fit_power_law([r["corpus_events"] for r in pts], [r["factor"] for r in pts])
        out.append({**base, **fit})
    return out


def plot_scaling(rows: Sequence[dict[str, Any]], fits: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Factor against corpus size, one panel per ``against``, one line per (mode, labels), with the fits."""
    import matplotlib.pyplot as plt

    if not rows:
        return None
    panels = [a for a in ("best", "scratch") if any(r["against"] == a for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, against in zip(axes[0], panels, strict=True):
        keys = sorted({(r["mode"], r["n"]) for r in rows if r["against"] == against})
        for i, (mode, n) in enumerate(keys):
            rs = [r for r in rows if (r["against"], r["mode"], r["n"]) == (against, mode, n)]
            c = np.array([r["corpus_events"] for r in rs], float)
            f = np.array([max(r["factor"], 1e-2) for r in rs])  # 0x drawn at the floor of the axis
            lo = np.array([r["low"] if np.isfinite(r["low"]) else r["factor"] for r in rs])
            hi = np.array([r["high"] if np.isfinite(r["high"]) else r["factor"] for r in rs])
            color = f"C{i}"
            ax.errorbar(
                c,
                f,
                yerr=[np.maximum(f - lo, 0), np.maximum(hi - f, 0)],
                color=color,
                marker="o",
                capsize=3,
                label=f"{mode}, {int(n)} labels",
            )
            for r, ci, fi in zip(rs, c, f, strict=True):
                if r["kind"] in ("lower", "upper", "zero"):
                    ax.annotate(
                        {"lower": "≥", "upper": "≤", "zero": "0×"}[r["kind"]],
                        (ci, fi),
                        fontsize=8,
                        color=color,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
            fit = next((g for g in fits if (g["against"], g["mode"], g["n"]) == (against, mode, n)), None)
            if fit is not None and np.isfinite(fit["b"]):
                grid = np.geomspace(c.min(), c.max() * 10, 50)
                ax.plot(grid, fit["A"] * grid ** fit["b"], ls="--", color=color, lw=0.8)
        ax.axhline(1.0, color="k", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("unlabelled events in the pretraining corpus")
        ax.set_ylabel("label-efficiency factor")
        ax.set_title(
            "against the best method without pretraining" if against == "best" else "against scratch", fontsize=9
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    from physfm.evaluate.report import save_figure  # here: report imports this module

    return save_figure(fig, path)
