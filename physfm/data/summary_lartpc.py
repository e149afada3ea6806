"""Validation numbers and plots of a ``lartpc`` dataset (called by :func:`physfm.data.summary.summarize`).

* class point shares, beside PILArNet-M's (:data:`PILARNET_POINT_COUNTS`);
* points per event;
* the voxel-energy spectrum of track points and its peak (the MIP peak);
* the visible energy of Michel clusters against the 52.8 MeV edge of the Michel spectrum;
* event displays coloured by class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from physfm.data import lartpc  # noqa: E402
from physfm.data.shards import EventBlock, feature_names  # noqa: E402
from physfm.io import atomic_path  # noqa: E402

#: Points per class in PILArNet-M's training set (PoLAr-MAE, appendix A, figure 8), in class order.
PILARNET_POINT_COUNTS = (1926651899, 2038240940, 34083197, 92015482, 1145363125)
MICHEL_EDGE_MEV = 52.83
COLOURS = ("tab:orange", "tab:blue", "tab:green", "tab:red", "tab:gray")
#: Events a lartpc summary reads at most (each holds thousands of points).
MAX_EVENTS = 2000


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def mip_peak(energy: np.ndarray, lo: float = 0.1, hi: float = 3.0, width: float = 0.05) -> float:
    """Centre of the most populated ``width``-MeV bin of voxel energies in ``[lo, hi)``."""
    hist, edges = np.histogram(energy, bins=np.arange(lo, hi + width / 2, width))
    return float(0.5 * (edges[hist.argmax()] + edges[hist.argmax() + 1])) if hist.sum() else float("nan")


def cluster_energies(block: EventBlock, names: list[str], semantic: int) -> np.ndarray:
    """Summed voxel energy of each cluster of class ``semantic`` (one value per event and cluster)."""
    p = block.particles
    event = np.repeat(np.arange(len(block)), np.diff(block.offsets))
    sel = p[:, names.index("semantic")] == semantic
    key = event[sel].astype(np.int64) * (1 << 32) + p[sel, names.index("cluster")].astype(np.int64)
    _, inv = np.unique(key, return_inverse=True)
    return np.bincount(inv, p[sel, names.index("voxel_energy")].astype(np.float64))


def lartpc_summary(block: EventBlock, manifest: dict[str, Any], out_dir: Path, n_displays: int = 4) -> dict[str, Any]:
    """Validation numbers of a ``lartpc`` sample (and its plots in ``out_dir``)."""
    names = feature_names(manifest, "particle")
    p = block.particles
    sem = p[:, names.index("semantic")].astype(np.int64)
    classes = lartpc.SEMANTIC_CLASSES
    counts = np.bincount(sem, minlength=len(classes))
    shares = counts / max(counts.sum(), 1)
    ref = np.array(PILARNET_POINT_COUNTS, dtype=np.float64) / sum(PILARNET_POINT_COUNTS)
    per_event = np.diff(block.offsets)
    energy = p[:, names.index("voxel_energy")].astype(np.float64)
    track_e = energy[sem == lartpc.TRACK]
    michel = cluster_energies(block, names, lartpc.MICHEL)
    out = {
        "point_share": {c: float(s) for c, s in zip(classes, shares, strict=True)},
        "point_share_pilarnet": {c: float(s) for c, s in zip(classes, ref, strict=True)},
        "points_per_event": {
            "mean": float(per_event.mean()) if len(per_event) else 0.0,
            "median": float(np.median(per_event)) if len(per_event) else 0.0,
            "p10": float(np.percentile(per_event, 10)) if len(per_event) else 0.0,
            "p90": float(np.percentile(per_event, 90)) if len(per_event) else 0.0,
        },
        "track_voxel_energy_peak_mev": mip_peak(track_e),
        "michel_clusters": int(len(michel)),
        "michel_energy_mev": {
            "median": float(np.median(michel)) if len(michel) else float("nan"),
            "p95": float(np.percentile(michel, 95)) if len(michel) else float("nan"),
            "max": float(michel.max()) if len(michel) else float("nan"),
            "fraction_above_edge": float((michel > MICHEL_EDGE_MEV).mean()) if len(michel) else float("nan"),
        },
        "plots": ["lartpc_classes.png", "lartpc_energy.png", "lartpc_events.png"],
    }
    _plot_classes(shares, ref, per_event, out_dir / "lartpc_classes.png")
    _plot_energy(energy, sem, michel, out_dir / "lartpc_energy.png")
    _plot_events(block, names, n_displays, out_dir / "lartpc_events.png")
    return out


def _plot_classes(shares: np.ndarray, ref: np.ndarray, per_event: np.ndarray, path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    x = np.arange(len(shares))
    a.bar(x - 0.2, 100 * shares, 0.4, label="this dataset")
    a.bar(x + 0.2, 100 * ref, 0.4, label="PILArNet-M")
    a.set_xticks(x, lartpc.SEMANTIC_CLASSES)
    a.set_ylabel("share of points [%]")
    a.legend(fontsize=8)
    b.hist(per_event, bins=40, histtype="step")
    b.set_xlabel("points per event")
    b.set_ylabel("events")
    _save(fig, path)


def _plot_energy(energy: np.ndarray, sem: np.ndarray, michel: np.ndarray, path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    bins = np.linspace(0, 3, 61)
    for c, name in enumerate(lartpc.SEMANTIC_CLASSES):
        sel = energy[sem == c]
        if len(sel):
            a.hist(np.clip(sel, 0, 3), bins=bins, histtype="step", density=True, label=name, color=COLOURS[c])
    a.set_xlabel("voxel energy [MeV]")
    a.set_ylabel("density")
    a.legend(fontsize=8)
    b.hist(michel, bins=np.linspace(0, 70, 36), histtype="step", color=COLOURS[lartpc.MICHEL])
    b.axvline(MICHEL_EDGE_MEV, ls="--", color="k", label="52.8 MeV edge")
    b.set_xlabel("Michel cluster energy [MeV]")
    b.set_ylabel("clusters")
    b.legend(fontsize=8)
    _save(fig, path)


def _plot_events(block: EventBlock, names: list[str], n: int, path: Path) -> None:
    n = min(n, len(block))
    fig, axes = plt.subplots(1, max(n, 1), figsize=(4 * max(n, 1), 4), squeeze=False)
    ix, iz = names.index("x"), names.index("z")
    isem = names.index("semantic")
    for k in range(n):
        ax = axes[0][k]
        ev = block.particles[block.offsets[k] : block.offsets[k + 1]]
        for c, name in enumerate(lartpc.SEMANTIC_CLASSES):
            sel = ev[:, isem] == c
            ax.scatter(ev[sel, ix], ev[sel, iz], s=1, c=COLOURS[c], label=name)
        ax.set_xlim(0, lartpc.N_VOXELS)
        ax.set_ylim(0, lartpc.N_VOXELS)
        ax.set_xlabel("x [voxel]")
        ax.set_ylabel("z [voxel]")
        ax.set_title(f"event {k} ({len(ev)} points), x-z view")
    if n:
        axes[0][0].legend(fontsize=7, markerscale=5)
    _save(fig, path)
