"""The study report: one self-contained HTML page (figures embedded as PNG) plus the figures as files.

Sections: study and provenance, data summary, tokenizer quality, pretraining curves, the
data-efficiency plot (metric vs number of labelled events, one line per mode, mean ± std over
seeds), ROC curves (background rejection vs signal efficiency), fine-tuning curves, the results
table, the label-efficiency factor, and the k-NN accuracy of the embeddings. Sections whose inputs
are missing say so instead of disappearing. ``report.json`` holds every number shown, and
``manifest.json`` (:mod:`physfm.artifacts`, kind ``report``) the sha256 of the page, the numbers and
the figures, so the report's directory (the page's parent) is its own.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from physfm import __version__  # noqa: E402
from physfm.artifacts import VERSION_KEYS, write_artifact  # noqa: E402
from physfm.evaluate.efficiency import best_method_factors, format_factor  # noqa: E402
from physfm.evaluate.scaling import TARGETS, corpus_sizes, plot_scaling, scaling_fits, scaling_rows  # noqa: E402
from physfm.finetune.task import report_metrics  # noqa: E402
from physfm.io import atomic_path, read_json, write_json  # noqa: E402

MODE_STYLE = {
    "scratch": ("tab:gray", "o"),
    "finetune": ("tab:blue", "s"),
    "frozen": ("tab:orange", "^"),
    "bdt": ("tab:green", "D"),
    "pfn": ("tab:purple", "v"),
    "cut": ("black", ""),
    "linefit": ("black", ""),
    "floor": ("black", ""),
    "linefit_refined": ("tab:green", "D"),
    "scratch_global": ("tab:brown", "x"),  # ablation: scratch + the global targets as an auxiliary loss
    "linear": ("tab:red", "<"),  # ablation: frozen backbone, linear probe
}
#: Modes that start from a pretrained backbone: the ones whose label-efficiency factor is measured.
PRETRAINED_MODES = ("finetune", "frozen", "linear")
#: Everything trained (or not trained) without pretraining: the references of the factor.
REFERENCE_MODES = ("scratch", "bdt", "pfn", "cut", "linefit", "linefit_refined", "floor")
#: Axis labels of every task's metrics, and the metrics where lower is better (the efficiency factor then
#: compares negated values): each task's report data (:func:`physfm.finetune.task.report_metrics`).
METRIC_LABELS, LOWER_IS_BETTER = report_metrics()
#: Per-point segmentation metrics shown when present (per-class F1: f1_<class>).
SEGMENTATION_METRICS = ("macro_f1", "seg_error")
SECTIONS = (
    "study",
    "data",
    "tokenizer",
    "pretraining",
    "efficiency",
    "roc",
    "finetune-curves",
    "results",
    "label-efficiency",
    "best-method",
    "ablations",
    "scaling",
    "downstream",
    "embeddings",
    "methods",
)


@dataclass
class ReportConfig:
    """Settings of the ``report`` stage (config keys ``evaluate.metric`` and ``evaluate.report``)."""

    metric: str = "auc"  # headline metric of the report and the label-efficiency factor
    title: str = "physfm label-efficiency study"
    # the label-efficiency factor (physfm.evaluate.efficiency.best_method_factors): its interval over seeds,
    # "t" (jackknife-t) or "bootstrap" (bootstrap resamples), and the reference-curve model
    interval: str = "t"
    bootstrap: int = 1000  # resamples when interval is "bootstrap"
    curve: str = "loglinear"  # loglinear (piecewise in log n) or saturating (a - b n^-c per reference)
    # pretraining runs pooled into one backbone name, e.g. {mpm: [mpm, mpm_s1]}: each label seed's value is
    # the mean over the pretraining runs (config/full.yaml repeats pretraining with two seeds)
    pool_backbones: dict[str, list[str]] = field(default_factory=dict)


def metric_label(name: str) -> str:
    if name in METRIC_LABELS:
        return METRIC_LABELS[name]
    prefixes = (("auc_", "AUC "), ("rej50_", "1/εB at εS=0.5, "), ("rej30_", "1/εB at εS=0.3, "), ("f1_", "F1 "))
    for prefix, text in prefixes:
        if name.startswith(prefix):
            return text + name[len(prefix) :].replace("_vs_", " vs ")
    return name


def _verdict(d: float, metric: str) -> str:
    """How fine-tuned compares with scratch for a difference ``d`` = fine-tuned - scratch."""
    if metric in LOWER_IS_BETTER:
        return "better than" if d < 0 else "worse than"
    return "above" if d > 0 else "below"


# --------------------------------------------------------------------------- aggregation
def _group(results: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r.get("backbone") or "-", r["mode"], int(r["n_labels"])), []).append(r)
    return dict(
        sorted(
            cells.items(),
            key=lambda kv: (kv[0][0], list(MODE_STYLE).index(kv[0][1]) if kv[0][1] in MODE_STYLE else 9, kv[0][2]),
        )
    )


def summarize_cells(results: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (backbone, mode, labels): mean and std over seeds of each metric."""
    rows = []
    for (backbone, mode, n), runs in _group(results).items():
        row: dict[str, Any] = {
            "backbone": backbone,
            "mode": mode,
            "n_labels": n,
            "seeds": sorted(r["seed"] for r in runs),
        }
        for m in metrics:
            vals = np.array([r["metrics"].get(m, np.nan) for r in runs], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            row[m] = float(vals.mean()) if len(vals) else float("nan")
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def headline_metrics(results: Sequence[dict[str, Any]], primary: str) -> list[str]:
    """The metrics shown: primary first, then accuracy / AUC / pair AUC and rejections present in the results."""
    present: list[str] = []
    for r in results:
        for k in r["metrics"]:
            if k not in present and (
                (k in ("accuracy", "auc") or k.startswith(("auc_", "rej")))
                and ("_vs_" in k or k in ("accuracy", "auc"))
                or k in LOWER_IS_BETTER
                or k in SEGMENTATION_METRICS
                or k.startswith("f1_")
            ):
                present.append(k)
    order = list(dict.fromkeys([primary, "auc", "accuracy", *LOWER_IS_BETTER, *SEGMENTATION_METRICS]))
    order += [m for m in present if m.startswith("f1_") and m not in order]
    order += [m for m in present if m.startswith("auc_") and m not in order]
    rejections = [m for m in present if m.startswith("rej") and m not in order]
    order += sorted(rejections, key=lambda m: (m.split("_", 1)[1], -int(m[3:].split("_")[0])))
    return [m for m in order if m in present]


# --------------------------------------------------------------------------- figures
def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically and close it (every figure of the report)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_efficiency(rows: list[dict[str, Any]], metrics: Sequence[str], path: Path) -> Path:
    """Metric vs labelled events, one line per (backbone, mode), mean ± std over seeds."""
    n_panels = len(metrics)
    ncols = min(n_panels, 3)
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    backbones = sorted({r["backbone"] for r in rows})
    for j, m in enumerate(metrics):
        ax = axes[j // ncols][j % ncols]
        for b_i, backbone in enumerate(backbones):
            for mode in MODE_STYLE:
                pts = sorted(
                    (r["n_labels"], r[m], r[f"{m}_std"])
                    for r in rows
                    if r["backbone"] == backbone and r["mode"] == mode
                )
                if not pts:
                    continue
                n, y, e = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
                color, marker = MODE_STYLE[mode]
                label = mode if len(backbones) == 1 or backbone in ("-", "none") else f"{backbone} {mode}"
                if (n == 0).all():  # a zero-label floor (cut, LineFit): a horizontal line
                    ax.axhline(y[0], color=color, ls=":", lw=1.2, label=f"{label} (0 labels)")
                    continue
                ls = ["-", "--", ":", "-."][b_i % 4]
                ax.errorbar(n, y, yerr=e, color=color, marker=marker, ls=ls, capsize=3, label=label)
        ax.set_xscale("log")
        ns = sorted({r["n_labels"] for r in rows if r["n_labels"] > 0})
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        if m.startswith("rej"):
            ax.set_yscale("log")
        ax.set_xlabel("labelled training events")
        ax.set_ylabel(metric_label(m))
        ax.grid(alpha=0.3, which="both")
        if j == 0:
            ax.legend(fontsize=8)
    for j in range(n_panels, nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.suptitle("data efficiency (mean ± std over seeds, test split)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_roc(results: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Background rejection vs signal efficiency of the first signal/background pair, per label count."""
    pairs = sorted({p for r in results for p in r.get("roc", {})})
    if not pairs:
        return None
    pair = pairs[0]
    ns = sorted({int(r["n_labels"]) for r in results})
    ncols = min(len(ns), 4)
    nrows = -(-len(ns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    for j, n in enumerate(ns):
        ax = axes[j // ncols][j % ncols]
        seen = set()
        for r in results:
            if int(r["n_labels"]) != n or pair not in r.get("roc", {}):
                continue
            es = np.array(r["roc"][pair]["signal_eff"])
            eb = np.array(r["roc"][pair]["background_eff"])
            ok = eb > 0
            color, _ = MODE_STYLE.get(r["mode"], ("k", "."))
            label = r["mode"] if r["mode"] not in seen else None
            seen.add(r["mode"])
            ax.plot(es[ok], 1 / eb[ok], color=color, alpha=0.7, lw=1.2, label=label)
        ax.plot([0, 1], [1, 1], color="k", lw=0.5)
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_xlabel("signal efficiency εS")
        ax.set_ylabel("background rejection 1/εB")
        ax.set_title(f"{pair.replace('_vs_', ' vs ')}, {n} labels", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if j == 0:
            ax.legend(fontsize=8)
    for j in range(len(ns), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.suptitle("ROC curves (one line per seed)")
    fig.tight_layout()
    return save_figure(fig, path)


def _label_panel(ax: plt.Axes, j: int, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, title and grid of one panel of a per-label-count row; the legend on the first."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if j == 0:
        ax.legend(fontsize=8)


def plot_residuals(results: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Regression tasks: the residual quantile function (prediction - truth vs cumulative fraction; the records'
    ``residuals.quantiles``) per mode, one panel per label count, one line per seed."""
    with_res = [r for r in results if (r.get("residuals") or {}).get("quantiles")]
    if not with_res:
        return None
    ns = sorted({int(r["n_labels"]) for r in with_res})
    fig, axes = plt.subplots(1, len(ns), figsize=(4 * len(ns), 3.2), squeeze=False)
    for j, n in enumerate(ns):
        ax, seen = axes[0][j], set()
        for r in with_res:
            if int(r["n_labels"]) != n:
                continue
            q = np.asarray(r["residuals"]["quantiles"], dtype=float)
            color, _ = MODE_STYLE.get(r["mode"], ("k", "."))
            ax.plot(
                np.linspace(0, 1, len(q)), q, color=color, alpha=0.7, label=None if r["mode"] in seen else r["mode"]
            )
            seen.add(r["mode"])
        ax.axhline(0.0, color="k", lw=0.5)
        ylabel = f"residual ({with_res[0].get('target', 'prediction − truth')})"
        _label_panel(ax, j, "cumulative fraction of test events", ylabel, f"{n} labels")
    fig.suptitle("residual quantiles, prediction − truth (one line per seed)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_finetune_curves(results: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Validation loss vs step for the first seed of every cell (early stopping keeps the minimum)."""
    with_history = [r for r in results if r.get("history")]
    if not with_history:
        return None
    ns = sorted({int(r["n_labels"]) for r in with_history})
    first_seed = min(r["seed"] for r in with_history)
    fig, axes = plt.subplots(1, len(ns), figsize=(4 * len(ns), 3.2), squeeze=False)
    for j, n in enumerate(ns):
        ax = axes[0][j]
        for r in with_history:
            if int(r["n_labels"]) != n or r["seed"] != first_seed:
                continue
            # the curve: evaluations during training (a step-0 record has no train loss, the weight average of
            # finetune.average_last is a candidate beside the curve, drawn as a point)
            h = [p for p in r["history"] if "averaged" not in p]
            color, _ = MODE_STYLE.get(r["mode"], ("k", "."))
            ax.plot([p["step"] for p in h], [p["val_loss"] for p in h], color=color, label=f"{r['mode']} val")
            tr = [p for p in h if "train_loss" in p]
            ax.plot([p["step"] for p in tr], [p["train_loss"] for p in tr], color=color, ls=":", alpha=0.7)
            for p in r["history"]:
                if "averaged" in p:
                    ax.plot(p["step"], p["val_loss"], marker="*", color=color, ms=8)
            ax.axvline(r["train"]["best_step"], color=color, lw=0.6, ls="--")
        _label_panel(ax, j, "step", "cross-entropy", f"{n} labels, seed {first_seed}")
    fig.suptitle("fine-tuning: validation (solid) and training (dotted) loss; dashed = best checkpoint")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_factor(eff_rows: list[dict[str, Any]], metric: str, path: Path) -> Path | None:
    if not eff_rows:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for key in sorted({(r.get("backbone", "-"), r["mode"]) for r in eff_rows}):
        rs = sorted((r for r in eff_rows if (r.get("backbone", "-"), r["mode"]) == key), key=lambda r: r["n"])
        n = np.array([r["n"] for r in rs])
        f = np.array([r["factor"] for r in rs])
        lo = np.array([r["low"] for r in rs])
        hi = np.array([r["high"] for r in rs])
        color, marker = MODE_STYLE.get(key[1], ("k", "."))
        ax.errorbar(
            n,
            f,
            yerr=[np.maximum(f - lo, 0), np.maximum(hi - f, 0)],
            color=color,
            marker=marker,
            capsize=3,
            label=key[1] if key[0] == "-" else f"{key[0]} {key[1]}",
        )
        for r in rs:
            if r["kind"] == "lower":
                ax.annotate(
                    "",
                    xy=(r["n"], r["factor"] * 1.6),
                    xytext=(r["n"], r["factor"]),
                    arrowprops={"arrowstyle": "->", "color": color},
                )
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("labelled events used")
    ax.set_ylabel("label-efficiency factor")
    ax.set_title(f"labels scratch needs ÷ labels used ({metric_label(metric)})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pretraining(curves: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Loss curves per pretrained backbone (see :func:`pretraining_curves`), with their baselines."""
    curves = {k: v for k, v in curves.items() if v.get("series")}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    styles = ["-", "--", ":", "-."]
    for i, (name, c) in enumerate(sorted(curves.items())):
        for j, (label, (steps, values)) in enumerate(sorted(c["series"].items())):
            ax.plot(steps, values, color=f"C{i}", ls=styles[j % 4], marker="o", ms=2.5, label=f"{name} {label}")
        for j, (label, value) in enumerate(sorted(c.get("baselines", {}).items())):
            ax.axhline(value, color=f"C{i}", lw=0.7, ls=styles[(j + 1) % 4], alpha=0.6, label=f"{name} {label}")
    ax.set_xlabel("step")
    ax.set_ylabel("pretraining loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


#: The figure files every report writes (a placeholder where the inputs are missing).
FIGURES = ("label_efficiency.png", "roc.png", "finetune_curves.png", "efficiency_factor.png", "pretraining.png")

# --------------------------------------------------------------------------- inputs from other stages
BASELINES = {"log_K": "uniform (log K)", "unigram_entropy": "unigram entropy"}


def pretraining_curves(pretrain_dirs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Loss curves of pretrained backbones from their ``history.json`` (records with ``step`` and losses,
    e.g. ``val/loss``, ``val/loss_token``, ``train_loss``) and baselines from ``metrics.json``."""
    curves: dict[str, dict[str, Any]] = {}
    for name, d in pretrain_dirs.items():
        p = Path(d) / "history.json"
        if not p.is_file():
            continue
        data = read_json(p)
        recs = data.get("history", []) if isinstance(data, dict) else data
        recs = [r for r in recs if isinstance(r, dict) and "step" in r]
        keys = sorted({k for r in recs for k in r if k != "step" and "loss" in k and isinstance(r[k], (int, float))})
        series = {k: ([r["step"] for r in recs if k in r], [r[k] for r in recs if k in r]) for k in keys}
        metrics = read_json(Path(d) / "metrics.json") if (Path(d) / "metrics.json").is_file() else {}
        baselines = {
            label: float(metrics[k]) for k, label in BASELINES.items() if isinstance(metrics.get(k), (int, float))
        }
        curves[name] = {"series": series, "baselines": baselines}
    return curves


def _scalars(d: dict[str, Any], prefix: str = "", limit: int = 40) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _scalars(v, f"{prefix}{k}.", limit)
        elif isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) < 60):
            out.append((f"{prefix}{k}", v))
    return out[:limit]


def _placeholder(path: Path, why: str) -> Path:
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"not available: {why}", ha="center", va="center", color="0.4")
    return save_figure(fig, path)


def _difference(
    cell: dict[str, Any], ref: dict[str, Any], results: Sequence[dict[str, Any]], metric: str
) -> tuple[float, float, str]:
    """Mean difference of two cells and its standard error (over seeds, or test bootstrap for one seed)."""
    d = cell[metric] - ref[metric]
    n1, n2 = len(cell["seeds"]), len(ref["seeds"])
    if n1 > 1 and n2 > 1:
        return d, float(np.sqrt(cell[f"{metric}_std"] ** 2 / n1 + ref[f"{metric}_std"] ** 2 / n2)), "s.e. over seeds"

    def boot(c: dict[str, Any]) -> float:
        stds = [
            r["std"].get(metric, 0.0)
            for r in results
            if r["mode"] == c["mode"]
            and int(r["n_labels"]) == c["n_labels"]
            and (r.get("backbone") or "-") == c["backbone"]
        ]
        return float(np.sqrt(np.mean(np.square(stds))) / np.sqrt(max(len(stds), 1))) if stds else 0.0

    return d, float(np.hypot(boot(cell), boot(ref))), "test-set bootstrap"


# --------------------------------------------------------------------------- HTML
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #333}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#666;font-size:0.9em}.missing{color:#a60;font-style:italic}.hl{background:#eef6ee;padding:0.6em 1em;
border-left:4px solid #4a4}code{background:#f4f4f4;padding:0 3px}nav a{margin-right:1em}
"""


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return f'<p class="missing">{html.escape(alt)}: not available</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(str(h))}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{html.escape(str(c))}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _fmt(v: Any, err: Any = None) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    digits = 4 if abs(v) < 10 else 3
    s = f"{v:.{digits}g}" if isinstance(v, float) else str(v)
    if err is not None and isinstance(err, float) and np.isfinite(err) and err > 0:
        s += f" ± {err:.2g}"
    return s


#: The reference sets of the factor: the best method without pretraining, same-architecture scratch, and the
#: ablation scratch_global (scratch given the pretraining's global targets). ``None``: every reference mode.
AGAINST: dict[str, tuple[str, ...] | None] = {
    "best": None,
    "scratch": ("scratch",),
    "scratch_global": ("scratch_global",),
}


def pool_runs(results: Sequence[dict[str, Any]], pool: dict[str, list[str]] | None) -> list[dict[str, Any]]:
    """Runs of the pooled backbones (``{name: [backbone, ...]}``, repeated pretraining runs) added once more under
    ``name``, one record per (mode, labels, seed): the mean of each metric over the pretraining runs."""
    out = list(results)
    for name, members in (pool or {}).items():
        if name in members:
            raise ValueError(f"evaluate.report.pool_backbones: name the pool {name!r} apart from its members {members}")
        groups: dict[tuple[str, int, Any], list[dict[str, Any]]] = {}
        for r in results:
            if r.get("backbone") in members and r["mode"] in PRETRAINED_MODES:
                groups.setdefault((r["mode"], int(r["n_labels"]), r.get("seed")), []).append(r)
        for rs in groups.values():
            keys = set.intersection(*(set(r["metrics"]) for r in rs))
            metrics = {k: float(np.mean([r["metrics"][k] for r in rs])) for k in keys}
            out.append({**rs[0], "backbone": name, "metrics": metrics, "pooled": [r.get("backbone") for r in rs]})
    return out


def best_method_rows(
    results: Sequence[dict[str, Any]],
    metrics: Sequence[str],
    metric: str,
    pool: dict[str, list[str]] | None = None,
    *,
    interval: str = "t",
    curve: str = "loglinear",
    n_bootstrap: int = 1000,
) -> list[dict[str, Any]]:
    """The factor of each pretrained mode (and ablation) against the best method without pretraining, against
    same-architecture scratch and against scratch_global (when run), for the headline ``metric`` and every
    background rejection shown (:func:`physfm.evaluate.efficiency.best_method_factors` with ``interval``,
    ``curve`` and ``n_bootstrap``). Rows carry ``against``."""
    results = pool_runs(results, pool)
    several = len({r.get("backbone") or "-" for r in results if r["mode"] in PRETRAINED_MODES}) > 1
    out: list[dict[str, Any]] = []
    for name in [metric, *(m for m in metrics if m.startswith("rej") and m != metric)]:
        runs = []
        for r in results:
            value = r["metrics"].get(name)
            if value is None or not np.isfinite(value):
                continue
            mode = r["mode"]
            if mode in PRETRAINED_MODES and several:
                mode = f"{mode} {r.get('backbone') or '-'}"
            runs.append({"mode": mode, "n": float(r["n_labels"]), "seed": r.get("seed"), "value": float(value)})
        present = {x["mode"] for x in runs}
        for against, refs_of in AGAINST.items():
            refs = [m for m in (refs_of or REFERENCE_MODES) if m in present]
            rated = sorted({m for m in present if m.split(" ")[0] in PRETRAINED_MODES})
            if against == "scratch" and "scratch_global" in present:
                rated.append("scratch_global")  # how much the global targets alone help scratch
            if not refs or not rated:
                continue
            rows = best_method_factors(
                runs,
                refs,
                methods=rated,
                higher_is_better=name not in LOWER_IS_BETTER,
                model=curve,
                interval=interval,
                n_bootstrap=n_bootstrap,
            )
            out += [{"metric_name": name, "against": against, **row} for row in rows]
    return out


def best_method_verdict(rows: Sequence[dict[str, Any]]) -> str:
    """One plain sentence: does the fine-tuned backbone beat the best method without pretraining, at how many of
    the label counts tried, and by how much (``rows``: the headline metric's ``best_method`` rows)."""
    rated = sorted(
        (e for e in rows if e["against"] == "best" and e["mode"].startswith("finetune")), key=lambda e: e["n"]
    )
    if not rated:
        return ""
    # beats: a lower bound above 1 over two seeds or more (better than every reference at its largest label
    # count), or a factor above 1 whose interval excludes 1. Above 1 with no interval (fewer than two seeds, or
    # replicates that left the reference curves: low NaN or absent) is no win: it is said apart, as unbounded
    above = [e for e in rated if e["kind"] in ("value", "lower") and e["factor"] > 1]
    bounded = [e for e in above if e["kind"] == "value" and math.isfinite(e.get("low", math.nan))]
    wins = [e for e in above if (e["kind"] == "lower" and e.get("n_seeds", 2) >= 2) or (e in bounded and e["low"] > 1)]
    unresolved = [e for e in above if e not in wins and (e["kind"] == "lower" or e not in bounded)]
    top = max(rated, key=lambda e: e["factor"])
    refs = ", ".join(sorted({e["best_reference"] for e in rated}))
    several = len({e["mode"] for e in rated}) > 1  # several backbones: "finetune <name>"

    def cell(e: dict[str, Any]) -> str:
        return f"{int(e['n'])} labels" + (f" ({e['mode'].partition(' ')[2]})" if several else "")

    tried = f"{len(rated)} (backbone, label count) cells" if several else f"{len(rated)} label counts"
    where = f"{format_factor(top)} at {cell(top)}"
    tail = f"; above 1 but unbounded (no interval) at {', '.join(cell(e) for e in unresolved)}" if unresolved else ""
    if not wins:
        return (
            f"Verdict: pretraining does not beat the best method without pretraining ({refs}) in any of the "
            f"{tried} tried; its largest factor is {where}{tail}"
        )
    return (
        f"Verdict: pretraining beats the best method without pretraining ({refs}) in {len(wins)} of the {tried} "
        f"({', '.join(cell(e) for e in wins)}); its largest factor is {where}{tail}"
    )


def backbone_max_lens(pretrain_dirs: dict[str, Path]) -> dict[str, int]:
    """Each pretrained backbone's ``max_len`` (its ``backbone.json``), for the truncation table."""
    out = {}
    for name, d in pretrain_dirs.items():
        meta = Path(d) / "backbone.json"
        if meta.is_file() and "max_len" in (m := read_json(meta)):
            out[name] = int(m["max_len"])
    return out


def truncation_table(trunc: dict[str, Any], max_lens: dict[str, int]) -> str:
    """The data summary's truncation table (:class:`physfm.data.summary.Truncation`): per class, the percentage of
    events, particles and scalar-sum pT that keeping the first L particles drops, for each L; the backbones'
    ``max_len`` named above it."""
    lengths = trunc["lengths"]
    what = {"events_cut": "events cut", "particles_dropped": "particles dropped", "pt_dropped": "pT dropped"}
    rows = [
        [f"{group}: {what[k]}", *(f"{100 * v:.1f} %" for v in values)]
        for group, row in trunc["by"].items()
        for k, values in row.items()
    ]
    uses = ", ".join(f"{b}: {n}" for b, n in sorted(max_lens.items()))
    return (
        "<p>What keeping only the hardest L particles (the backbone's <code>max_len</code>) drops"
        + (f"; the backbones read {html.escape(uses)}" if uses else "")
        + ".</p>"
        + _table(["class: share", *(f"L = {n}" for n in lengths)], rows)
    )


def search_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (backbone, mode, labels): the in-budget search's candidates and how often each was chosen."""
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in results:
        rec = r.get("search")
        if not rec or len(rec.get("candidates") or []) < 2:
            continue
        key = (r.get("backbone") or "-", r["mode"], int(r["n_labels"]))
        row = out.setdefault(
            key,
            {"backbone": key[0], "mode": key[1], "n_labels": key[2], "grid": rec["grid"], "chosen": {}, "val_loss": {}},
        )
        row["chosen"][str(rec["chosen"])] = row["chosen"].get(str(rec["chosen"]), 0) + 1
        for i, c in enumerate(rec["candidates"]):
            row["val_loss"].setdefault(str(i), []).append(c["val_loss"])
    return [out[k] for k in sorted(out, key=lambda k: (k[0], k[1], k[2]))]


def scratch_factor_rows(best_rows: Sequence[dict[str, Any]], metric: str, backbone: str = "-") -> list[dict[str, Any]]:
    """The label-efficiency factor against same-architecture scratch of the pretrained modes, for the headline
    ``metric``: the ``best_method`` rows ``against == "scratch"`` (one computation and one interval for the
    headline, the factor section and its plot), with the backbone split off the mode (``backbone`` when the
    study has a single pretrained backbone)."""
    out = []
    for e in best_rows:
        mode, _, name = e["mode"].partition(" ")
        if e["against"] == "scratch" and e["metric_name"] == metric and mode in PRETRAINED_MODES:
            out.append({**e, "mode": mode, "backbone": name or backbone})
    return out


def ablation_rows(best_rows: Sequence[dict[str, Any]], ablation_backbones: Sequence[str]) -> list[dict[str, Any]]:
    """The factors of the ablations: scratch_global against scratch and the pretrained modes against
    scratch_global, the linear probe, and the modes of the ablation backbones (e.g. global targets off)."""
    out = []
    for e in best_rows:
        mode, _, backbone = e["mode"].partition(" ")
        if e["against"] == "scratch_global" or mode in ("scratch_global", "linear") or backbone in ablation_backbones:
            out.append(e)
    return out


def input_fill_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    """One line per way inputs were filled: runs whose data set lacked some of the backbone's inputs
    (the evaluation record's ``input_fill``), what was set to zero, and why it was allowed."""
    why = {
        "feature_dropout": "the backbone's convention: it was pretrained with feature dropout",
        "allowed_by_user": "allowed by finetune.allow_missing_inputs; the backbone never saw them absent",
        "scratch": "scratch: trained from random weights on the inputs as they are",
    }
    groups: dict[tuple[str, str, str], int] = {}
    for r in results:
        fill = r.get("input_fill") or {}
        if fill.get("features"):
            key = (", ".join(fill["data_lacks"]), ", ".join(fill["features"]), str(fill["reason"]))
            groups[key] = groups.get(key, 0) + 1
    return [
        f"{n} run(s): the data lacks {lacks}; {feats} set to zero ({why.get(reason, reason)})"
        for (lacks, feats, reason), n in sorted(groups.items())
    ]


def _factor_table(rows: Sequence[dict[str, Any]]) -> str:
    """HTML table of factor rows (:func:`physfm.evaluate.efficiency.best_method_factors`): best method, ablations."""
    return _table(
        ["metric", "against", "rated", "labels", "mean", "reference at same labels", "seeds", "factor", "68 %"],
        [
            [
                metric_label(e["metric_name"]),
                e["against"],
                e["mode"],
                int(e["n"]),
                _fmt(e["metric"]),
                _fmt(e["reference_metric"]),
                str(e["n_seeds"]) + (" (few)" if e["few_seeds"] else ""),
                format_factor(e),
                "–" if not np.isfinite(e["low"]) else f"{e['low']:.2g}–{e['high']:.2g}×",
            ]
            for e in rows
        ],
        left=3,
    )


def build_report(
    out_html: str | Path,
    results: Sequence[dict[str, Any]],
    *,
    figures_dir: str | Path | None = None,
    title: str = "physfm label-efficiency study",
    metric: str = "auc",
    study: dict[str, Any] | None = None,
    data_summary: str | Path | None = None,
    tokenizers: dict[str, Path] | None = None,
    pretrain: dict[str, Path] | None = None,
    knn: Sequence[dict[str, Any]] | None = None,
    n_bootstrap: int = 1000,
    interval: str = "t",
    curve: str = "loglinear",
    mlflow_runs: str | None = None,
    pool_backbones: dict[str, list[str]] | None = None,
    ablation_backbones: Sequence[str] = (),
    scaling_backbones: Sequence[str] = (),
    samples: dict[str, Path] | None = None,
    downstream: dict[str, Sequence[dict[str, Any]]] | None = None,
    downstream_metrics: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Render the report; write figures to ``figures_dir`` and every number to ``report.json`` beside the HTML.

    ``mlflow_runs``: address of the study's runs in the MLflow UI, linked in the study section.
    ``pool_backbones``: repeated pretraining runs combined under one name (:func:`pool_runs`);
    ``ablation_backbones``: backbones that are ablations (their factors go to the ablations section).
    ``scaling_backbones``: the backbones of the corpus-scaling curve, the full-corpus one included (their corpus
    sizes from ``pretrain``'s ``backbone.json``; :mod:`physfm.evaluate.scaling`); the smaller-corpus ones are left
    out of the headline.
    ``samples``: ``physfm sample`` output directories of generative backbones, by name (generated vs real jets).
    ``interval``, ``curve``, ``n_bootstrap``: how every label-efficiency factor is computed (:func:`best_method_rows`).
    ``downstream``: each downstream set's evaluation records by name (its grid and baselines, and those scored on
    other sets, with ``tested_on``), one section each (:func:`downstream_section`), its metric from
    ``downstream_metrics`` (default ``metric``); ``results`` may then be empty (no grid on the corpus).

    ``results``: evaluation records (``physfm evaluate`` JSONs, with ``backbone`` added by the grid).
    ``knn``: records ``{"name", "k", "accuracy", ...}`` from ``physfm embed --knn``.
    Returns the report's data (also written as report.json).
    """
    out_html = Path(out_html)
    figs = Path(figures_dir) if figures_dir else out_html.parent / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    results = list(results)
    if not results and not downstream:
        raise ValueError("no evaluation results to report: run `physfm evaluate` on the fine-tuned models first")
    metrics = headline_metrics(results, metric)
    if results and metric not in metrics:
        raise ValueError(f"report metric '{metric}' is not in the results; available: {', '.join(metrics)}")
    rows = summarize_cells(results, metrics)

    best_rows = best_method_rows(
        results, metrics, metric, pool_backbones, interval=interval, curve=curve, n_bootstrap=n_bootstrap
    )
    pretrained = sorted({r.get("backbone") or "-" for r in results if r["mode"] in PRETRAINED_MODES})
    eff_rows = scratch_factor_rows(best_rows, metric, pretrained[0] if len(pretrained) == 1 else "-")
    abl_rows = ablation_rows(best_rows, ablation_backbones)
    corpus = corpus_sizes(pretrain or {}, scaling_backbones) if scaling_backbones else {}
    scal_rows = scaling_rows(best_rows, corpus, metric)
    scal_fits = scaling_fits(scal_rows)
    # the headline is the study's own backbone: the curve's smaller corpora (and the ablations) have their sections
    side = {*ablation_backbones, *(b for b, n in corpus.items() if n < max(corpus.values()))}
    srch_rows = search_rows(results)

    fig_paths = {
        "efficiency": plot_efficiency(rows, metrics[:6], figs / "label_efficiency.png") if rows else None,
        "roc": plot_roc(results, figs / "roc.png"),
        "finetune-curves": plot_finetune_curves(results, figs / "finetune_curves.png"),
        "label-efficiency": plot_factor(eff_rows, metric, figs / "efficiency_factor.png"),
        "pretraining": plot_pretraining(pretraining_curves(pretrain or {}), figs / "pretraining.png"),
        "scaling": plot_scaling(scal_rows, scal_fits, figs / "corpus_scaling.png"),
    }
    placeholders = {  # every figure file exists (workflow outputs), even when its inputs do not
        "efficiency": (
            "label_efficiency.png",
            "no grid on the corpus (finetune.on_corpus false): see the downstream sets",
        ),
        "roc": ("roc.png", "no signal/background pair in these classes"),
        "finetune-curves": ("finetune_curves.png", "no training history in the results"),
        "label-efficiency": ("efficiency_factor.png", "needs scratch and fine-tuned runs"),
        "pretraining": ("pretraining.png", "no pretraining history found"),
    }
    for key, (fname, why) in placeholders.items():
        if fig_paths[key] is None:
            _placeholder(figs / fname, why)

    parts: list[str] = []
    add = parts.append
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{s}">{s.replace("-", " ")}</a>' for s in SECTIONS)
    add(f"<h1>{html.escape(title)}</h1><nav>{nav}</nav>")

    # ---- study
    data_versions = sorted({r.get("data_version") or "?" for r in results})
    seeds = sorted({r["seed"] for r in results})
    add('<h2 id="study">Study</h2>')
    info = [
        ("physfm version", __version__),
        ("generated", now),
        ("data_version", ", ".join(data_versions)),
        ("tokenizer_version", ", ".join(sorted({str(r.get("tokenizer_version")) for r in results}))),
        ("backbones", ", ".join(sorted({r["backbone"] for r in rows}))),
        ("modes", ", ".join(m for m in MODE_STYLE if any(r["mode"] == m for r in rows))),
        ("label counts", ", ".join(str(n) for n in sorted({r["n_labels"] for r in rows}))),
        ("seeds", ", ".join(map(str, seeds))),
        ("test events", ", ".join(sorted({str(r["n_events"]) for r in results}))),
        ("headline metric", metric_label(metric)),
    ]
    info += [(k, v) for k, v in (study or {}).items()]
    add(_table(["", ""], info))
    if mlflow_runs:
        url = html.escape(mlflow_runs)
        add(
            f'<p class="note">MLflow runs of this study: <a href="{url}">{url}</a> (start the UI first, see the '
            'README; it opens on the GenAI "Overview": the runs are under "Model training").</p>'
        )

    # ---- headline
    lines = []
    for c in rows:
        if c["mode"] != "finetune" or c["backbone"] in side:
            continue
        ref = next(
            (
                r
                for r in rows
                if r["mode"] == "scratch" and r["n_labels"] == c["n_labels"] and r["backbone"] == c["backbone"]
            ),
            None,
        )
        ref = ref or next((r for r in rows if r["mode"] == "scratch" and r["n_labels"] == c["n_labels"]), None)
        if ref is None:
            continue
        d, err, how = _difference(c, ref, results, metric)
        lines.append(
            f"{c['n_labels']} labels{'' if c['backbone'] == '-' else ' (' + c['backbone'] + ')'}: fine-tuned "
            f"{_fmt(c[metric])} vs scratch {_fmt(ref[metric])}, Δ = {d:+.4f} ± {err:.2g} ({how}): "
            f"fine-tuned {_verdict(d, metric)} scratch"
        )
    level = f"{100 * best_rows[0]['level']:.0f} %" if best_rows else ""
    for e in best_rows:  # the factors: one computation (best_method_rows), quoted here and in the sections
        if (
            e["mode"].startswith("finetune")
            and e["against"] in ("best", "scratch")
            and e["mode"].partition(" ")[2] not in side
        ):
            what = "" if e["metric_name"] == metric else f" [{metric_label(e['metric_name'])}]"
            against = (
                f"the best method without pretraining ({e['best_reference']})"
                if e["against"] == "best"
                else "same-architecture scratch"
            )
            span = f" ({level} interval over {e['n_seeds']} seeds)" if np.isfinite(e["low"]) else ""
            lines.append(f"factor against {against} at {int(e['n'])} labels{what}: {format_factor(e)}{span}")
    verdict = best_method_verdict(
        [e for e in best_rows if e["metric_name"] == metric and e["mode"].partition(" ")[2] not in side]
    )
    lines = [verdict, *lines] if verdict else lines
    if lines:
        add(
            '<div class="hl"><b>Headline</b> ('
            + html.escape(metric_label(metric))
            + ")<ul>"
            + "".join(f"<li>{html.escape(s)}</li>" for s in lines)
            + "</ul></div>"
        )

    # ---- inputs the data lacked (physfm.finetune.backbone_source.input_fill)
    if fills := input_fill_lines(results):
        add(
            '<div class="hl"><b>Inputs the data set lacks</b><ul>'
            + "".join(f"<li>{html.escape(s)}</li>" for s in fills)
            + "</ul></div>"
        )

    # ---- data
    add('<h2 id="data">Data summary</h2>')
    if data_summary and (Path(data_summary) / "summary.json").is_file():
        summ = read_json(Path(data_summary) / "summary.json")
        add(_table(["quantity", "value"], _scalars(summ)))
        if trunc := summ.get("truncation"):
            add(truncation_table(trunc, backbone_max_lens(pretrain or {})))
        for png in sorted(Path(data_summary).glob("*.png")):
            add(_img(png, png.stem))
    else:
        add('<p class="missing">data summary not available (run `physfm summarize`)</p>')

    # ---- tokenizer
    add('<h2 id="tokenizer">Tokenizer quality</h2>')
    if tokenizers:
        for name, d in sorted(tokenizers.items()):
            add(f"<h3>{html.escape(name)}</h3>")
            m = Path(d) / "metrics.json"
            if m.is_file():
                add(
                    _table(
                        ["metric", "value"],
                        [(k, _fmt(v) if isinstance(v, float) else v) for k, v in _scalars(read_json(m))],
                    )
                )
            pngs = sorted(Path(d).glob("*.png")) + sorted(Path(d).glob("plots/*.png"))
            for png in pngs[:6]:
                add(_img(png, f"{name} {png.stem}"))
            if not m.is_file() and not pngs:
                add(f'<p class="missing">{html.escape(str(d))}: no metrics.json or plots</p>')
    else:
        add('<p class="missing">no tokenizer in this study</p>')

    # ---- pretraining
    add('<h2 id="pretraining">Pretraining curves</h2>')
    add(_img(fig_paths["pretraining"], "pretraining loss curves"))
    if fig_paths["pretraining"] is None:  # no history to plot: show the stage's own figures, if any
        for name, d in sorted((pretrain or {}).items()):
            for png in sorted(Path(d).glob("*.png"))[:4]:
                add(_img(png, f"{name} {png.stem}"))

    # ---- efficiency
    add('<h2 id="efficiency">Data efficiency</h2>')
    add(
        '<p class="note">Each point is the mean over seeds of the test-split metric; error bars are the standard '
        "deviation over seeds. All modes of a label count train on the same nested, class-balanced subset.</p>"
    )
    add(_img(fig_paths["efficiency"], "data-efficiency plot"))

    add('<h2 id="roc">ROC curves</h2>')
    add(_img(fig_paths["roc"], "ROC curves"))

    add('<h2 id="finetune-curves">Fine-tuning curves</h2>')
    add(_img(fig_paths["finetune-curves"], "fine-tuning loss curves"))

    # ---- results table
    add('<h2 id="results">Results</h2>')
    add(_cells_table(rows, metrics))
    add(
        '<p class="note">mean ± std over seeds. Per run (± = test-set bootstrap std; ≥ = no background passed, '
        "a lower bound):</p>"
    )
    run_rows = []
    for r in sorted(results, key=lambda r: (r.get("backbone") or "", r["mode"], r["n_labels"], r["seed"])):
        vals = []
        for m in metrics:
            v = _fmt(r["metrics"].get(m), r["std"].get(m))
            vals.append(("≥ " if m in r.get("lower_bounds", []) else "") + v)
        run_rows.append(
            [
                r.get("run_name") or f"{r['mode']} n={r['n_labels']} seed={r['seed']}",
                r.get("run_id") or "–",
                r["train"].get("best_step"),
                *vals,
            ]
        )
    add(_table(["run", "MLflow run id", "best step", *[metric_label(m) for m in metrics]], run_rows, left=2))

    if srch_rows:
        grid = srch_rows[0]["grid"]
        add(
            '<p class="note">In-budget hyperparameter search (the same candidates for every mode, chosen by the '
            "lowest loss on the subset's own validation part; the val and test splits are never read): "
            + html.escape(json.dumps(grid))
            + ". Candidate chosen, runs per candidate, and mean in-budget validation loss per candidate:</p>"
        )
        add(
            _table(
                ["backbone", "mode", "labels", "chosen (candidate × runs)", "mean validation loss per candidate"],
                [
                    [
                        r["backbone"],
                        r["mode"],
                        r["n_labels"],
                        ", ".join(f"c{i} × {n}" for i, n in sorted(r["chosen"].items())),
                        ", ".join(f"c{i} {np.mean(v):.4g}" for i, v in sorted(r["val_loss"].items())),
                    ]
                    for r in srch_rows
                ],
                left=3,
            )
        )

    # ---- label efficiency
    add('<h2 id="label-efficiency">Label-efficiency factor</h2>')
    add(
        '<p class="note">Labels the scratch model needs to reach the fine-tuned (or frozen) model\'s mean '
        f"{html.escape(metric_label(metric))}, divided by the labels used; interpolated in log(labels) on the scratch "
        "curve (the <code>against = scratch</code> rows of the next section: the same computation and interval). ≥: "
        "the model beats scratch at every label count tried (lower bound); ≤: scratch with the fewest labels is "
        "already better. Range: 68 % interval over seeds (jackknife-t unless evaluate.report.interval says "
        "otherwise).</p>"
    )
    if eff_rows:
        add(
            _table(
                ["backbone", "mode", "labels", metric_label(metric), "scratch at same labels", "factor"],
                [
                    [
                        e["backbone"],
                        e["mode"],
                        int(e["n"]),
                        _fmt(e["metric"]),
                        _fmt(e["reference_metric"]),
                        format_factor(e),
                    ]
                    for e in eff_rows
                ],
                left=2,
            )
        )
        add(_img(fig_paths["label-efficiency"], "label-efficiency factor"))
    else:
        add('<p class="missing">needs scratch and fine-tuned runs</p>')

    # ---- factor against the best method without pretraining
    add('<h2 id="best-method">Label-efficiency factor against the best method without pretraining</h2>')
    refs = sorted({m for r in best_rows for m in r["references"]})
    add(
        '<p class="note">Labels the best method trained without pretraining ('
        + html.escape(", ".join(refs) or "none in this study")
        + ") needs to match the pretrained model's mean, divided by the labels it used; the reference curve is the "
        "upper envelope of their seed-mean curves, piecewise linear in log(labels), read off where it is "
        "interpolated. A zero-label method (cut, LineFit) is the floor: 0× when it already matches. ≥ / ≤: "
        "outside the tried label counts (a bound). Interval: 68 % jackknife-t over seeds (each seed has its own "
        "label subset and initialisation); flagged when fewer than 5 seeds. Every label a run touches is counted: "
        "the budget includes its in-budget validation part.</p>"
    )
    if best_rows:
        add(_factor_table(best_rows))
    else:
        add('<p class="missing">needs pretrained runs and runs without pretraining</p>')

    # ---- ablations
    add('<h2 id="ablations">Ablations</h2>')
    add(
        '<p class="note">How much of the gain each ingredient explains, with the same factor and interval as above: '
        "<b>scratch_global</b>, scratch given the pretraining's label-free global targets (log jet mass, log "
        "multiplicity) as an auxiliary loss (its factor against scratch, and the pretrained modes' factor against "
        "it); <b>linear</b>, a linear probe on the frozen backbone beside the MLP probe (frozen); and backbones "
        "pretrained with an ablation ("
        + html.escape(", ".join(ablation_backbones) or "none in this study")
        + ", e.g. global targets off, <code>global_weight: 0</code>). Ablations not run by this study are in "
        "config/full.yaml.</p>"
    )
    if abl_rows:
        add(_factor_table(abl_rows))
    else:
        add('<p class="missing">no ablation in this study (finetune.ablation)</p>')

    # ---- corpus scaling (issue 19): the factor against the unlabelled corpus size
    add('<h2 id="scaling">Corpus scaling</h2>')
    if scal_rows:
        add(
            '<p class="note">The same backbone pretrained on the first N unlabelled train events (stored order; '
            "the same steps, so a smaller corpus is seen more often), fine-tuned under the same protocol; each "
            "factor is the one above (same curve, same interval). Fit: factor = A · N<sup>b</sup>, least squares in "
            "log-log over the measured values (0× and bounds carry no slope); its corpus for a target factor is an "
            "extrapolation of that law, not a measurement.</p>"
        )
        add(
            _table(
                ["corpus events", "backbone", "mode", "labels", "against", metric_label(metric), "factor"],
                [
                    [
                        r["corpus_events"],
                        r["backbone"],
                        r["mode"],
                        int(r["n"]),
                        r["best_reference"] if r["against"] == "best" else "scratch",
                        _fmt(r["metric"]),
                        format_factor(r),
                    ]
                    for r in scal_rows
                ],
                left=3,
            )
        )
        add(
            _table(
                [
                    "against",
                    "mode",
                    "labels",
                    "points fitted",
                    "slope b",
                    "A",
                    *(f"corpus for {t:g}×" for t in TARGETS),
                ],
                [
                    [
                        g["against"],
                        g["mode"],
                        int(g["n"]),
                        g["n_points"],
                        g.get("why") or (f"{g['b']:.3g}" + (f" ± {g['b_se']:.2g}" if np.isfinite(g["b_se"]) else "")),
                        _fmt(g["A"]) if np.isfinite(g["A"]) else "–",
                        *(
                            f"{g['corpus_for'][f'{t:g}']:.3g}"
                            if np.isfinite(g["corpus_for"].get(f"{t:g}", np.nan))
                            else "–"
                            for t in TARGETS
                        ),
                    ]
                    for g in scal_fits
                ],
                left=3,
            )
        )
        add(_img(fig_paths["scaling"], "factor against corpus size"))
    else:
        add('<p class="missing">no corpus-scaling curve in this study (finetune.scaling)</p>')

    # ---- downstream sets: one section each, from the same tables and figures as the corpus's
    ds_data = {}
    add('<h2 id="downstream">Downstream sets</h2>')
    if not downstream:
        add('<p class="missing">no downstream set in this study (config downstream)</p>')
    for name, records in (downstream or {}).items():
        ds_metric = (downstream_metrics or {}).get(name) or metric
        ds_data[name] = downstream_section(
            add, name, records, ds_metric, figs, interval=interval, curve=curve, n_bootstrap=n_bootstrap
        )
        fig_paths.update({f"downstream-{name}-{k}": v for k, v in ds_data[name].pop("figures").items()})

    # ---- embeddings
    add('<h2 id="embeddings">Embeddings: k-NN accuracy</h2>')
    if knn:
        add(
            '<p class="note">Test events classified by a majority vote of their k nearest train events in '
            "embedding space (faiss): a representation-quality probe with no training. The randomly initialised "
            "backbone of the same architecture is the baseline.</p>"
        )
        add(
            _table(
                ["embedding", "k", "reference events", "k-NN accuracy"],
                [[k_["name"], k_["k"], k_.get("n_reference", "–"), _fmt(k_["accuracy"])] for k_ in knn],
            )
        )
    else:
        add('<p class="missing">no embeddings in this study</p>')

    # ---- the method table (issue 14): one row per pretraining objective
    method_rows = _method_section(add, results, metric, pretrain or {}, knn or [])
    generated = _generated_section(add, samples or {})

    add(
        f'<p class="note">physfm {__version__}, {now}. Every number here is in report.json and in the MLflow runs '
        "listed above.</p>"
    )
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n"
    )
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    data = {
        "metric": metric,
        "metrics": metrics,
        "cells": rows,
        "efficiency": eff_rows,
        "best_method": best_rows,
        "ablations": abl_rows,
        "scaling": {"corpus": corpus, "rows": scal_rows, "fits": scal_fits},
        "search": srch_rows,
        "study": dict(study or {}),
        "runs": [
            {k: r.get(k) for k in ("run_id", "run_name", "backbone", "mode", "n_labels", "seed", "metrics", "std")}
            for r in results
        ],
        "knn": list(knn or []),
        "methods": method_rows,
        "generated": generated,
        "figures": {k: str(v) for k, v in fig_paths.items() if v is not None},
        "headline": lines,
        "input_fill": input_fill_lines(results),
        "downstream": ds_data,
    }
    out_json = out_html.with_name(out_html.stem + ".json")
    write_json(out_json, data)
    every = [*results, *(r for rs in (downstream or {}).values() for r in rs)]
    _write_manifest(
        out_html,
        out_json,
        figs,
        every,
        [Path(v).name for k, v in fig_paths.items() if k.startswith("downstream-") and v],
    )
    return data


def _write_manifest(
    out_html: Path, out_json: Path, figs: Path, results: Sequence[dict[str, Any]], extra_figures: Sequence[str] = ()
) -> None:
    """The report's artefact manifest in its directory: the page, the numbers and the figures when
    they lie in that directory; inputs are the results' versions. The page (it shows the time) and
    the numbers (they name the MLflow runs) are records, so the version hashes inputs and figures."""
    home = out_html.parent.resolve()
    files = [out_html.name, out_json.name]
    if figs.resolve().is_relative_to(home):
        files += [(figs.resolve() / name).relative_to(home).as_posix() for name in (*FIGURES, *extra_figures)]
    inputs = {k: ",".join(sorted({str(r[k]) for r in results if r.get(k)})) for k in VERSION_KEYS}
    write_artifact(out_html.parent, "report", files, inputs, records=[out_html.name, out_json.name])


def _method_section(
    add: Any, results: Sequence[dict[str, Any]], metric: str, pretrain: dict[str, Path], knn: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The method table (:mod:`physfm.evaluate.methods`): appended to the page, returned for report.json."""
    from physfm.evaluate.methods import method_table, table_cells

    rows = method_table(
        results, metric, pretrain_dirs=pretrain, knn=knn, higher_is_better=metric not in LOWER_IS_BETTER
    )
    add('<h2 id="methods">Pretraining methods</h2>')
    if not rows:
        add('<p class="missing">no pretrained backbones in this study</p>')
        return rows
    add(
        '<p class="note">One row per pretraining objective, each on the same data, backbone size and pretraining '
        f"budget (steps × batch). Metric: {html.escape(metric_label(metric))} at the fewest labels, mean ± seed "
        "spread; "
        "factor against the best method without pretraining (scratch and the supervised baselines), 68 % jackknife-t "
        "interval over seeds. k-NN: the test events classified against the smallest labelled subset (its labels "
        "counted as any run's), beside the random-init backbone's. Collapse: the test embedding's effective rank and "
        "uniformity (0 = collapsed; random-init in brackets) and the objective's last validation diagnostics. Wall "
        "time: the pretraining process that finished (a resumed run's last part only).</p>"
    )
    header, body = table_cells(rows)
    add(_table(header, body))
    return rows


def _generated_section(add: Any, samples: dict[str, Path]) -> list[dict[str, Any]]:
    """Generated versus real jets (:mod:`physfm.evaluate.generated`): appended to the page when the study
    sampled any backbone, returned for report.json."""
    from physfm.evaluate.generated import generated_rows

    rows = generated_rows(samples)
    if not rows:
        return rows
    add('<h2 id="generated">Generated jets</h2>')
    add(
        '<p class="note">Jets generated by the backbones with <code>sample: true</code> (physfm sample) against '
        "real jets of the split: Wasserstein-1 distance and means of jet mass, jet pT and multiplicity (a "
        "next-token backbone also beside its tokenizer's closure on real jets). A flow backbone generates each "
        "jet given a real jet's multiplicity and globals (the conditions column), so its multiplicity matches by "
        "construction and the distances say how well the generated particles add up to the jet asked for. Flow "
        "backbones are pretrained with the generative term only: OmniLearn's classifier and class-smear terms need "
        "labels and are not part of label-free pretraining (nor built as a fine-tuning option yet).</p>"
    )
    body = []
    for r in rows:
        for name, o in r["observables"].items():
            body.append(
                [
                    r["backbone"],
                    name,
                    _fmt(o.get("wasserstein_generated")),
                    _fmt(o.get("wasserstein_tokenized")),
                    _fmt(o.get("mean_generated")),
                    _fmt(o.get("mean_real")),
                    ", ".join(r["conditions"]) or "–",
                ]
            )
    add(
        _table(
            ["backbone", "observable", "W1 generated", "W1 tokenized", "mean generated", "mean real", "conditions"],
            body,
            left=2,
        )
    )
    for r in rows:
        add(_img(Path(r["plot"]) if r["plot"] else None, f"generated vs real jets: {r['backbone']}"))
    return rows


def _cells_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    """HTML table of :func:`summarize_cells` rows: mean ± std over seeds of each metric."""
    header = ["backbone", "mode", "labels", "seeds", *[metric_label(m) for m in metrics]]
    body = [
        [r["backbone"], r["mode"], r["n_labels"], len(r["seeds"]), *[_fmt(r[m], r[f"{m}_std"]) for m in metrics]]
        for r in rows
    ]
    return _table(header, body, left=2)


def downstream_section(
    add: Any, name: str, records: Sequence[dict[str, Any]], metric: str, figs: Path, **factor: Any
) -> dict[str, Any]:
    """One downstream set's section: per test set (its own, then each set of its ``evaluate_on``, records with
    ``tested_on``), the data-efficiency plot, the results table, the factor against the best method without
    pretraining and against scratch (:func:`best_method_rows`, :func:`_factor_table`) and the ROC curves
    (classification; other tasks: the metrics of the table). ``factor``: how the factors are computed (``interval``,
    ``curve``, ``n_bootstrap`` of :func:`best_method_rows`). Appended to the page; returns its numbers and
    ``figures``."""
    add(f'<h3 id="downstream-{html.escape(name)}">{html.escape(name)}</h3>')
    own = [r for r in records if not r.get("tested_on")]
    tasks = sorted({str(r["task"]) for r in own if r.get("task")})
    trained = sorted({str(r.get("data_version")) for r in own})
    backbones = sorted(
        {f"{r['backbone']} (backbone_version {r.get('backbone_version')}, pretrained on data_version "
         f"{r.get('backbone_data_version')}, source {r.get('backbone_source') or 'this study'})"
         for r in own if r.get("backbone") not in (None, "none", "-") and r.get("mode") != "scratch"}
    )  # fmt: skip
    add(
        _table(
            ["", ""],
            [
                ("task", ", ".join(tasks) or "–"),
                ("data_version (trained on)", ", ".join(trained) or "–"),
                ("backbones", "; ".join(backbones) or "–"),
                ("headline metric", metric_label(metric)),
            ],
        )
    )
    if fills := input_fill_lines(own):
        add("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in fills) + "</ul>")
    groups: dict[str, list[dict[str, Any]]] = {"": own}
    for r in records:
        if r.get("tested_on"):
            groups.setdefault(str(r["tested_on"]), []).append(r)
    out: dict[str, Any] = {"metric": metric, "figures": {}, "tested_on": {}}
    for on, rs in groups.items():
        where = "its own test split" if not on else f"the test split of {on} (trained on {name})"
        add(f"<h4>Tested on {html.escape(where)}</h4>")
        metrics = headline_metrics(rs, metric)
        if metric not in metrics:
            add(f'<p class="missing">no {html.escape(metric_label(metric))} in these results</p>')
            continue
        rows = summarize_cells(rs, metrics)
        stem = f"downstream_{name}" + (f"_on_{on}" if on else "")
        eff = plot_efficiency(rows, metrics[:6], figs / f"{stem}_efficiency.png")
        roc = plot_roc(rs, figs / f"{stem}_roc.png") or plot_residuals(rs, figs / f"{stem}_residuals.png")
        add(_img(eff, f"{name}: data efficiency on {where}"))
        add(_cells_table(rows, metrics))
        best = best_method_rows(rs, metrics, metric, **factor)
        add(
            '<p class="note">Label-efficiency factor: labels the best method without pretraining (or scratch) '
            "needs to match the pretrained model, divided by the labels used, as in the best-method section.</p>"
        )
        add(
            _factor_table(best) if best else '<p class="missing">needs pretrained runs and runs without pretraining</p>'
        )
        if roc is not None:
            add(_img(roc, f"{name}: ROC curves (classification) or residuals (regression) on {where}"))
        else:
            add('<p class="note">No ROC or residual figure for this task: the table gives its metrics.</p>')
        out["tested_on"][on or name] = {"metrics": metrics, "cells": rows, "best_method": best}
        out["figures"].update({f"{on or 'own'}-efficiency": eff, **({f"{on or 'own'}-roc": roc} if roc else {})})
    return out


def anomaly_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of each CWoLa metric, per (mode, S/B): the rows of the anomaly report."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["mode"], float(r["s_over_b"])), []).append(r)
    rows = []
    for (mode, sb), rs in sorted(cells.items()):
        row: dict[str, Any] = {"mode": mode, "s_over_b": sb, "n_seeds": len(rs), "counts": rs[0]["counts"]}
        for k in ("max_sic", "sic_at_1pct", "auc"):
            v = np.array([r["metrics"][k] for r in rs], dtype=np.float64)
            row[k], row[f"{k}_std"] = float(np.nanmean(v)), float(np.nanstd(v)) if len(v) > 1 else float("nan")
        rows.append(row)
    return rows


def anomaly_report(results: Sequence[dict[str, Any]], out_html: Path, title: str) -> dict[str, Any]:
    """The CWoLa study's page (config/anomaly.yaml): SIC against S/B for scratch and pretrained (max SIC over
    FPR > 1e-4 and SIC at FPR = 1 %, mean ± std over seeds), a plot and a table; ``anomaly.json`` beside it."""
    out_html = Path(out_html)
    rows = anomaly_rows(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for j, (key, name) in enumerate((("max_sic", "max SIC (FPR > 1e-4)"), ("sic_at_1pct", "SIC at FPR = 1 %"))):
        ax = axes[j]
        for mode in sorted({r["mode"] for r in rows}):
            rs = [r for r in rows if r["mode"] == mode]
            color, marker = MODE_STYLE.get(mode, ("tab:red", "o"))
            label = "pretrained (fine-tuned)" if mode == "finetune" else mode
            x, y = [r["s_over_b"] for r in rs], [r[key] for r in rs]
            ax.errorbar(
                x, y, yerr=[np.nan_to_num(r[f"{key}_std"]) for r in rs], color=color, marker=marker, label=label
            )
        ax.axhline(1.0, color="black", lw=0.8, ls=":")  # a random classifier
        ax.set_xscale("log")
        _label_panel(ax, j, "S/B in the signal region", "SIC = TPR / sqrt(FPR)", name)
    figure = save_figure(fig, out_html.parent / "figures" / "sic_vs_sb.png")
    header = ["mode", "S/B", "seeds", "max SIC", "SIC @ 1 %", "AUC", "SR bkg / sig (train)", "eval bkg / sig"]
    table = [
        [
            r["mode"],
            _fmt(r["s_over_b"]),
            r["n_seeds"],
            _fmt(r["max_sic"], r["max_sic_std"]),
            _fmt(r["sic_at_1pct"], r["sic_at_1pct_std"]),
            _fmt(r["auc"], r["auc_std"]),
            f"{r['counts']['n_bkg_sr']} / {r['counts']['n_sig_sr']}",
            f"{r['counts']['n_eval_bkg']} / {r['counts']['n_eval_sig']}",
        ]
        for r in rows
    ]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>CWoLa classifiers (signal region vs sidebands, region labels only), scratch "
        "and the pretrained backbone fine-tuned with the same recipe and budget, scored on a truth-labelled evaluation "
        "set in the signal region whose signal events are disjoint from the injected ones (docs/anomaly.md). "
        "Mean ± std over seeds; SIC 1 is a random classifier.</p>"
        + _img(figure, "SIC against S/B")
        + _table(header, table)
        + f"<p>physfm {__version__}, {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC</p></body></html>"
    )
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text(page)
    data = {"rows": rows, "results": list(results)}
    write_json(out_html.parent / "anomaly.json", data)
    return data
