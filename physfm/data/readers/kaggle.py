"""Reader for the IceCube Kaggle layout ("IceCube - Neutrinos in Deep Ice", or ``physfm generate icecube``).

A dataset root holds::

    train/batch_<N>.parquet   pulses indexed by event_id: sensor_id, time, charge, auxiliary
    train_meta.parquet        batch_id, event_id, first_pulse_index, last_pulse_index, azimuth, zenith
    sensor_geometry.csv       sensor_id, x, y, z

Pass the root directory (or batch files / a glob) as input. Each batch file is streamed in record
batches and its events are emitted as soon as they are complete, so memory stays bounded by
``step`` events plus one read buffer, whatever the file size. ``train_meta.parquet`` (132 M rows for
the full set) is never loaded whole: row groups are selected from their ``batch_id`` statistics
or, when a row group is too large for that (the Kaggle file is written as very few huge row
groups), the file is split once by streaming it into a per-batch cache on disk.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from physfm.data import icecube
from physfm.data.readers.base import INTEGER, NUMBER, RawBlock, Reader, check_column_types, whole_numbers
from physfm.data.shards import DataError

PULSE_COLUMNS = ("sensor_id", "time", "charge", "auxiliary")
META_COLUMNS = ("batch_id", "event_id", "first_pulse_index", "last_pulse_index", "azimuth", "zenith")
PULSE_TYPES = {"event_id": INTEGER, "sensor_id": INTEGER, "time": NUMBER, "charge": NUMBER, "auxiliary": NUMBER}
META_TYPES = {c: INTEGER for c in META_COLUMNS[:4]} | {"azimuth": NUMBER, "zenith": NUMBER}
_BATCH_RE = re.compile(r"batch_(\d+)\.parquet$")


def batch_id_of(path: Path) -> int:
    m = _BATCH_RE.search(path.name)
    if not m:
        raise DataError(f"{path}: not a Kaggle pulse file (expected a name like batch_<N>.parquet)")
    return int(m.group(1))


class MetaIndex:
    """Per-batch rows of ``train_meta.parquet`` with bounded memory.

    ``max_group_rows``: row groups up to this size are read directly (selected by their
    ``batch_id`` min/max); a larger row group makes the index split the file once into
    ``cache_dir`` (one binary file per batch, in a temporary directory by default).
    """

    def __init__(self, path: Path, max_group_rows: int = 4_000_000, cache_dir: Path | None = None) -> None:
        self.path = path
        try:
            self.pf = pq.ParquetFile(path)
        except Exception as exc:
            raise DataError(f"{path}: cannot be read as parquet ({type(exc).__name__}: {exc})") from exc
        names = self.pf.schema_arrow.names
        missing = [c for c in META_COLUMNS if c not in names]
        if missing:
            raise DataError(f"{path}: not a Kaggle train_meta file; missing columns {', '.join(missing)}")
        check_column_types(path, self.pf.schema_arrow, META_TYPES)
        #: numeric columns beyond the Kaggle ones (e.g. the simulator's energy), kept as truth
        self.extra = [
            f.name
            for f in self.pf.schema_arrow
            if f.name not in META_COLUMNS and not f.name.startswith("__") and _numeric(f.type)
        ]
        self.dtype = np.dtype(
            [("event_id", "i8"), ("first", "i8"), ("last", "i8"), ("azimuth", "f8"), ("zenith", "f8")]
            + [(f"x{i}", "f8") for i in range(len(self.extra))]
        )
        self._max_group_rows = max_group_rows
        self._cache_root = cache_dir
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._cache: Path | None = None
        self._ranges: list[tuple[int, int]] | None = None

    # -------------------------------------------------------------- selection by row group
    def _group_ranges(self) -> list[tuple[int, int]]:
        if self._ranges is None:
            col = self.pf.schema_arrow.names.index("batch_id")
            ranges = []
            for g in range(self.pf.num_row_groups):
                st = self.pf.metadata.row_group(g).column(col).statistics
                if st is not None and st.has_min_max:
                    ranges.append((int(st.min), int(st.max)))
                else:
                    b = self.pf.read_row_group(g, columns=["batch_id"]).column(0).to_numpy()
                    ranges.append((int(b.min()), int(b.max())) if len(b) else (1, 0))
            self._ranges = ranges
        return self._ranges

    def _direct(self) -> bool:
        md = self.pf.metadata
        return all(md.row_group(g).num_rows <= self._max_group_rows for g in range(md.num_row_groups))

    def _records(self, table: Any) -> np.ndarray:
        out = np.empty(table.num_rows, dtype=self.dtype)
        for name, src in zip(
            self.dtype.names,
            ("event_id", "first_pulse_index", "last_pulse_index", "azimuth", "zenith", *self.extra),
            strict=True,
        ):
            out[name] = table.column(src).to_numpy(zero_copy_only=False)
        return out

    # -------------------------------------------------------------- per-batch cache on disk
    def _build_cache(self) -> Path:
        if self._cache is not None:
            return self._cache
        if self._cache_root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="physfm_kaggle_meta_")
            root = Path(self._tmp.name)
        else:
            root = Path(self._cache_root) / "meta_by_batch"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
        from tqdm.auto import tqdm

        bar = tqdm(total=self.pf.metadata.num_rows, unit="row", desc=f"index {self.path.name}", leave=False)
        for rb in self.pf.iter_batches(batch_size=1 << 20, columns=list(META_COLUMNS) + self.extra):
            rec = self._records(rb)
            b = rb.column(rb.schema.get_field_index("batch_id")).to_numpy()
            order = np.argsort(b, kind="stable")
            b, rec = b[order], rec[order]
            cuts = np.flatnonzero(np.diff(b)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(b)], strict=True):
                with open(root / f"{int(b[lo])}.bin", "ab") as f:
                    rec[lo:hi].tofile(f)
            bar.update(rb.num_rows)
        bar.close()
        self._cache = root
        return root

    # -------------------------------------------------------------- public
    def rows(self, batch_id: int) -> np.ndarray:
        """The batch's meta rows as a structured array, ordered by first pulse index."""
        if self._direct():
            parts = []
            for g, (lo, hi) in enumerate(self._group_ranges()):
                if lo <= batch_id <= hi:
                    t = self.pf.read_row_group(g, columns=list(META_COLUMNS) + self.extra)
                    sel = t.column("batch_id").to_numpy() == batch_id
                    parts.append(self._records(t)[sel])
            rec = np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)
        else:
            f = self._build_cache() / f"{batch_id}.bin"
            rec = np.fromfile(f, dtype=self.dtype) if f.is_file() else np.empty(0, dtype=self.dtype)
        return rec[np.argsort(rec["first"], kind="stable")]

    def count(self, batch_id: int) -> int:
        if self._direct():
            n = 0
            for g, (lo, hi) in enumerate(self._group_ranges()):
                if lo <= batch_id <= hi:
                    n += int((self.pf.read_row_group(g, columns=["batch_id"]).column(0).to_numpy() == batch_id).sum())
            return n
        f = self._build_cache() / f"{batch_id}.bin"
        return f.stat().st_size // self.dtype.itemsize if f.is_file() else 0


def _numeric(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def read_sensor_geometry(path: Path) -> np.ndarray:
    """``(max_id + 1, 3)`` positions indexed by sensor_id; NaN rows for ids absent from the file."""
    try:
        g = icecube.read_csv_exact(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as CSV ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in icecube.GEOMETRY_COLUMNS if c not in g.columns]
    if missing:
        raise DataError(f"{path}: sensor geometry needs columns sensor_id,x,y,z; missing {', '.join(missing)}")
    sid = g["sensor_id"].to_numpy()
    if len(sid) == 0 or sid.min() < 0 or len(np.unique(sid)) != len(sid):
        raise DataError(f"{path}: sensor_id must be non-negative and unique")
    pos = np.full((int(sid.max()) + 1, 3), np.nan)
    pos[sid] = g[["x", "y", "z"]].to_numpy(dtype=np.float64)
    return pos


class KaggleReader(Reader):
    """IceCube Kaggle layout -> ``icecube`` shards (pulses as particles, truth as event features).

    Options: ``meta`` (train_meta.parquet; default next to ``train/``), ``geometry``
    (sensor_geometry.csv; default likewise), ``order`` (pulse order in the shards:
    ``nonaux_first`` default, ``time``, or ``file``; see :func:`physfm.data.icecube.pulse_order`),
    ``read_rows`` (pulse rows per parquet read, default 1M), ``meta_cache`` (directory for the
    per-batch meta split; default a temporary directory), ``max_group_rows`` (see :class:`MetaIndex`).
    """

    modality = icecube.MODALITY
    file_glob = "train/batch_*.parquet"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.order = str(self.options.get("order", "nonaux_first"))
        if self.order not in icecube.PULSE_ORDERS:
            raise ValueError(f"order must be one of {icecube.PULSE_ORDERS}, got '{self.order}'")
        self.options["order"] = self.order
        self._meta: dict[Path, MetaIndex] = {}
        self._geometry: dict[Path, np.ndarray] = {}
        self._geometry_path: Path | None = None
        self._extra: list[str] | None = None

    # -------------------------------------------------------------- schema
    @property
    def particle_features(self) -> dict[str, str]:
        return dict(icecube.PULSE_FEATURES)

    @property
    def event_features(self) -> dict[str, str]:
        return {**icecube.TRUTH_FEATURES, **{name: "" for name in self._extra or []}}

    @property
    def classes(self) -> list[str]:
        return []

    # -------------------------------------------------------------- side files
    def _side(self, path: Path, option: str, name: str) -> Path:
        if self.options.get(option):
            p = Path(self.options[option])
            if not p.is_file():
                raise DataError(f"{option} file {p} does not exist")
            return p
        for root in (path.parent.parent, path.parent):
            if (root / name).is_file():
                return root / name
        raise DataError(
            f"{path}: no {name} found in {path.parent.parent} or {path.parent}; "
            f"a Kaggle dataset root holds train/, train_meta.parquet and sensor_geometry.csv "
            f"(or pass the reader option '{option}')"
        )

    def _meta_for(self, path: Path) -> MetaIndex:
        p = self._side(path, "meta", "train_meta.parquet")
        if p not in self._meta:
            cache = self.options.get("meta_cache")
            idx = MetaIndex(p, int(self.options.get("max_group_rows", 4_000_000)), Path(cache) if cache else None)
            if self._extra is not None and idx.extra != self._extra:
                raise DataError(f"{p}: truth columns {idx.extra} differ from another meta file's {self._extra}")
            self._extra = idx.extra
            self._meta[p] = idx
        return self._meta[p]

    def _geometry_for(self, path: Path) -> np.ndarray:
        p = self._side(path, "geometry", "sensor_geometry.csv")
        if p not in self._geometry:
            pos = read_sensor_geometry(p)
            if self._geometry_path is not None:
                first = self._geometry[self._geometry_path]
                if first.shape != pos.shape or not np.array_equal(first, pos, equal_nan=True):
                    raise DataError(f"{p}: sensor geometry differs from {self._geometry_path}; convert them separately")
            else:
                self._geometry_path = p
            self._geometry[p] = pos
        return self._geometry[p]

    # -------------------------------------------------------------- Reader API
    def check(self, path: Path) -> int:
        b = batch_id_of(path)
        try:
            schema = pq.ParquetFile(path).schema_arrow
        except Exception as exc:
            raise DataError(f"{path}: cannot be read as parquet ({type(exc).__name__}: {exc})") from exc
        missing = [c for c in ("event_id", *PULSE_COLUMNS) if c not in schema.names]
        if missing:
            raise DataError(f"{path}: not a Kaggle pulse file; missing columns {', '.join(missing)}")
        check_column_types(path, schema, PULSE_TYPES)
        self._geometry_for(path)
        n = self._meta_for(path).count(b)
        if n == 0:
            raise DataError(f"{path}: batch {b} has no rows in {self._side(path, 'meta', 'train_meta.parquet')}")
        return n

    def read(self, path: Path, step: int) -> Iterator[RawBlock]:
        meta = self._meta_for(path).rows(batch_id_of(path))
        pos = self._geometry_for(path)
        pf = pq.ParquetFile(path)
        first, last = meta["first"], meta["last"]
        if len(meta) and (first[0] != 0 or np.any(first[1:] != last[:-1] + 1) or np.any(last < first - 1)):
            raise DataError(f"{path}: first/last_pulse_index in the meta file are not contiguous from 0")
        n_rows = int(last[-1]) + 1 if len(meta) else 0
        if pf.metadata.num_rows != n_rows:
            raise DataError(f"{path}: {pf.metadata.num_rows} pulse rows, but the meta file's indices cover {n_rows}")
        ends = last + 1  # exclusive end row of each event
        buf: list[np.ndarray] = [np.empty((0, 5))]  # column blocks: event_id, sensor_id, time, charge, auxiliary
        buf_start, buf_rows, e = 0, 0, 0  # first buffered row, rows buffered, next event to emit
        read_rows = int(self.options.get("read_rows", 1 << 20))
        batches = pf.iter_batches(batch_size=read_rows, columns=["event_id", *PULSE_COLUMNS])
        exhausted = False
        while e < len(meta):
            complete = int(np.searchsorted(ends, buf_start + buf_rows, side="right"))
            if complete - e >= step or (exhausted and complete > e):
                stop = min(e + step, complete)
                rows = int(ends[stop - 1]) - buf_start
                cols = np.concatenate(buf, axis=0) if len(buf) > 1 else buf[0]
                yield self._block(path, meta[e:stop], cols[:rows], pos, e)
                buf = [cols[rows:]]
                buf_start, buf_rows, e = buf_start + rows, buf_rows - rows, stop
                continue
            if exhausted:
                raise DataError(f"{path}: ended before event {int(meta['event_id'][e])}'s last pulse")
            rb = next(batches, None)
            if rb is None:
                exhausted = True
                continue
            block = np.empty((rb.num_rows, 5), dtype=np.float64)
            for j in range(5):
                block[:, j] = rb.column(j).to_numpy(zero_copy_only=False)
            for j, name in enumerate(("event_id", "sensor_id")):
                whole_numbers(path, name, rb.column(j).to_numpy(zero_copy_only=False), buf_start + buf_rows)
            buf.append(block)
            buf_rows += rb.num_rows

    def _block(self, path: Path, meta: np.ndarray, cols: np.ndarray, pos: np.ndarray, first_entry: int) -> RawBlock:
        counts = (meta["last"] - meta["first"] + 1).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if not np.array_equal(cols[:, 0], np.repeat(meta["event_id"].astype(np.float64), counts)):
            bad = int(np.flatnonzero(cols[:, 0] != np.repeat(meta["event_id"], counts))[0])
            raise DataError(
                f"{path}: pulse row {int(meta['first'][0]) + bad} has event_id {int(cols[bad, 0])}, but the meta "
                "file assigns it to another event (is train_meta.parquet from the same dataset?)"
            )
        sid = cols[:, 1].astype(np.int64)
        if len(sid) and (sid.min() < 0 or sid.max() >= len(pos) or np.isnan(pos[sid, 0]).any()):
            bad = sid[(sid < 0) | (sid >= len(pos))]
            bad = bad if len(bad) else sid[np.isnan(pos[np.clip(sid, 0, len(pos) - 1), 0])]
            raise DataError(f"{path}: sensor_id {int(bad[0])} is not in the sensor geometry file")
        particles = np.empty((len(sid), len(icecube.PULSE_FEATURES)), dtype=np.float64)
        particles[:, :4] = cols[:, 1:5]
        particles[:, 4:7] = pos[sid]
        perm = icecube.pulse_order(offsets, particles[:, 1], particles[:, 3], self.order)
        if perm is not None:
            particles = particles[perm]
        n_pulses, total = icecube.event_sums(offsets, particles[:, 2])
        az, zen = meta["azimuth"], meta["zenith"]
        events = np.column_stack(
            [meta["event_id"].astype(np.float64), az, zen, icecube.direction(az, zen), n_pulses, total]
            + [meta[f"x{i}"] for i in range(len(self._extra or []))]
        )
        return RawBlock(offsets, particles, events, np.full(len(meta), -1, dtype=np.int64), first_entry)

    def extras(self) -> dict[str, Path]:
        return {"geometry": self._geometry_path} if self._geometry_path is not None else {}
