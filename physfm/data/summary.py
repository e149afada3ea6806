"""Data summary: counts per split and class, and one histogram per feature compared across classes.

The events are read in blocks (:meth:`physfm.data.loader.Split.blocks`) and counted into fixed
histograms, so memory does not grow with ``max_events``. dask would bring nothing here: one
sequential pass of numpy histograms over HDF5 blocks is disk-bound on one core, and a data set too
big for one job is converted and summarised per group by Snakemake jobs, not by a second scheduler.
"""

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


#: ``max_len`` values of the truncation table: what keeping only the first L particles of each event drops.
TRUNCATION_LENGTHS = (32, 48, 64, 96, 128)
#: Events whose 0.5 and 99.5 percentiles fix each histogram's range (the rest are then only counted).
RANGE_EVENTS = 1000
BINS = 40


class _Histograms:
    """Per-feature, per-class histograms filled block by block (memory flat in the number of events)."""

    def __init__(self, sample: np.ndarray, n_classes: int) -> None:
        self.edges = []
        for col in sample.T.astype(np.float64):
            lo, hi = np.nanpercentile(col, [0.5, 99.5]) if len(col) else (0.0, 1.0)
            if not hi > lo:
                lo, hi = lo - 0.5, hi + 0.5
            self.edges.append(np.linspace(lo, hi, BINS + 1))
        self.counts = np.zeros((len(self.edges), max(n_classes, 1), BINS), dtype=np.int64)

    def add(self, values: np.ndarray, labels: np.ndarray) -> None:
        for j, edges in enumerate(self.edges):
            col = np.clip(values[:, j].astype(np.float64), edges[0], edges[-1])
            for c in range(self.counts.shape[1]):
                sel = col if self.counts.shape[1] == 1 else col[labels == c]
                self.counts[j, c] += np.histogram(sel, bins=edges)[0]

    def plot(
        self,
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
            edges = self.edges[j]
            for c, cname in enumerate(classes or [None]):
                counts = self.counts[j, c]
                if counts.sum():
                    ax.stairs(counts / (counts.sum() * np.diff(edges)), edges, label=cname)
            unit = (units or {}).get(name, "")
            shown = unit.split(" ")[0] if unit else ""
            ax.set_xlabel(f"{name} [{shown}]" if shown and shown not in ("1", "bool") else name)
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


class Truncation:
    """What keeping only the first ``L`` particles of each event (the loader's ``max_len``) drops, per class and
    for each ``L`` of ``lengths``: the fraction of events cut, of particles dropped and, where the shards have
    ``part_px`` and ``part_py`` (jets, stored pT-descending), of the events' scalar-sum pT dropped. Filled block
    by block (memory flat in the number of events)."""

    def __init__(self, lengths: tuple[int, ...], n_classes: int, pnames: list[str]) -> None:
        self.lengths = lengths
        self.pt_cols = (
            (pnames.index("part_px"), pnames.index("part_py")) if {"part_px", "part_py"} <= set(pnames) else None
        )
        self.n_classes = n_classes
        shape = (max(n_classes, 1) + 1, len(lengths))  # one row per class, and one for unlabelled events
        self.events, self.cut = np.zeros(shape[0]), np.zeros(shape)
        self.particles, self.dropped = np.zeros(shape[0]), np.zeros(shape)
        self.pt, self.pt_dropped = np.zeros(shape[0]), np.zeros(shape)

    def add(self, particles: np.ndarray, counts: np.ndarray, labels: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        known = (labels >= 0) & (labels < self.n_classes)
        cls = np.where(known, labels, self.events.shape[0] - 1) if self.n_classes > 1 else np.zeros(len(counts), int)
        event = np.repeat(np.arange(len(counts)), counts)
        rank = np.arange(len(event)) - np.repeat(np.cumsum(counts) - counts, counts)
        pt = np.hypot(*(particles[:, c].astype(np.float64) for c in self.pt_cols)) if self.pt_cols else None
        k = self.events.shape[0]
        self.events += np.bincount(cls, minlength=k)
        self.particles += np.bincount(cls, weights=counts, minlength=k)
        if pt is not None:
            self.pt += np.bincount(cls[event], weights=pt, minlength=k)
        for j, length in enumerate(self.lengths):
            self.cut[:, j] += np.bincount(cls, weights=counts > length, minlength=k)
            self.dropped[:, j] += np.bincount(cls, weights=np.maximum(counts - length, 0), minlength=k)
            if pt is not None:
                beyond = rank >= length
                self.pt_dropped[:, j] += np.bincount(cls[event[beyond]], weights=pt[beyond], minlength=k)

    def table(self, classes: list[str]) -> dict[str, Any]:
        def fractions(num: np.ndarray, den: np.ndarray) -> list[float]:
            return [round(float(v), 4) for v in num / max(float(den), 1e-300)]

        groups = {c: i for i, c in enumerate(classes)} if len(classes) > 1 else {}
        out: dict[str, Any] = {"lengths": list(self.lengths), "by": {}}
        for name, sel in [("all", slice(None)), *((c, slice(i, i + 1)) for c, i in groups.items())]:
            row = {
                "events_cut": fractions(self.cut[sel].sum(0), self.events[sel].sum()),
                "particles_dropped": fractions(self.dropped[sel].sum(0), self.particles[sel].sum()),
            }
            if self.pt_cols:
                row["pt_dropped"] = fractions(self.pt_dropped[sel].sum(0), self.pt[sel].sum())
            out["by"][name] = row
        return out


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
    if manifest["modality"] == "lartpc":  # thousands of points per event
        from physfm.data.summary_lartpc import MAX_EVENTS

        n = min(n, MAX_EVENTS)
    classes = manifest["classes"]
    pnames, enames = feature_names(manifest, "particle"), feature_names(manifest, "event")
    punits = {f["name"]: f["unit"] for f in manifest["particle_features"]}
    eunits = {f["name"]: f["unit"] for f in manifest["event_features"]}
    # ranges from the first events, then every block counted into them: memory flat in max_events
    p_sample, e_sample = np.zeros((0, len(pnames))), np.zeros((0, len(enames) + 1))
    if n:
        first = s.read(np.arange(min(n, RANGE_EVENTS)))
        p_sample, e_sample = first.particles, np.column_stack([first.events, np.diff(first.offsets)])
    particles, events = _Histograms(p_sample, len(classes)), _Histograms(e_sample, len(classes))
    class_counts = np.zeros(max(len(classes), 1), dtype=np.int64)
    truncation = Truncation(TRUNCATION_LENGTHS, len(classes), pnames)
    n_rows, max_particles = 0, 0
    for block in s.blocks(stop=n):
        counts = np.diff(block.offsets)
        truncation.add(block.particles, counts, block.label)
        particles.add(block.particles, np.repeat(block.label, counts))
        events.add(np.column_stack([block.events, counts]), block.label)
        class_counts += np.bincount(block.label[block.label >= 0], minlength=len(class_counts))[: len(class_counts)]
        n_rows += int(counts.sum())
        max_particles = max(max_particles, int(counts.max()) if len(counts) else 0)
    particles.plot(
        pnames, classes, f"particle features ({split}, {n} events)", out_dir / "particle_features.png", units=punits
    )
    events.plot(
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
        "class_counts_sampled": {c: int(class_counts[i]) for i, c in enumerate(classes)},
        "sampled_split": split,
        "sampled_events": int(n),
        "mean_particles": n_rows / n if n else 0.0,
        "max_particles": max_particles,
        "n_skipped": len(manifest.get("skipped", [])),
        "truncation": truncation.table(classes),
        "plots": ["particle_features.png", "event_features.png"],
    }
    if manifest["modality"] == "lartpc":
        from physfm.data.summary_lartpc import lartpc_summary

        summary["lartpc"] = lartpc_summary(s.read(np.arange(n)), manifest, out_dir)  # n <= its MAX_EVENTS
        summary["plots"] += summary["lartpc"].pop("plots")
    write_json(out_dir / "summary.json", summary)
    return summary
