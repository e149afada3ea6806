"""Raw events → sharded HDF5 with a manifest and a content-derived ``data_version``.

Reads each source file in chunks (never the whole input in memory), checks every event, assigns
it to train/val/test from a hash of its content, and writes shards atomically into a temporary
directory that replaces the output only once the manifest is complete.
"""

from __future__ import annotations

import glob
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
class ConvertStats:
    events_in: int = 0
    events_written: int = 0
    seconds: float = 0.0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def _prefetch(chunks: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Read the next chunks in a background thread while this one is processed.

    uproot's decompression and numpy release the GIL, so reading overlaps hashing and writing.
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


def _bad_events(block: RawBlock) -> dict[str, np.ndarray]:
    """Masks of events that cannot be used, by reason."""
    counts = np.diff(block.offsets)
    row_bad = ~np.isfinite(block.particles).all(axis=1) if block.particles.dtype.kind == "f" else None
    nonfinite = np.zeros(len(block), dtype=bool)
    if row_bad is not None and row_bad.any():
        event_of_row = np.repeat(np.arange(len(block)), counts)
        nonfinite[np.unique(event_of_row[row_bad])] = True
    if block.events.dtype.kind == "f":
        nonfinite |= ~np.isfinite(block.events).all(axis=1)
    return {"non-finite feature (NaN or inf)": nonfinite, "no particles": counts == 0}


def convert(
    fmt: str,
    inputs: str | Path | list[str | Path],
    out_dir: str | Path,
    *,
    shard_events: int = 10_000,
    split_fractions: dict[str, float] | None = None,
    reader_options: dict[str, Any] | None = None,
    on_error: str = "fail",
    step: int = 20_000,
    progress: bool = True,
) -> tuple[dict[str, Any], ConvertStats]:
    """Convert raw files of format ``fmt`` to a physfm dataset in ``out_dir``; return (manifest, stats).

    ``on_error='fail'`` stops at the first bad file or event with a message naming it;
    ``'skip'`` leaves it out and records it (file, entry, reason) in the manifest's ``skipped``.
    """
    if fmt not in READERS:
        raise ValueError(f"unknown format '{fmt}'; choose one of: {', '.join(READERS)}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got '{on_error}'")
    split_fractions = split_fractions or {"train": 0.8, "val": 0.1, "test": 0.1}
    reader: Reader = READERS[fmt](reader_options)
    files = resolve_inputs(inputs, reader.file_glob)
    stats = ConvertStats()
    t0 = time.perf_counter()

    readable: list[tuple[Path, int]] = []
    for path in files:
        try:
            readable.append((path, reader.check(path)))
        except DataError as exc:
            if on_error == "fail":
                raise
            stats.skipped.append({"source": path.name, "entry": None, "reason": str(exc)})
    if not readable:
        raise DataError("every input file was skipped as unreadable: " + "; ".join(s["reason"] for s in stats.skipped))

    config = {
        "format": fmt,
        "shard_events": shard_events,
        "split_fractions": {s: float(split_fractions.get(s, 0.0)) for s in SPLITS},
        "reader_options": reader.options,
        "on_error": on_error,
    }
    seen: dict[int, int] = {}  # event key -> (file number << 40) | entry
    names = [p.name for p, _ in readable]
    sources = []
    n_filtered = 0
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, shard_events, {"modality": reader.modality, "format_version": 1})
        bar = tqdm(total=sum(n for _, n in readable), unit="ev", desc="convert", disable=not progress)

        def chunks() -> Iterator[tuple[int, RawBlock | str]]:
            """Every file's chunks in order, then the file's sha256 to mark its end (runs in a thread)."""
            for file_no, (path, _) in enumerate(readable):
                yield from ((file_no, raw) for raw in reader.read(path, step))
                yield file_no, sha256_file(path)

        file_events = 0
        for file_no, raw in _prefetch(chunks()):
            path, n_entries = readable[file_no]
            if isinstance(raw, str):
                sources.append(
                    {
                        "path": str(path),
                        "name": path.name,
                        "sha256": raw,
                        "n_entries": n_entries,
                        "n_events": file_events,
                    }
                )
                file_events = 0
                continue
            stats.events_in += len(raw)
            keep = np.ones(len(raw), dtype=bool)
            for reason, mask in _bad_events(raw).items():
                if mask.any():
                    first = int(np.flatnonzero(mask)[0]) + raw.first_entry
                    if on_error == "fail":
                        raise DataError(
                            f"{path}: entry {first}: {reason} "
                            f"({int(mask.sum())} such events in this chunk); "
                            "fix the input or set on_error: skip to leave such events out"
                        )
                    stats.skipped += [
                        {"source": path.name, "entry": int(i) + raw.first_entry, "reason": reason}
                        for i in np.flatnonzero(mask & keep)
                    ]
                    keep &= ~mask
            unlabeled = raw.label < 0
            if reader.classes and unlabeled.any():
                n_filtered += int((unlabeled & keep).sum())
                keep &= ~unlabeled
            block = EventBlock(raw.offsets, raw.particles, raw.events, raw.label, np.zeros(len(raw), np.uint64))
            block.event_key = event_keys(block.offsets, block.particles, block.events)
            idx = np.flatnonzero(keep)
            keys = block.event_key[idx].tolist()
            where = [(file_no << 40) | (int(i) + raw.first_entry) for i in idx.tolist()]
            if len(set(keys)) != len(keys) or not seen.keys().isdisjoint(keys):
                for i, k, w in zip(idx.tolist(), keys, where, strict=True):  # slow path: name each duplicate
                    if k not in seen:
                        seen[k] = w
                        continue
                    first = seen[k]
                    msg = (
                        f"duplicate event: {path.name} entry {w & _ENTRY_MASK} has the same content as "
                        f"{names[first >> 40]} entry {first & _ENTRY_MASK}"
                    )
                    if on_error == "fail":
                        raise DataError(msg + "; remove the duplicate input or set on_error: skip")
                    stats.skipped.append({"source": path.name, "entry": w & _ENTRY_MASK, "reason": msg})
                    keep[i] = False
            else:
                seen.update(zip(keys, where, strict=True))
            block = block.select(keep) if not keep.all() else block
            split = assign_splits(block.event_key, split_fractions)
            for s_idx, s_name in enumerate(SPLITS):
                writer.add(s_name, block.select(split == s_idx))
            file_events += len(block)
            bar.update(len(raw))
        bar.close()
        n_events = writer.close()
        extras = {}
        for name, src in reader.extras().items():
            dst = tmp / f"{name}{src.suffix}"
            dst.write_bytes(src.read_bytes())
            extras[name] = {"path": dst.name, "sha256": sha256_file(dst)}
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
            extras=extras,
        )
        manifest["n_filtered_by_label"] = n_filtered
        if sum(n_events.values()) == 0:
            raise DataError(f"no events left to write from {len(readable)} file(s); see skipped reasons")
        write_manifest(tmp, manifest)
    stats.events_written = sum(n_events.values())
    stats.seconds = time.perf_counter() - t0
    return manifest, stats
