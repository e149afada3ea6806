"""The method table: one row per pretraining objective (backbone) of a study, every method on the same data,
backbone size and pretraining budget (``config/methods.yaml``), each read through the same protocol.

A row holds, for each way of using the backbone that the study ran (``finetune``, ``frozen`` and, when
present in the evaluation records, the linear probe ``linear``), the mean headline metric at the smallest
label count and the label-efficiency factor against the best method without pretraining (scratch and the
supervised baselines: :func:`physfm.evaluate.efficiency.best_method_factors`, with its interval over
seeds); the k-NN accuracy at the smallest label budget (:mod:`physfm.evaluate.probes`, the same labelled
subsets, counted as ``n`` labels); the pretraining cost (steps × batch, the wall time of the process that
finished, parameters); and the collapse numbers: the test embedding's effective rank and uniformity (with
the random-init backbone's beside it), and what the objective itself logged at its last validation
(view alignment; DINO's teacher entropy over ln K and prototypes used).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physfm.evaluate.efficiency import best_method_factors
from physfm.io import read_json

#: Ways of using a pretrained backbone, in the order the table shows them ("linear": the linear probe).
USES = ("finetune", "frozen", "linear")
#: Modes trained without pretraining: the reference curves of the factor.
REFERENCES = ("scratch", "bdt", "pfn", "cut", "linefit", "linefit_refined")
#: What a backbone's ``metrics.json`` (its last validation) says about collapse, when its objective logs it.
TRAINING_DIAGNOSTICS = ("val/alignment", "val/uniformity", "val/embedding_rank", "val/teacher_entropy",
                        "val/prototypes_used", "val/kl_teacher_student")  # fmt: skip


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


def pretraining_cost(backbone_dir: str | Path) -> dict[str, Any]:
    """Objective, steps, batch, steps × batch, wall seconds, parameters and training diagnostics of a backbone."""
    d = Path(backbone_dir)
    meta = read_json(d / "backbone.json") if (d / "backbone.json").is_file() else {}
    metrics = read_json(d / "metrics.json") if (d / "metrics.json").is_file() else {}
    cfg = meta.get("pretrain", {})
    steps, batch = cfg.get("steps"), cfg.get("batch_size")
    out: dict[str, Any] = {
        "objective": meta.get("objective") or metrics.get("objective"),
        "steps": steps,
        "batch_size": batch,
        "events_seen": steps * batch if steps and batch else None,
        "wall_seconds": metrics.get("train_seconds_this_process"),
        "resumed_from": metrics.get("resumed_from", 0),  # > 0: the wall time is the last process's only
        "n_params": metrics.get("n_params"),
        "world_size": metrics.get("world_size"),
        "d_model": meta.get("config", {}).get("d_model"),
        "n_layers": meta.get("config", {}).get("n_layers"),
    }
    opts = meta.get("objective_options", {})
    for key in TRAINING_DIAGNOSTICS:
        if _finite(metrics.get(key)):
            out[key.removeprefix("val/")] = float(metrics[key])
    if "teacher_entropy" in out and opts.get("n_prototypes"):
        out["teacher_entropy_over_log_K"] = out["teacher_entropy"] / math.log(int(opts["n_prototypes"]))
    return out


def _knn_by_backbone(knn: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """``(backbone, init)`` -> knn.json record; ``physfm embed --name '<backbone> <init>'`` names them."""
    out = {}
    for k in knn:
        name = str(k.get("name", ""))
        backbone, _, init = name.rpartition(" ")
        if backbone:
            out[(backbone, "random" if k.get("random_init") else init)] = k
    return out


def _knn_at_smallest(record: Mapping[str, Any] | None) -> dict[str, Any]:
    budgets = list((record or {}).get("budgets") or [])
    if not budgets:
        return {}
    n = min(b["n_labels"] for b in budgets)
    accs = [float(b["accuracy"]) for b in budgets if b["n_labels"] == n]
    return {
        "knn_n_labels": n,
        "knn_accuracy": float(np.mean(accs)),
        "knn_accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
        "knn_seeds": len(accs),
    }


def method_table(
    results: Sequence[Mapping[str, Any]],
    metric: str,
    *,
    pretrain_dirs: Mapping[str, str | Path] | None = None,
    knn: Sequence[Mapping[str, Any]] = (),
    higher_is_better: bool = True,
    smallest: int = 1,
) -> list[dict[str, Any]]:
    """One row per pretrained backbone found in ``results`` (evaluation records with ``backbone``, ``mode``,
    ``n_labels``, ``seed`` and ``metrics``; baselines' records are the references).

    For every use (:data:`USES`) run, the row's ``uses[use]`` lists the ``smallest`` lowest label counts with
    the seed-mean ``metric``, its seed spread and the factor row of :func:`best_method_factors` (``factor``,
    ``kind``, ``low``, ``high``, ``best_reference``, ...). ``cost``: :func:`pretraining_cost` of the backbone's
    directory; ``knn``/``knn_random``: the budgeted k-NN at the smallest budget; ``collapse``/``collapse_random``:
    the test embeddings' numbers (pretrained, random-init).
    """
    sign = 1.0 if higher_is_better else -1.0
    refs = [
        {"mode": r["mode"], "n": float(r["n_labels"]), "seed": r.get("seed"), "value": float(r["metrics"][metric])}
        for r in results
        if r["mode"] in REFERENCES and _finite(r["metrics"].get(metric))
    ]
    ref_modes = [m for m in REFERENCES if any(x["mode"] == m for x in refs)]
    backbones = sorted({str(r.get("backbone")) for r in results if r["mode"] in USES and r.get("backbone")})
    knn_index = _knn_by_backbone(knn)
    rows = []
    for backbone in backbones:
        own = [r for r in results if r.get("backbone") == backbone and r["mode"] in USES]
        row: dict[str, Any] = {"backbone": backbone, "uses": {}}
        for use in USES:
            runs = [
                {"mode": use, "n": float(r["n_labels"]), "seed": r.get("seed"), "value": float(r["metrics"][metric])}
                for r in own
                if r["mode"] == use and _finite(r["metrics"].get(metric))
            ]
            if not runs:
                continue
            counts = sorted({x["n"] for x in runs})[:smallest]
            factors = (
                {
                    f["n"]: f
                    for f in best_method_factors(runs + refs, ref_modes, methods=[use], higher_is_better=sign > 0)
                }
                if ref_modes
                else {}
            )
            cells = []
            for n in counts:
                values = [x["value"] for x in runs if x["n"] == n]
                cells.append(
                    {
                        "n": n,
                        "metric": float(np.mean(values)),
                        "metric_std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                        "n_seeds": len(values),
                        "factor": factors.get(n),
                    }
                )
            row["uses"][use] = cells
        directory = (pretrain_dirs or {}).get(backbone)
        row["cost"] = pretraining_cost(directory) if directory is not None else {}
        row["objective"] = row["cost"].get("objective") or next(
            (r.get("backbone_objective") for r in own if r.get("backbone_objective")), None
        )
        pre, rnd = knn_index.get((backbone, "pretrained")), knn_index.get((backbone, "random"))
        row["knn"], row["knn_random"] = _knn_at_smallest(pre), _knn_at_smallest(rnd)
        row["collapse"] = dict((pre or {}).get("collapse") or {})
        row["collapse_random"] = dict((rnd or {}).get("collapse") or {})
        rows.append(row)
    return rows


def _num(v: Any, digits: int = 3) -> str:
    return f"{float(v):.{digits}g}" if _finite(v) else "–"


def _factor_text(f: Mapping[str, Any] | None) -> str:
    if not f or not _finite(f.get("factor")):
        return "–"
    prefix = {"lower": "≥ ", "upper": "≤ ", "zero": ""}.get(f.get("kind", "value"), "")
    text = f"{prefix}{f['factor']:.2g}×"
    if _finite(f.get("low")) and _finite(f.get("high")):
        text += f" [{f['low']:.2g}–{f['high']:.2g}]"
    if f.get("best_reference"):
        text += f" vs {f['best_reference']}"
    if f.get("few_seeds"):
        text += " (few seeds)"
    return text


def table_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of the method table (the HTML report's and docs/benchmarks.md's)."""
    uses = [u for u in USES if any(u in r["uses"] for r in rows)]
    header = ["objective (backbone)"]
    for u in uses:
        header += [f"{u}: metric at fewest labels", f"{u}: factor [68 %]"]
    header += ["k-NN acc. (labels)", "steps × batch", "wall s", "eff. rank / uniformity (random)", "training"]
    body = []
    for r in rows:
        line = [f"{r.get('objective') or '?'} ({r['backbone']})"]
        for u in uses:
            cell = (r["uses"].get(u) or [None])[0]
            if cell is None:
                line += ["–", "–"]
                continue
            spread = f" ± {_num(cell['metric_std'], 2)}" if cell.get("metric_std") is not None else ""
            line += [f"{_num(cell['metric'])}{spread} (n={int(cell['n'])}, {cell['n_seeds']} seeds)",
                     _factor_text(cell.get("factor"))]  # fmt: skip
        k, kr = r.get("knn") or {}, r.get("knn_random") or {}
        line.append(
            f"{_num(k['knn_accuracy'])} vs {_num(kr.get('knn_accuracy'))} random (n={k['knn_n_labels']})" if k else "–"
        )
        c = r.get("cost") or {}
        line.append(f"{c['steps']} × {c['batch_size']}" if c.get("steps") else "–")
        wall = _num(c.get("wall_seconds"), 3)
        line.append(wall + (" (resumed)" if c.get("resumed_from") else ""))
        col, colr = r.get("collapse") or {}, r.get("collapse_random") or {}
        line.append(
            f"{_num(col.get('effective_rank'))} / {_num(col.get('uniformity'))} "
            f"({_num(colr.get('effective_rank'))} / {_num(colr.get('uniformity'))})"
            if col
            else "–"
        )
        diag = []
        if "alignment" in c:
            diag.append(f"align {_num(c['alignment'])}")
        if "teacher_entropy_over_log_K" in c:
            diag.append(f"H_teacher/lnK {_num(c['teacher_entropy_over_log_K'])}")
        if "prototypes_used" in c:
            diag.append(f"prototypes {_num(c['prototypes_used'])}")
        line.append(", ".join(diag) or "–")
        body.append(line)
    return header, body


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The method table as Markdown (for docs/benchmarks.md)."""
    header, body = table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in body]
    return "\n".join(lines) + "\n"
