"""Raw events → sharded HDF5 with a manifest and a content-derived ``data_version``.

Reads each source file in chunks (never the whole input in memory), checks every event, assigns
it to train/val/test from a hash of its content, and writes shards atomically into a temporary
directory that replaces the output only once the manifest is complete.

The per-chunk work (read, checks, event keys, splits, grouping by split) runs in a background
thread, or in worker processes (``workers > 1``, readers that read entry ranges); the
order-dependent work (duplicate check, shard writing) runs here, on chunks in input order.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import glob
import itertools
import math
import mmap
import multiprocessing
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from physfm.data.readers import READERS, RawBlock, Reader
from physfm.data.shards import (
    SPLITS,
    DataError,
    EventBlock,
    ShardWriter,
    assign_splits,
    build_manifest,
    event_keys,
    write_manifest,
)
from physfm.io import atomic_dir, sha256_file

ON_ERROR = ("fail", "skip")
_ENTRY_MASK = (1 << 40) - 1


def resolve_inputs(inputs: str | Path | list[str | Path], file_glob: str = "*") -> list[Path]:
    """Expand a file, a directory, a glob, or a list of them into a sorted, de-duplicated list."""
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    found: set[Path] = set()
    for item in items:
        p = Path(item)
        if p.is_dir():
            found.update(q for q in p.glob(file_glob) if q.is_file())
        elif p.is_file():
            found.add(p)
        else:
            found.update(Path(q) for q in glob.glob(str(item), recursive=True) if Path(q).is_file())
    if not found:
        raise DataError(
            f"no input files match {', '.join(map(str, items))} "
            f"(expected files matching '{file_glob}'; check the path or glob in config `data.input`)"
        )
    return sorted(found, key=lambda q: str(q))


@dataclass
class ConvertConfig:
    """Settings of ``physfm convert`` (config section ``data.convert``)."""

    shard_events: int = 2000  # events per shard
    split: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    labels: list[str] = field(default_factory=lambda: ["label_QCD", "label_Tbqq", "label_Wqq", "label_Zqq"])
    on_error: str = "fail"  # fail: stop at a bad file/event; skip: leave it out, listed in the manifest
    tree: str | None = None  # JetClass ROOT tree name (None: "tree")
    groups: int = 1  # jobs the input files are read in (scatter), then one gather; same output for any
    event_branches: list[str] = field(default_factory=list)  # JetClass: extra per-jet branches kept (dijet samples)


@dataclass
class ConvertStats:
    events_in: int = 0
    events_written: int = 0
    seconds: float = 0.0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def _prefetch(chunks: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Read and prepare the next chunks in a background thread while this one is written.

    uproot's decompression and numpy release the GIL, so reading overlaps writing.
    Exceptions from the reader are re-raised here, in order.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in chunks:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", None))
        except BaseException as exc:  # handed to the consumer
            q.put(("error", exc))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


@dataclass
class _Chunk:
    """One chunk of a source file after the per-chunk work, ready for the in-order part."""

    file_no: int
    n_in: int  # events read
    block: EventBlock  # kept events grouped by split (train, then val, then test), each in input order
    split_counts: list[int]  # events of each split in ``block``
    entries: np.ndarray  # (n,) int64: source-file entry of each event of ``block``
    skipped: list[dict[str, Any]]  # bad events left out (on_error='skip'), by entry
    n_filtered: int  # events without any of the selected classes

    def arrays(self) -> list[np.ndarray]:
        b = self.block
        return [b.offsets, b.particles, b.events, b.label, b.event_key, self.entries]

    def with_arrays(self, arrays: list[np.ndarray]) -> _Chunk:
        offsets, particles, events, label, event_key, entries = arrays
        return replace(self, block=EventBlock(offsets, particles, events, label, event_key), entries=entries)


class _FileArena:
    """Hands out arrays that live in a file mapped into memory (in the output's temporary directory).

    A worker process builds a chunk's arrays right there and the parent maps the same file: no
    copy through the process pool's pipe (pickling tens of MB through it took longer than
    preparing the chunk), and no intermediate buffer.
    """

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, suffix=".chunk")
        self.fd, self.path, self.size = fd, Path(name), 0
        self.layout: list[tuple[int, str, tuple[int, ...]]] = []  # (byte offset, dtype, shape)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dt, shape = np.dtype(dtype), tuple(int(n) for n in shape)
        nbytes = dt.itemsize * math.prod(shape)
        self.layout.append((self.size, dt.str, shape))
        if nbytes == 0:
            return np.empty(shape, dtype=dt)
        offset, page = self.size, mmap.ALLOCATIONGRANULARITY
        self.size += -(-nbytes // page) * page
        if hasattr(os, "posix_fallocate"):  # a full disk raises OSError here, not SIGBUS on writing
            os.posix_fallocate(self.fd, offset, self.size - offset)
        else:
            os.ftruncate(self.fd, self.size)
        return np.frombuffer(mmap.mmap(self.fd, nbytes, offset=offset), dtype=dt).reshape(shape)

    def close(self, keep: bool) -> None:
        os.close(self.fd)
        if not keep:
            self.path.unlink(missing_ok=True)


@dataclass
class _Packed:
    """A :class:`_Chunk` on its way back from a worker process, its arrays in a :class:`_FileArena`."""

    chunk: _Chunk  # with empty arrays
    path: Path
    layout: list[tuple[int, str, tuple[int, ...]]]  # of chunk.arrays(), in order

    @classmethod
    def build(cls, make: Callable[[Callable[..., np.ndarray]], _Chunk], directory: Path) -> _Packed:
        """Run ``make(empty)``, which allocates the chunk's arrays with ``empty``, in a new arena."""
        arena = _FileArena(directory)
        try:
            chunk = make(arena.empty)
            arrays = chunk.arrays()
            assert [(a.dtype.str, a.shape) for a in arrays] == [(d, s) for _, d, s in arena.layout]
        except BaseException:
            arena.close(keep=False)
            raise
        arena.close(keep=True)
        empty = [np.zeros((0, *a.shape[1:]), dtype=a.dtype) for a in arrays]
        return cls(chunk.with_arrays(empty), arena.path, arena.layout)

    def unpack(self) -> _Chunk:
        """The chunk, its arrays read-only views of the file mapped into memory (no copy)."""
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            buf = np.frombuffer(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ), np.uint8) if size else None
        self.path.unlink()  # the mapping keeps the data until the arrays are gone
        arrays = []
        for offset, dtype, shape in self.layout:
            dt = np.dtype(dtype)
            nbytes = dt.itemsize * math.prod(shape)
            if nbytes == 0 or buf is None:
                arrays.append(np.empty(shape, dtype=dt))
            else:
                arrays.append(buf[offset : offset + nbytes].view(dt).reshape(shape))
        return self.chunk.with_arrays(arrays)


@dataclass
class _FileEnd:
    """Marks the end of a source file's chunks, with the file's sha256."""

    file_no: int
    sha256: str


@dataclass
class _Prep:
    """What the per-chunk work needs besides the data (sent to worker processes once per chunk)."""

    split_fractions: dict[str, float]
    on_error: str
    filter_unlabeled: bool


def _bad_events(block: RawBlock) -> dict[str, np.ndarray]:
    """Masks of events that cannot be used, by reason."""
    counts = np.diff(block.offsets)
    nonfinite = np.zeros(len(block), dtype=bool)
    p = block.particles
    # min and max propagate NaN and show inf: the exact per-row check runs only when one is present
    if p.dtype.kind == "f" and p.size and not (np.isfinite(p.min()) and np.isfinite(p.max())):
        row_bad = ~np.isfinite(p).all(axis=1)
        event_of_row = np.repeat(np.arange(len(block)), counts)
        nonfinite[np.unique(event_of_row[row_bad])] = True
    if block.events.dtype.kind == "f":
        nonfinite |= ~np.isfinite(block.events).all(axis=1)
    return {"non-finite feature (NaN or inf)": nonfinite, "no particles": counts == 0}


def _prepare(
    raw: RawBlock, path: Path, file_no: int, prep: _Prep, empty: Callable[..., np.ndarray] = np.empty
) -> _Chunk:
    """Everything that needs no other chunk: checks, event keys, splits, grouping by split.

    The grouped arrays are allocated with ``empty`` (see :class:`_FileArena`).
    """
    keep = np.ones(len(raw), dtype=bool)
    skipped: list[dict[str, Any]] = []
    for reason, mask in _bad_events(raw).items():
        if mask.any():
            first = int(np.flatnonzero(mask)[0]) + raw.first_entry
            if prep.on_error == "fail":
                raise DataError(
                    f"{path}: entry {first}: {reason} "
                    f"({int(mask.sum())} such events in this chunk); "
                    "fix the input or set on_error: skip to leave such events out"
                )
            skipped += [
                {"source": path.name, "entry": int(i) + raw.first_entry, "reason": reason}
                for i in np.flatnonzero(mask & keep)
            ]
            keep &= ~mask
    n_filtered = 0
    unlabeled = raw.label < 0
    if prep.filter_unlabeled and unlabeled.any():
        n_filtered = int((unlabeled & keep).sum())
        keep &= ~unlabeled
    keys = event_keys(raw.offsets, raw.particles, raw.events)
    idx = np.flatnonzero(keep)
    split = assign_splits(keys[idx], prep.split_fractions)
    order = idx[np.argsort(split, kind="stable")]
    block = EventBlock(raw.offsets, raw.particles, raw.events, raw.label, keys).take(order, empty)
    entries = empty((len(order),), np.int64)
    np.add(order, raw.first_entry, out=entries)
    counts = np.bincount(split, minlength=len(SPLITS)).tolist()
    skipped.sort(key=lambda s: s["entry"])
    return _Chunk(file_no, len(raw), block, counts, entries, skipped, n_filtered)


_worker_reader: Reader | None = None  # the reader of this worker process (set once, at its start)


def _init_worker(reader: Reader) -> None:
    # under fork the reader arrives without pickling, with the files its check() left open
    global _worker_reader
    _worker_reader = reader
    gc.freeze()  # the garbage collector skips what came from the parent (and leaves its pages shared)


def _read_range(path: Path, file_no: int, start: int, stop: int, prep: _Prep, exchange: Path) -> _Packed:
    """The job of a worker process: entries ``[start, stop)`` of ``path``, prepared and packed."""
    assert _worker_reader is not None, "run in a process started with _init_worker"
    raw = _worker_reader.read_range(path, start, stop)
    return _Packed.build(partial(_prepare, raw, path, file_no, prep), exchange)


def _file_end(file_no: int, path: Path) -> _FileEnd:
    return _FileEnd(file_no, sha256_file(path))


def _sequential(reader: Reader, files: list[Path], step: int, prep: _Prep) -> Iterator[_Chunk | _FileEnd]:
    """Every file's chunks in order, each followed by its end marker (run in a background thread)."""
    for file_no, path in enumerate(files):
        for raw in reader.read(path, step):
            yield _prepare(raw, path, file_no, prep)
        yield _file_end(file_no, path)


def _parallel(
    reader: Reader, readable: list[tuple[Path, int]], step: int, prep: _Prep, workers: int, exchange: Path
) -> Iterator[_Chunk | _FileEnd]:
    """The same stream as :func:`_sequential`, with entry ranges prepared in worker processes.

    At most ``2 * workers`` chunks are in flight, and results are handed on strictly in input
    order. The chunks' arrays come back through files in ``exchange`` (removed at the end).
    """
    jobs: list[Callable[[], _Packed | _FileEnd]] = []
    for file_no, (path, n) in enumerate(readable):
        jobs += [partial(_read_range, path, file_no, a, min(a + step, n), prep, exchange) for a in range(0, n, step)]
        jobs.append(partial(_file_end, file_no, path))
    exchange.mkdir()
    # fork (Linux) starts workers without re-importing uproot and friends
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(reader,))
    pending: collections.deque[Future[_Packed | _FileEnd]] = collections.deque()
    todo = iter(jobs)
    try:
        for job in itertools.islice(todo, 2 * workers):
            pending.append(pool.submit(job))
        while pending:
            result = pending.popleft().result()
            if (job := next(todo, None)) is not None:
                pending.append(pool.submit(job))
            yield result.unpack() if isinstance(result, _Packed) else result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(exchange, ignore_errors=True)


class _KeyIndex:
    """Event keys seen so far, each with where it was first seen: ``(file number << 40) | entry``.

    Kept as sorted numpy runs merged like a binary counter (16 bytes per event, a chunk of k
    keys looked up in O(k log n)), instead of a dict (~150 bytes per event).
    """

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Where each key was first seen, or -1 for keys not seen yet."""
        found = np.full(len(keys), -1, dtype=np.int64)
        for run_keys, run_where in self._runs:
            pos = np.minimum(np.searchsorted(run_keys, keys), len(run_keys) - 1)
            hit = run_keys[pos] == keys
            found[hit] = run_where[pos[hit]]
        return found

    def add(self, keys: np.ndarray, where: np.ndarray) -> None:
        """Record new, distinct keys."""
        if not len(keys):
            return
        order = np.argsort(keys)
        self._runs.append((keys[order], where[order]))
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= len(self._runs[-1][0]):
            (k2, w2), (k1, w1) = self._runs.pop(), self._runs.pop()
            merged = np.concatenate([k1, k2])
            order = np.argsort(merged, kind="stable")  # two sorted runs: linear
            self._runs.append((merged[order], np.concatenate([w1, w2])[order]))


def _duplicates(
    seen: _KeyIndex, keys: np.ndarray, where: np.ndarray, entries: np.ndarray, names: list[str], on_error: str
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Events of a chunk whose content was seen before (earlier, or earlier in the chunk).

    Returns the mask of those events and their ``skipped`` records; raises DataError naming the
    first one and where its twin is when ``on_error='fail'``.
    """
    prior = seen.find(keys)
    drop = np.zeros(len(keys), dtype=bool)
    sorted_keys = np.sort(keys)
    if not (prior >= 0).any() and not (sorted_keys[1:] == sorted_keys[:-1]).any():
        return drop, []
    records = []
    local: dict[int, int] = {}
    for i in np.argsort(entries, kind="stable").tolist():  # slow path, in input order: name each one
        k, w = int(keys[i]), int(where[i])
        first = int(prior[i]) if prior[i] >= 0 else local.get(k)
        if first is None:
            local[k] = w
            continue
        name = names[w >> 40]
        msg = (
            f"duplicate event: {name} entry {w & _ENTRY_MASK} has the same content as "
            f"{names[first >> 40]} entry {first & _ENTRY_MASK}"
        )
        if on_error == "fail":
            raise DataError(msg + "; remove the duplicate input or set on_error: skip")
        records.append({"source": name, "entry": w & _ENTRY_MASK, "reason": msg})
        drop[i] = True
    return drop, records


def missing_inputs(
    reader: Reader, columns: list[str], nonzero: np.ndarray, absent: dict[str, list[str]]
) -> dict[str, Any]:
    """The manifest's ``missing_inputs``: the reader's input groups (:attr:`Reader.input_groups`) whose
    every column is absent or all zero in the written events, those columns, and the files that lacked
    each absent column (stored as zeros there)."""
    zero = {c for c, nz in zip(columns, nonzero, strict=True) if not nz}
    groups = sorted(g for g, cols in reader.input_groups.items() if cols and set(cols) <= zero)
    missing_cols = [c for g in groups for c in reader.input_groups[g]]
    return {"groups": groups, "columns": missing_cols, "absent_in_files": dict(sorted(absent.items()))}


def _check_arguments(fmt: str, on_error: str, workers: int, step: int) -> None:
    """Refuse bad arguments of a conversion before any file is opened."""
    if fmt not in READERS:
        raise ValueError(f"unknown format '{fmt}'; choose one of: {', '.join(READERS)}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got '{on_error}'")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")


@dataclass(frozen=True)
class ConvertOptions:
    """The keyword arguments of :func:`convert` and :func:`physfm.data.convert_parts.convert_part`, with
    their defaults (the library's; ``physfm convert`` passes those of :class:`ConvertConfig`)."""

    shard_events: int = 10_000  # events per shard
    split_fractions: dict[str, float] | None = None  # None: train 0.8, val 0.1, test 0.1
    reader_options: dict[str, Any] | None = None  # options of the format's reader (physfm.data.readers)
    on_error: str = "fail"  # fail: stop at a bad file or event; skip: leave it out, recorded in the manifest
    step: int = 20_000  # events read per chunk (bounds memory; the output does not depend on it)
    workers: int = 1  # processes preparing chunks (readers that read entry ranges); same output for any
    progress: bool = True  # progress bar / line


@dataclass
class _Setup:
    """A conversion's checked arguments: its options, reader, chunk size, every input file, the
    per-chunk settings and the settings recorded in the manifest."""

    options: ConvertOptions
    reader: Reader
    step: int
    files: list[Path]
    prep: _Prep
    config: dict[str, Any]


def _set_up(fmt: str, inputs: str | Path | list[str | Path], options: dict[str, Any]) -> _Setup:
    """The set-up shared by :func:`convert` and :func:`physfm.data.convert_parts.convert_part`, from
    their keyword arguments ``options`` (:class:`ConvertOptions`)."""
    o = ConvertOptions(**options)
    _check_arguments(fmt, o.on_error, o.workers, o.step)
    split_fractions = o.split_fractions or {"train": 0.8, "val": 0.1, "test": 0.1}
    assign_splits(np.zeros(0, dtype=np.uint64), split_fractions)  # checks the fractions up front
    reader: Reader = READERS[fmt](o.reader_options)
    return _Setup(
        options=o,
        reader=reader,
        step=min(o.step, reader.max_step or o.step),  # the output does not depend on the step
        files=resolve_inputs(inputs, reader.file_glob),
        prep=_Prep(split_fractions, o.on_error, filter_unlabeled=bool(reader.classes)),
        config=_conversion_config(fmt, reader, o.shard_events, split_fractions, o.on_error),
    )


def _require_readable(readable: list[tuple[Path, int]], skipped: list[dict[str, Any]]) -> None:
    if not readable:
        raise DataError("every input file was skipped as unreadable: " + "; ".join(s["reason"] for s in skipped))


def _copy_extras(extras: dict[str, Path], tmp: Path, prefix: str = "") -> dict[str, dict[str, str]]:
    """Copy the files stored once per dataset into ``tmp`` as ``<prefix><name><suffix>``; their records."""
    records = {}
    for name, src in extras.items():
        dst = tmp / f"{prefix}{name}{src.suffix}"
        dst.write_bytes(src.read_bytes())
        records[name] = {"path": dst.name, "sha256": sha256_file(dst)}
    return records


def _check_files(reader: Reader, files: list[Path], on_error: str) -> tuple[list[tuple[Path, int]], list[dict]]:
    """``(path, n_entries)`` of the readable files, and the skipped records of the others."""
    readable: list[tuple[Path, int]] = []
    skipped: list[dict[str, Any]] = []
    for path in files:
        try:
            readable.append((path, reader.check(path)))
        except DataError as exc:
            if on_error == "fail":
                raise
            skipped.append({"source": path.name, "entry": None, "reason": str(exc)})
    return readable, skipped


def _stream(
    reader: Reader, readable: list[tuple[Path, int]], step: int, prep: _Prep, workers: int, exchange: Path
) -> Iterator[_Chunk | _FileEnd]:
    if workers > 1 and reader.splittable:
        return _parallel(reader, readable, step, prep, workers, exchange)
    return _prefetch(_sequential(reader, [p for p, _ in readable], step, prep))


def _conversion_config(
    fmt: str, reader: Reader, shard_events: int, split_fractions: dict[str, float], on_error: str
) -> dict[str, Any]:
    """The conversion settings recorded in the manifest (and hashed into the data_version)."""
    return {
        "format": fmt,
        "shard_events": shard_events,
        "split_fractions": {s: float(split_fractions.get(s, 0.0)) for s in SPLITS},
        "reader_options": reader.options,
        "on_error": on_error,
    }


def _write_dataset(
    tmp: Path,
    reader: Reader,
    readable: list[tuple[Path, int]],
    stream: Iterator[_Chunk | _FileEnd],
    config: dict[str, Any],
    stats: ConvertStats,
    extras: Callable[[], dict[str, Path]],
    progress: bool,
) -> dict[str, Any]:
    """The in-order part of a conversion: duplicate check, shards, manifest (into ``tmp``).

    ``stream`` holds every readable file's chunks in input order, each file's followed by its
    :class:`_FileEnd`; ``file_no`` indexes ``readable``. The same stream gives the same bytes,
    whether it comes from this process's readers or from the parts of :func:`convert_part`.
    ``extras()`` (called once the stream is read: a reader may collect them while reading) gives
    the files stored once per dataset.
    """
    on_error, shard_events = config["on_error"], config["shard_events"]
    seen = _KeyIndex()
    names = [p.name for p, _ in readable]
    sources = []
    n_filtered = 0
    nonzero = np.zeros(len(reader.particle_features), dtype=bool)  # columns with a nonzero value written
    writer = ShardWriter(tmp, shard_events, {"modality": reader.modality, "format_version": 1})
    bar = tqdm(total=sum(n for _, n in readable), unit="ev", desc="convert", disable=not progress)
    file_events = 0
    with contextlib.closing(stream):
        for item in stream:
            path, n_entries = readable[item.file_no]
            if isinstance(item, _FileEnd):
                sources.append(
                    {
                        "path": str(path),
                        "name": path.name,
                        "sha256": item.sha256,
                        "n_entries": n_entries,
                        "n_events": file_events,
                    }
                )
                file_events = 0
                continue
            stats.events_in += item.n_in
            n_filtered += item.n_filtered
            where = (item.file_no << 40) | item.entries
            drop, duplicates = _duplicates(seen, item.block.event_key, where, item.entries, names, on_error)
            block, counts, skipped = item.block, item.split_counts, item.skipped
            if duplicates:
                skipped = sorted(skipped + duplicates, key=lambda s: s["entry"])
                segment = np.repeat(np.arange(len(SPLITS)), counts)
                counts = np.bincount(segment[~drop], minlength=len(SPLITS)).tolist()
                block, where = block.select(~drop), where[~drop]
            seen.add(block.event_key, where)
            if reader.input_groups and not nonzero.all() and len(block.particles):
                nonzero |= (block.particles != 0).any(axis=0)
            stats.skipped += skipped
            start = 0
            for s_name, n in zip(SPLITS, counts, strict=True):
                writer.add(s_name, block.slice(start, start + n))
                start += n
            file_events += len(block)
            bar.update(item.n_in)
    bar.close()
    n_events = writer.close()
    extra_records = _copy_extras(extras(), tmp)
    manifest = build_manifest(
        modality=reader.modality,
        particle_features=reader.particle_features,
        event_features=reader.event_features,
        classes=reader.classes,
        n_events=n_events,
        shards=writer.shards,
        sources=sources,
        config=config,
        skipped=stats.skipped,
        extras=extra_records,
    )
    manifest["n_filtered_by_label"] = n_filtered
    if reader.input_groups:  # not part of the data_version: a function of the shards' content
        manifest["missing_inputs"] = missing_inputs(
            reader, list(reader.particle_features), nonzero, reader.absent_columns()
        )
    if sum(n_events.values()) == 0:
        raise DataError(f"no events left to write from {len(readable)} file(s); see skipped reasons")
    write_manifest(tmp, manifest)
    stats.events_written = sum(n_events.values())
    return manifest


def convert(
    fmt: str, inputs: str | Path | list[str | Path], out_dir: str | Path, **options: Any
) -> tuple[dict[str, Any], ConvertStats]:
    """Convert raw files of format ``fmt`` to a physfm dataset in ``out_dir``; return (manifest, stats).

    ``options``: the fields of :class:`ConvertOptions` (``shard_events``, ``split_fractions``,
    ``reader_options``, ``on_error``, ``step``, ``workers``, ``progress``), as keywords.

    ``on_error='fail'`` stops at the first bad file or event with a message naming it;
    ``'skip'`` leaves it out and records it (file, entry, reason) in the manifest's ``skipped``.

    ``workers > 1`` prepares chunks (read, check, event keys, splits) in that many processes for
    readers that can read entry ranges (JetClass ROOT); the duplicate check and the shard writing
    stay in this process, in input order, so the output is byte-identical whatever ``workers``
    and ``step``. Other formats are read sequentially in a background thread. To spread the
    reading over separate jobs (nodes), see :mod:`physfm.data.convert_parts`.
    """
    su = _set_up(fmt, inputs, options)
    reader, o = su.reader, su.options
    stats = ConvertStats()
    t0 = time.perf_counter()
    readable, stats.skipped = _check_files(reader, su.files, o.on_error)
    _require_readable(readable, stats.skipped)
    with atomic_dir(out_dir) as tmp:
        stream = _stream(reader, readable, su.step, su.prep, o.workers, tmp / ".exchange")
        manifest = _write_dataset(tmp, reader, readable, stream, su.config, stats, reader.extras, o.progress)
    stats.seconds = time.perf_counter() - t0
    return manifest, stats
