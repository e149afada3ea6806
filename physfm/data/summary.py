"""Data summary: counts per split and class, and one histogram per feature compared across classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from physfm.data.dataset import Dataset, open_dataset  # noqa: E402
from physfm.data.loader import open_split  # noqa: E402
from physfm.data.shards import feature_names  # noqa: E402
from physfm.io import atomic_path, write_json  # noqa: E402


@dataclass
class SummaryConfig:
    """Settings of ``physfm summarize`` (config section ``data.summary``)."""

    split: str = "train"
    max_events: int = 20000  # events sampled for the plots


def _hist_grid(
    values: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    classes: list[str],
    title: str,
    path: Path,
    units: dict[str, str] | None = None,
    log: bool = True,
) -> None:
    n = len(names)
    ncols = 4
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    for j, name in enumerate(names):
        ax = axes[j // ncols][j % ncols]
        col = values[:, j].astype(np.float64)
        lo, hi = np.nanpercentile(col, [0.5, 99.5]) if len(col) else (0.0, 1.0)
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 41)
        for c, cname in enumerate(classes):
            sel = col[labels == c]
            if len(sel):
                ax.hist(np.clip(sel, lo, hi), bins=bins, histtype="step", density=True, label=cname)
        if not classes:
            ax.hist(np.clip(col, lo, hi), bins=bins, histtype="step", density=True)
        unit = (units or {}).get(name, "")
        ax.set_xlabel(f"{name} [{unit.split(' ')[0]}]" if unit and unit.split(" ")[0] not in ("1", "bool") else name)
        ax.set_ylabel("density")
        if log:
            ax.set_yscale("log")
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    if classes:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def summarize(
    data_dir: Dataset | str | Path, out_dir: str | Path, split: str = "train", max_events: int = 20_000
) -> dict[str, Any]:
    """Write ``summary.json`` and per-feature plots (particle- and event-level) to ``out_dir``.

    The dataset is verified against its manifest first; a mismatch raises ``DataError``.
    """
    ds = open_dataset(data_dir, verify=True)
    manifest = ds.manifest
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = open_split(ds, split)
    n = min(len(s), max_events)
    block = s.read(np.arange(n))
    classes = manifest["classes"]
    counts = np.diff(block.offsets)
    per_row_label = np.repeat(block.label, counts)
    pnames, enames = feature_names(manifest, "particle"), feature_names(manifest, "event")
    punits = {f["name"]: f["unit"] for f in manifest["particle_features"]}
    eunits = {f["name"]: f["unit"] for f in manifest["event_features"]}
    _hist_grid(
        block.particles,
        per_row_label,
        pnames,
        classes,
        f"particle features ({split}, {n} events)",
        out_dir / "particle_features.png",
        units=punits,
    )
    _hist_grid(
        np.column_stack([block.events, counts]),
        block.label,
        [*enames, "n_particles"],
        classes,
        f"event features ({split}, {n} events)",
        out_dir / "event_features.png",
        units=eunits,
        log=False,
    )
    summary = {
        "data_version": manifest["data_version"],
        "modality": manifest["modality"],
        "n_events": manifest["n_events"],
        "classes": classes,
        "class_counts_sampled": {c: int((block.label == i).sum()) for i, c in enumerate(classes)},
        "sampled_split": split,
        "sampled_events": int(n),
        "mean_particles": float(counts.mean()) if n else 0.0,
        "max_particles": int(counts.max()) if n else 0,
        "n_skipped": len(manifest.get("skipped", [])),
        "plots": ["particle_features.png", "event_features.png"],
    }
    write_json(out_dir / "summary.json", summary)
    return summary
