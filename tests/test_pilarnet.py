"""The PILArNet-M reader: a hand-written file in the exact layout converts losslessly; bad input is refused."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from physfm.data import lartpc
from physfm.data.convert import convert
from physfm.data.loader import open_split
from physfm.data.shards import SPLITS, DataError


def _points(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = np.empty((n, 8), dtype=np.float32)
    p[:, :3] = rng.integers(0, 768, (n, 3))
    p[:, 3:5] = rng.uniform(0.01, 5.0, (n, 2))
    p[:, 5] = rng.uniform(0, 3000, n)
    p[:, 6] = rng.integers(100, 50_000, n)
    p[:, 7] = rng.uniform(0, 0.6, n)
    return p


#: Hand-made events: (cluster table rows of n_points, fragment, group, interaction, semantic[, pid]).
EVENTS_V1 = [
    np.array([[2, -1, -1, -1, 4], [3, 0, 0, 0, 1], [1, 1, 1, 0, 0]], dtype=np.float32),
    np.array([[0, -1, -1, -1, 4], [2, 0, 0, 1, 2], [4, 1, 0, 1, 3], [5, 2, 2, 1, 1]], dtype=np.float32),
    np.array([[6, -1, -1, -1, 4]], dtype=np.float32),
]
EVENTS_V2 = [
    np.array([[1, -1, -1, -1, 4, -1], [3, 0, 0, 0, 1, 13], [2, 1, 1, 0, 2, -11]], dtype=np.float32),
    np.array([[2, -1, -1, -1, 4, -1], [4, 7, 3, 2, 0, 22]], dtype=np.float32),
]


def _write(path: Path, tables: list[np.ndarray], index: bool = False) -> list[np.ndarray]:
    points = [_points(int(t[:, 0].sum()), seed=i) for i, t in enumerate(tables)]
    vlen = h5py.vlen_dtype(np.float32)
    with h5py.File(path, "w") as f:  # written by hand, not with physfm's writer
        f.create_dataset("point", shape=(len(tables),), dtype=vlen)
        f.create_dataset("cluster", shape=(len(tables),), dtype=vlen)
        for i, (p, t) in enumerate(zip(points, tables, strict=True)):
            f["point"][i] = p.ravel()
            f["cluster"][i] = t.ravel()
    if index:
        np.save(path.with_name(path.stem + "_points.npy"), np.array([len(p) for p in points]))
    return points


def _expected(points: list[np.ndarray], tables: list[np.ndarray]) -> list[np.ndarray]:
    """Per-event rows the reader must give: 8 point values, then semantic, cluster, ids, pid."""
    out = []
    for p, t in zip(points, tables, strict=True):
        rows = []
        for k, row in enumerate(t):
            pid = row[5] if len(row) == 6 else -1
            rows += [[row[4], k, row[1], row[2], row[3], pid]] * int(row[0])
        out.append(np.column_stack([p, np.array(rows, dtype=np.float32).reshape(-1, 6)]))
    return out


def _read_all(out: Path) -> tuple[list[np.ndarray], np.ndarray]:
    events, extra = [], []
    for split in SPLITS:
        s = open_split(out, split)
        if len(s) == 0:
            continue
        block = s.read()
        for i in range(len(block)):
            events.append(block.particles[block.offsets[i] : block.offsets[i + 1]])
        extra.append(block.events)
    return events, np.concatenate(extra)


@pytest.mark.parametrize("tables", [EVENTS_V1, EVENTS_V2], ids=["v1", "v2"])
def test_round_trip_keeps_every_point_label_and_id(tmp_path: Path, tables: list[np.ndarray]) -> None:
    src = tmp_path / "generic_v2_3_v1.h5"
    points = _write(src, tables, index=True)
    manifest, stats = convert("pilarnet", src, tmp_path / "out", shard_events=2, progress=False)
    assert manifest["modality"] == "lartpc"
    assert [f["name"] for f in manifest["particle_features"]] == list(lartpc.POINT_FEATURES)
    assert stats.events_written == len(tables) and not stats.skipped
    got, events = _read_all(tmp_path / "out")
    want = _expected(points, tables)
    key = lambda a: a.tobytes()  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, want))  # every point, value, label and id, in order
    assert all(g.dtype == np.float32 for g in got)
    width = tables[0].shape[1]
    n_clusters = sorted(len(t) for t in tables)
    assert sorted(events[:, 0].astype(int).tolist()) == n_clusters
    assert set(events[:, 2].astype(int).tolist()) == {width}
    assert int(events[:, 1].sum()) == sum(int((t[:, 0] == 0).sum()) for t in tables)
    # same file -> same data_version
    again, _ = convert("pilarnet", src, tmp_path / "again", shard_events=2, progress=False)
    assert again["data_version"] == manifest["data_version"]


def test_written_by_physfm_reads_back(tmp_path: Path) -> None:
    points = [_points(int(t[:, 0].sum()), seed=i) for i, t in enumerate(EVENTS_V1)]
    lartpc.write_pilarnet(tmp_path / "a.h5", points, EVENTS_V1, index=True)
    manifest, _ = convert("pilarnet", tmp_path, tmp_path / "out", progress=False)
    got, _ = _read_all(tmp_path / "out")
    assert sorted(g.tobytes() for g in got) == sorted(e.tobytes() for e in _expected(points, EVENTS_V1))


def _bad(tmp_path: Path, tables: list[np.ndarray], edit=None) -> Path:
    src = tmp_path / "bad.h5"
    _write(src, tables)
    if edit is not None:
        with h5py.File(src, "r+") as f:
            edit(f)
    return src


def _set(name: str, i: int, values: np.ndarray):
    def edit(f: h5py.File) -> None:
        f[name][i] = np.asarray(values, dtype=np.float32).ravel()

    return edit


BAD_CASES = {
    "counts do not add up": (
        lambda: [EVENTS_V1[0], np.array([[0, -1, -1, -1, 4], [3, 0, 0, 1, 1]], np.float32)],
        _set("point", 1, _points(2, 0)),
        "event 1: the cluster point counts add up to 3 but the event has 2",
    ),
    "point not a multiple of 8": (
        lambda: EVENTS_V1,
        _set("point", 2, np.zeros(6 * 8 - 3)),
        "event 2: 'point' holds 45 values",
    ),
    "NaN in the cluster table": (
        lambda: [EVENTS_V1[0], np.array([[0, -1, -1, -1, 4], [3, 0, 0, np.nan, 1]], np.float32)],
        None,
        "event 1: the cluster table has NaN",
    ),
    "fractional id": (
        lambda: [EVENTS_V1[0], np.array([[0, -1, -1, -1, 4], [2, 0.5, 0, 1, 1]], np.float32)],
        None,
        "event 1: cluster row 1 column fragment_id is 0.5",
    ),
    "unknown semantic type": (
        lambda: [EVENTS_V1[0], np.array([[0, -1, -1, -1, 4], [2, 0, 0, 1, 7]], np.float32)],
        None,
        "event 1: cluster row 1 has semantic type 7",
    ),
    "row 0 not low-energy": (
        lambda: [EVENTS_V1[0], np.array([[2, 0, 0, 1, 1], [0, -1, -1, -1, 4]], np.float32)],
        None,
        "event 1: cluster row 0 has semantic type 1",
    ),
    "negative count": (
        lambda: [EVENTS_V1[0], np.array([[-1, -1, -1, -1, 4], [3, 0, 0, 1, 1]], np.float32)],
        None,
        "negative point count",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_events_name_file_and_event(tmp_path: Path, case: str) -> None:
    tables, edit, message = BAD_CASES[case]
    src = _bad(tmp_path, tables(), edit)
    with pytest.raises(DataError) as err:
        convert("pilarnet", src, tmp_path / "out", progress=False)
    assert str(src) in str(err.value) and message in str(err.value), str(err.value)
    assert not (tmp_path / "out").exists()  # nothing that looks complete


def test_nan_point_is_caught_per_event(tmp_path: Path) -> None:
    p = _points(3, 0)
    p[1, 3] = np.nan
    src = _bad(tmp_path, [EVENTS_V1[2], np.array([[0, -1, -1, -1, 4], [3, 0, 0, 0, 1]], np.float32)])
    with h5py.File(src, "r+") as f:
        f["point"][1] = p.ravel()
    with pytest.raises(DataError, match=r"bad\.h5: entry 1: non-finite"):
        convert("pilarnet", src, tmp_path / "out", progress=False)
    manifest, _ = convert("pilarnet", src, tmp_path / "out", progress=False, on_error="skip")
    assert [(s["entry"], s["reason"][:10]) for s in manifest["skipped"]] == [(1, "non-finite")]


def test_truncated_and_wrong_files(tmp_path: Path) -> None:
    vlen = h5py.vlen_dtype(np.float32)
    src = tmp_path / "short.h5"
    _write(src, EVENTS_V1)
    with h5py.File(src, "r+") as f:  # the cluster table lost its last event
        del f["cluster"]
        ds = f.create_dataset("cluster", shape=(2,), dtype=vlen)
        for i in range(2):
            ds[i] = EVENTS_V1[i].ravel()
    with pytest.raises(DataError, match="'point' has 3 events but 'cluster' has 2"):
        convert("pilarnet", src, tmp_path / "out", progress=False)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("point", data=np.zeros((3, 8), np.float32))
    with pytest.raises(DataError, match="missing dataset"):
        convert("pilarnet", other, tmp_path / "out", progress=False)
    with h5py.File(other, "a") as f:
        f.create_dataset("cluster", data=np.zeros((3, 5), np.float32))
    with pytest.raises(DataError, match="one variable-length float array per event"):
        convert("pilarnet", other, tmp_path / "out", progress=False)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="cannot be read as HDF5"):
        convert("pilarnet", junk, tmp_path / "out", progress=False)


def test_index_must_agree(tmp_path: Path) -> None:
    src = tmp_path / "f.h5"
    _write(src, EVENTS_V1)
    np.save(tmp_path / "f_points.npy", np.array([6, 11, 5]))
    with pytest.raises(DataError, match="event 2: f_points.npy says 5 points, the file holds 6"):
        convert("pilarnet", src, tmp_path / "out", progress=False)
    np.save(tmp_path / "f_points.npy", np.array([6, 11]))
    with pytest.raises(DataError, match=r"has shape \(2,\), expected \(3,\)"):
        convert("pilarnet", src, tmp_path / "out", progress=False)


def test_cluster_width_option(tmp_path: Path) -> None:
    src = tmp_path / "f.h5"
    _write(src, EVENTS_V1)
    with pytest.raises(DataError, match="not a multiple of the file's 6 columns"):
        convert("pilarnet", src, tmp_path / "out", progress=False, reader_options={"cluster_columns": 6})
    with pytest.raises(ValueError, match="cluster_columns"):
        convert("pilarnet", src, tmp_path / "out", progress=False, reader_options={"cluster_columns": 7})


def test_parallel_conversion_is_identical(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    for k in range(2):
        _write(tmp_path / "raw" / f"f{k}.h5", [EVENTS_V1[(i + k) % 3] for i in range(5)])
    one, _ = convert("pilarnet", tmp_path / "raw", tmp_path / "one", progress=False)
    two, _ = convert("pilarnet", tmp_path / "raw", tmp_path / "two", progress=False, workers=2, step=2)
    assert sum(one["n_events"].values()) == 10
    assert one["data_version"] == two["data_version"]
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]


def test_integer_cluster_table_is_read_losslessly(tmp_path: Path) -> None:
    src = tmp_path / "int.h5"
    points = [_points(int(t[:, 0].sum()), seed=i) for i, t in enumerate(EVENTS_V1)]
    with h5py.File(src, "w") as f:
        f.create_dataset("point", shape=(3,), dtype=h5py.vlen_dtype(np.float32))
        f.create_dataset("cluster", shape=(3,), dtype=h5py.vlen_dtype(np.int32))
        for i, (p, t) in enumerate(zip(points, EVENTS_V1, strict=True)):
            f["point"][i], f["cluster"][i] = p.ravel(), t.astype(np.int32).ravel()
    convert("pilarnet", src, tmp_path / "out", progress=False)
    got, _ = _read_all(tmp_path / "out")
    assert all(g.dtype == np.float64 for g in got)  # float32 points and int32 ids, both exact in float64
    want = [w.astype(np.float64) for w in _expected(points, EVENTS_V1)]
    assert sorted(g.tobytes() for g in got) == sorted(w.tobytes() for w in want)
