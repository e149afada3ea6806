"""Reader for Prometheus simulation in graphnet's parquet layout.

A directory (graphnet's ``merged/``) holds one table per folder, in numbered files::

    total/total_<k>.parquet         photon hits, indexed by event_no:
                                    sensor_id, sensor_pos_x/y/z, sensor_string_id, t
    mc_truth/mc_truth_<k>.parquet   one row per event_no: injection_zenith, injection_azimuth,
                                    injection_energy, ... (every numeric column is kept)

Each photon hit becomes one pulse with charge 1 pe and ``auxiliary = 0`` (Prometheus records
photons, not digitised pulses). Events are emitted in the order of the truth file. The detector
geometry is not a separate file in this layout: the reader collects each sensor's position from
the hits (checking that a sensor never moves) and stores that table once per dataset.
A pulse file is read whole; graphnet writes them in small chunks.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from physfm.data import icecube
from physfm.data.readers.base import INTEGER, NUMBER, RawBlock, Reader, check_column_types, whole_numbers
from physfm.data.shards import DataError

HIT_COLUMNS = ("sensor_id", "sensor_pos_x", "sensor_pos_y", "sensor_pos_z", "sensor_string_id", "t")
#: Prometheus truth columns mapped onto the IceCube truth names.
TRUTH_MAP = {"azimuth": "injection_azimuth", "zenith": "injection_zenith"}
ENERGY = "injection_energy"
ID_COLUMNS = ("sensor_id", "sensor_string_id", "event_no")
HIT_TYPES = {c: INTEGER if c in ID_COLUMNS else NUMBER for c in (*HIT_COLUMNS, "event_no")}
TRUTH_TYPES = {**{c: NUMBER for c in (*TRUTH_MAP.values(), ENERGY)}, "event_no": INTEGER}


class PrometheusReader(Reader):
    """Prometheus/graphnet parquet -> ``icecube`` shards.

    Options: ``pulsemap`` (table of hits, default ``total``), ``truth`` (default ``mc_truth``),
    ``order`` (``nonaux_first`` default, ``time``, ``file``; all hits are non-auxiliary, so the
    first two both sort by time). Truth features: the IceCube ones (``azimuth``/``zenith`` from
    ``injection_azimuth``/``injection_zenith``, their direction vector, pulse count and total
    charge), then ``energy`` (``injection_energy``) and every other numeric truth column by name.
    """

    modality = icecube.MODALITY

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.pulsemap = str(self.options.get("pulsemap", "total"))
        self.truth = str(self.options.get("truth", "mc_truth"))
        self.order = str(self.options.get("order", "nonaux_first"))
        if self.order not in icecube.PULSE_ORDERS:
            raise ValueError(f"order must be one of {icecube.PULSE_ORDERS}, got '{self.order}'")
        self.options.update(pulsemap=self.pulsemap, truth=self.truth, order=self.order)
        self.file_glob = f"{self.pulsemap}/{self.pulsemap}_*.parquet"  # type: ignore[misc]
        self._truth_columns: list[str] | None = None
        self._sensors: dict[int, tuple[float, float, float, int]] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def particle_features(self) -> dict[str, str]:
        return dict(icecube.PULSE_FEATURES)

    @property
    def event_features(self) -> dict[str, str]:
        extra = [c for c in self._truth_columns or [] if c not in (*TRUTH_MAP.values(), ENERGY)]
        return {**icecube.TRUTH_FEATURES, "energy": "GeV", **{c: _unit(c) for c in extra}}

    @property
    def classes(self) -> list[str]:
        return []

    def _truth_path(self, path: Path) -> Path:
        m = re.fullmatch(rf"{re.escape(self.pulsemap)}_(\w+)\.parquet", path.name)
        if not m:
            raise DataError(f"{path}: expected a pulse file named {self.pulsemap}_<k>.parquet")
        p = path.parent.parent / self.truth / f"{self.truth}_{m.group(1)}.parquet"
        if not p.is_file():
            raise DataError(f"{path}: its truth file {p} is missing (graphnet layout: <dir>/{self.truth}/)")
        return p

    def check(self, path: Path) -> int:
        tpath = self._truth_path(path)
        try:
            hit_schema = pq.ParquetFile(path).schema_arrow
            tf = pq.ParquetFile(tpath)
        except Exception as exc:
            raise DataError(f"{path}: cannot be read as parquet ({type(exc).__name__}: {exc})") from exc
        missing = [c for c in (*HIT_COLUMNS, "event_no") if c not in hit_schema.names]
        if missing:
            raise DataError(f"{path}: not a Prometheus pulse table; missing columns {', '.join(missing)}")
        check_column_types(path, hit_schema, HIT_TYPES)
        import pyarrow as pa

        cols = [
            f.name
            for f in tf.schema_arrow
            if f.name != "event_no"
            and not f.name.startswith("__")
            and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type))
        ]
        need = [*TRUTH_MAP.values(), ENERGY, "event_no"]
        missing = [c for c in need if c not in tf.schema_arrow.names]
        if missing:
            raise DataError(f"{tpath}: not a Prometheus truth table; missing columns {', '.join(missing)}")
        check_column_types(tpath, tf.schema_arrow, TRUTH_TYPES)
        if self._truth_columns is not None and cols != self._truth_columns:
            raise DataError(f"{tpath}: truth columns differ from those of the first file ({self._truth_columns})")
        self._truth_columns = cols
        return tf.metadata.num_rows

    def read(self, path: Path, step: int) -> Iterator[RawBlock]:
        tt = pq.read_table(self._truth_path(path))
        truth = {name: tt.column(name).to_numpy(zero_copy_only=False) for name in tt.column_names}
        ht = pq.read_table(path, columns=[*HIT_COLUMNS, "event_no"])
        hits = {name: ht.column(name).to_numpy(zero_copy_only=False) for name in ht.column_names}
        whole_numbers(self._truth_path(path), "event_no", truth["event_no"])
        for name in ID_COLUMNS:
            whole_numbers(path, name, hits[name])
        ev_ids = truth["event_no"].astype(np.int64)
        if len(np.unique(ev_ids)) != len(ev_ids):
            raise DataError(f"{path}: the truth file lists an event_no twice")
        order = np.argsort(ev_ids, kind="stable")
        hit_ev = hits["event_no"].astype(np.int64)
        k = np.clip(np.searchsorted(ev_ids[order], hit_ev), 0, len(ev_ids) - 1)
        unknown = ev_ids[order][k] != hit_ev
        if unknown.any():
            raise DataError(f"{path}: hits of event_no {hit_ev[unknown][0]}, which its truth file does not list")
        ev_index = order[k]  # position of each hit's event in the truth file
        rows = np.argsort(ev_index, kind="stable")  # group by event (truth order), keep hit order
        counts = np.bincount(ev_index, minlength=len(ev_ids))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        sid = hits["sensor_id"].astype(np.int64)[rows]
        xyz = np.column_stack([hits[f"sensor_pos_{c}"] for c in "xyz"]).astype(np.float64)[rows]
        self._collect_geometry(path, sid, xyz, hits["sensor_string_id"].astype(np.int64)[rows])
        particles = np.empty((len(sid), len(icecube.PULSE_FEATURES)), dtype=np.float64)
        particles[:, 0] = sid
        particles[:, 1] = hits["t"].astype(np.float64)[rows]
        particles[:, 2] = 1.0
        particles[:, 3] = 0.0
        particles[:, 4:7] = xyz
        perm = icecube.pulse_order(offsets, particles[:, 1], particles[:, 3], self.order)
        if perm is not None:
            particles = particles[perm]
        n_pulses, total = icecube.event_sums(offsets, particles[:, 2])
        az, zen = truth[TRUTH_MAP["azimuth"]].astype(np.float64), truth[TRUTH_MAP["zenith"]].astype(np.float64)
        extra = [c for c in self._truth_columns or [] if c not in (*TRUTH_MAP.values(), ENERGY)]
        events = np.column_stack(
            [
                ev_ids.astype(np.float64),
                az,
                zen,
                icecube.direction(az, zen),
                n_pulses,
                total,
                truth[ENERGY].astype(np.float64),
            ]
            + [truth[c].astype(np.float64) for c in extra]
        )
        label = np.full(len(ev_ids), -1, dtype=np.int64)
        for a in range(0, len(ev_ids), step):
            b = min(a + step, len(ev_ids))
            o = offsets[a : b + 1]
            yield RawBlock(o - o[0], particles[o[0] : o[-1]], events[a:b], label[a:b], a)

    def _collect_geometry(self, path: Path, sid: np.ndarray, xyz: np.ndarray, string: np.ndarray) -> None:
        u, first = np.unique(sid, return_index=True)
        ref = xyz[first][np.searchsorted(u, sid)]
        if not np.array_equal(ref, xyz):
            bad = int(sid[np.flatnonzero((ref != xyz).any(axis=1))[0]])
            raise DataError(f"{path}: sensor {bad} appears at two different positions")
        for s, i in zip(u.tolist(), first.tolist(), strict=True):
            entry = (*xyz[i].tolist(), int(string[i]))
            if self._sensors.setdefault(s, entry) != entry:
                where = f"{entry[:3]} here but at {self._sensors[s][:3]} in another file"
                raise DataError(f"{path}: sensor {s} is at {where}")

    def extras(self) -> dict[str, Path]:
        if not self._sensors:
            return {}
        self._tmp = tempfile.TemporaryDirectory(prefix="physfm_prometheus_")
        p = Path(self._tmp.name) / "geometry.csv"
        ids = sorted(self._sensors)
        with open(p, "w") as f:
            f.write("sensor_id,x,y,z,string\n")
            for s in ids:
                x, y, z, st = self._sensors[s]
                f.write(f"{s},{x!r},{y!r},{z!r},{st}\n")
        return {"geometry": p}


def _unit(column: str) -> str:
    """Unit of a Prometheus truth column, from its name (Prometheus/LeptonInjector conventions)."""
    if "position" in column:
        return "m"
    if "energy" in column:
        return "GeV"
    if any(k in column for k in ("theta", "phi", "zenith", "azimuth")):
        return "rad"
    return ""
