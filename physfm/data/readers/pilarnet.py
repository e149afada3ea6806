"""Reader for the PILArNet-M HDF5 layout (``--format pilarnet``; also ``physfm generate lartpc``).

See :mod:`physfm.data.lartpc` for the layout. Each event becomes one ragged block of points; each
point keeps its eight values and gets the semantic type, cluster row, fragment, group (instance)
and interaction ids and PDG code (v2; -1 in v1) of its cluster. Nothing is dropped or reordered:
the points stay in file order, so the cluster table can be rebuilt from the ``cluster`` column
(clusters without points aside, which carry no point; the event records how many there were).

Checked for every event, with a :class:`~physfm.data.shards.DataError` naming file and event:
both datasets present with one entry per event, a point array of 8 values per point, a cluster
table of the file's width (5 or 6, told from the data or set with ``cluster_columns``), finite,
whole, non-negative point counts that add up to the event's points, whole ids, semantic types in
0..4, row 0 of type low-energy deposit, and agreement with ``<file>_points.npy`` when present.
Non-finite point values are caught by the converter (per event, so ``on_error: skip`` applies).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from physfm.data import lartpc
from physfm.data.readers.base import RawBlock, Reader
from physfm.data.shards import DataError

_N_POINT = len(lartpc.POINT_COLUMNS)


def _exact_limit(dtype: np.dtype) -> float:
    """Largest whole number up to which every integer is exact in ``dtype``."""
    return float(2 ** (np.finfo(dtype).nmant + 1))


class PILArNetReader(Reader):
    """PILArNet-M HDF5 -> ``lartpc`` shards.

    Options: ``cluster_columns`` (``auto`` default, or 5 for v1 / 6 for v2 files).
    """

    modality = lartpc.MODALITY
    file_glob = "**/*.h5"
    max_step = 2000  # ~0.5 GB of points per chunk at PILArNet-M's 4.4k points per event

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        width = self.options.get("cluster_columns", "auto")
        if width != "auto" and int(width) not in lartpc.CLUSTER_WIDTHS:
            raise ValueError(f"cluster_columns must be 'auto', 5 or 6, got {width!r}")
        self.cluster_columns: str | int = width if width == "auto" else int(width)
        self.options["cluster_columns"] = self.cluster_columns
        self._widths: dict[Path, int] = {}

    @property
    def particle_features(self) -> dict[str, str]:
        return dict(lartpc.POINT_FEATURES)

    @property
    def event_features(self) -> dict[str, str]:
        return dict(lartpc.EVENT_FEATURES)

    @property
    def classes(self) -> list[str]:
        return []  # the classes are per point (column ``semantic``), not per event

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _open(path: Path) -> h5py.File:
        try:
            return h5py.File(path, "r")
        except Exception as exc:
            raise DataError(f"{path}: cannot be read as HDF5 ({type(exc).__name__}: {exc})") from exc

    @staticmethod
    def _datasets(path: Path, f: h5py.File) -> tuple[h5py.Dataset, h5py.Dataset]:
        missing = [k for k in ("point", "cluster") if k not in f]
        if missing:
            raise DataError(f"{path}: not a PILArNet-M file; missing dataset(s) {', '.join(missing)}")
        point, cluster = f["point"], f["cluster"]
        for ds, kinds in ((point, "f"), (cluster, "fiu")):  # a table of integers would do as well
            base = h5py.check_vlen_dtype(ds.dtype)
            if ds.ndim != 1 or base is None or np.dtype(base).kind not in kinds:
                raise DataError(
                    f"{path}: dataset '{ds.name.lstrip('/')}' is {ds.dtype} of shape {ds.shape}; the PILArNet-M "
                    "layout has one variable-length float array per event"
                )
        if point.shape != cluster.shape:
            raise DataError(
                f"{path}: 'point' has {point.shape[0]} events but 'cluster' has {cluster.shape[0]}; "
                "the file is truncated or its tables do not belong together"
            )
        return point, cluster

    @staticmethod
    def _index(path: Path) -> np.ndarray | None:
        """The ``<file>_points.npy`` index (points per event), when the file has one."""
        p = path.with_name(path.stem + "_points.npy")
        if not p.is_file():
            return None
        try:
            return np.load(p)
        except Exception as exc:
            raise DataError(f"{p}: cannot be read as a numpy index ({type(exc).__name__}: {exc})") from exc

    def check(self, path: Path) -> int:
        path = Path(path)
        with self._open(path) as f:
            point, cluster = self._datasets(path, f)
            n = point.shape[0]
            index = self._index(path)
            if index is not None and index.shape != (n,):
                raise DataError(
                    f"{path}: its index {path.stem}_points.npy has shape {index.shape}, expected ({n},) "
                    "(one count per event); rebuild or remove the index"
                )
            self._widths[path] = self._width(path, point, cluster)
        return n

    def _width(self, path: Path, point: h5py.Dataset, cluster: h5py.Dataset) -> int:
        """Columns of the file's cluster table: the option, or the one width the data fit."""
        if self.cluster_columns != "auto":
            return int(self.cluster_columns)
        for i in range(point.shape[0]):
            p, c = point[i], cluster[i]
            fits = [w for w in lartpc.CLUSTER_WIDTHS if _fits(p, c, w)]
            if len(fits) == 1:
                return fits[0]
            if not fits:
                raise DataError(
                    f"{path}: event {i}: its cluster table ({c.size} values) fits neither the v1 (5 columns) "
                    f"nor the v2 (6 columns) layout with point counts adding up to its {p.size // _N_POINT} points"
                )
        raise DataError(
            f"{path}: cannot tell whether the cluster tables have 5 (v1) or 6 (v2) columns (every event fits "
            "both); set the reader option cluster_columns"
        )

    # ------------------------------------------------------------------ reading
    #: entry ranges of a file can be read on their own: ``physfm convert --workers N`` reads in parallel
    splittable = True

    def read_range(self, path: Path, start: int, stop: int) -> RawBlock:
        path = Path(path)
        index = self._index(path)
        with self._open(path) as f:
            point, cluster = self._datasets(path, f)
            width = self._widths.get(path) or self._width(path, point, cluster)
            return self._block(path, point[start:stop], cluster[start:stop], width, start, index)

    def read(self, path: Path, step: int) -> Iterator[RawBlock]:
        path = Path(path)
        index = self._index(path)
        with self._open(path) as f:
            point, cluster = self._datasets(path, f)
            width = self._widths.get(path) or self._width(path, point, cluster)
            n = point.shape[0]
            for a in range(0, n, step):
                b = min(a + step, n)
                yield self._block(path, point[a:b], cluster[a:b], width, a, index)

    def _block(
        self, path: Path, points: np.ndarray, clusters: np.ndarray, width: int, first: int, index: np.ndarray | None
    ) -> RawBlock:
        dtype = np.result_type(*[p.dtype for p in points], *[c.dtype for c in clusters]) if len(points) else np.float32
        rows, events = [], np.empty((len(points), len(lartpc.EVENT_FEATURES)), dtype=dtype)
        for i, (p, c) in enumerate(zip(points, clusters, strict=True)):
            entry = first + i
            rows.append(_event_rows(path, entry, p, c, width, dtype, None if index is None else index[entry]))
            table = c.reshape(-1, width)
            events[i] = (len(table), int((table[:, 0] == 0).sum()), width, rows[-1][:, 3].sum(dtype=np.float64))
        counts = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        particles = np.concatenate(rows) if rows else np.zeros((0, len(lartpc.POINT_FEATURES)), dtype)
        return RawBlock(offsets, particles, events, np.full(len(points), -1, dtype=np.int64), first)


def _fits(p: np.ndarray, c: np.ndarray, width: int) -> bool:
    if p.size % _N_POINT or c.size % width:
        return False
    counts = c.reshape(-1, width)[:, 0]
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(counts).all() and (counts >= 0).all() and (counts == np.round(counts)).all()
    return bool(whole) and int(counts.sum()) == p.size // _N_POINT


def _event_rows(
    path: Path, entry: int, p: np.ndarray, c: np.ndarray, width: int, dtype: np.dtype, indexed: Any
) -> np.ndarray:
    """``(N, 14)`` rows of one event: the point values, then its cluster's labels per point."""
    where = f"{path}: event {entry}"
    if p.size % _N_POINT:
        raise DataError(f"{where}: 'point' holds {p.size} values, not a multiple of {_N_POINT} (x, y, z, ...)")
    if c.size % width:
        raise DataError(f"{where}: 'cluster' holds {c.size} values, not a multiple of the file's {width} columns")
    n = p.size // _N_POINT
    table = c.reshape(-1, width).astype(np.float64)
    if not np.isfinite(table).all():
        raise DataError(f"{where}: the cluster table has NaN or inf")
    if (table != np.round(table)).any():
        bad = np.argwhere(table != np.round(table))[0]
        raise DataError(
            f"{where}: cluster row {bad[0]} column {lartpc.CLUSTER_COLUMNS[bad[1]]} is {float(table[tuple(bad)])!r}, "
            "not a whole number"
        )
    sizes = table[:, 0].astype(np.int64)
    if (sizes < 0).any():
        raise DataError(f"{where}: cluster row {int(np.flatnonzero(sizes < 0)[0])} has a negative point count")
    if sizes.sum() != n:
        raise DataError(
            f"{where}: the cluster point counts add up to {int(sizes.sum())} but the event has {n} points "
            "(truncated or inconsistent tables)"
        )
    if indexed is not None and int(indexed) != n:
        raise DataError(f"{where}: {path.stem}_points.npy says {int(indexed)} points, the file holds {n}")
    semantic = table[:, 4]
    if len(table) and ((semantic < 0) | (semantic >= len(lartpc.SEMANTIC_CLASSES))).any():
        row = int(np.flatnonzero((semantic < 0) | (semantic >= len(lartpc.SEMANTIC_CLASSES)))[0])
        raise DataError(f"{where}: cluster row {row} has semantic type {int(semantic[row])}, expected 0..4")
    if len(table) and semantic[0] != lartpc.LOW_ENERGY:
        raise DataError(
            f"{where}: cluster row 0 has semantic type {int(semantic[0])}; row 0 of the PILArNet-M layout is "
            "the low-energy-deposit cluster (type 4)"
        )
    pid = table[:, 5] if width == 6 else np.full(len(table), -1.0)
    labels = np.column_stack([semantic, np.arange(len(table)), table[:, 1], table[:, 2], table[:, 3], pid])
    limit = _exact_limit(dtype)
    if labels.size and np.abs(labels).max() > limit:
        raise DataError(f"{where}: an id exceeds {limit:.0f}, beyond what {dtype} holds exactly")
    out = np.empty((n, len(lartpc.POINT_FEATURES)), dtype=dtype)
    out[:, :_N_POINT] = p.reshape(n, _N_POINT)
    out[:, _N_POINT:] = np.repeat(labels, sizes, axis=0)
    return out
