"""A conversion spread over jobs: each job converts one group of input files into a *part*, and
one gather writes the dataset from the parts, byte-identical to :func:`physfm.data.convert.convert`.

The sorted input files are cut into ``groups`` contiguous groups. :func:`convert_part` (one job per
group, e.g. one sbatch job each) does the expensive, per-file work (decompression, checks, event
keys, splits) and stores the prepared chunks, in input order, in ``PART/chunks.h5`` with
``PART/part.json``. :func:`gather_parts` feeds the parts' chunks, in group order, through the same
in-order writer as a single-job conversion: the duplicate check and the shard boundaries stay
global, and the shards, manifest and ``data_version`` are those of one job over all the files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from physfm.data.convert import (
    ConvertStats,
    _check_files,
    _Chunk,
    _copy_extras,
    _FileEnd,
    _prefetch,
    _require_readable,
    _set_up,
    _stream,
    _write_dataset,
)
from physfm.data.readers import READERS, Reader
from physfm.data.shards import DataError, EventBlock
from physfm.io import atomic_dir, read_json, write_json

PART = "part.json"
CHUNKS = "chunks.h5"
PART_FORMAT = 1
_ARRAYS = ("offsets", "particles", "events", "label", "event_key", "entries")


def group_files(files: list[Path], group: int, groups: int) -> list[Path]:
    """Group ``group`` (0-based) of ``groups`` contiguous groups of the sorted ``files``.

    Sizes differ by at most one; with more groups than files some groups are empty.
    """
    if groups < 1 or not 0 <= group < groups:
        raise ValueError(f"group must be in [0, groups) with groups >= 1, got group {group} of {groups}")
    n = len(files)
    return files[group * n // groups : (group + 1) * n // groups]


def _write_chunk(h5: h5py.File, index: int, chunk: _Chunk) -> None:
    g = h5.create_group(f"c{index:07d}", track_order=False)
    for name, array in zip(_ARRAYS, chunk.arrays(), strict=True):
        g.create_dataset(name, data=np.ascontiguousarray(array), track_times=False)
    g.attrs["file_no"] = chunk.file_no
    g.attrs["n_in"] = chunk.n_in
    g.attrs["n_filtered"] = chunk.n_filtered
    g.attrs["split_counts"] = json.dumps(chunk.split_counts)
    g.attrs["skipped"] = json.dumps(chunk.skipped)


def _read_chunk(h5: h5py.File, index: int, file_offset: int) -> _Chunk:
    g = h5[f"c{index:07d}"]
    offsets, particles, events, label, event_key, entries = (g[name][()] for name in _ARRAYS)
    return _Chunk(
        file_no=int(g.attrs["file_no"]) + file_offset,
        n_in=int(g.attrs["n_in"]),
        block=EventBlock(offsets, particles, events, label, event_key),
        split_counts=json.loads(g.attrs["split_counts"]),
        entries=entries,
        skipped=json.loads(g.attrs["skipped"]),
        n_filtered=int(g.attrs["n_filtered"]),
    )


def convert_part(
    fmt: str,
    inputs: str | Path | list[str | Path],
    out_dir: str | Path,
    *,
    group: int,
    groups: int,
    **options: Any,
) -> dict[str, Any]:
    """Read and prepare group ``group`` of ``groups`` of the input files into the part ``out_dir``.

    Takes the same settings ``options`` as :func:`physfm.data.convert.convert` (the fields of
    :class:`physfm.data.convert.ConvertOptions`; all parts of one dataset must get the same ones:
    :func:`gather_parts` checks). Returns the part's record (``part.json``).
    """
    su = _set_up(fmt, inputs, options)
    reader, every_file, o = su.reader, su.files, su.options
    files = group_files(every_file, group, groups)
    t0 = time.perf_counter()
    readable, file_skipped = _check_files(reader, files, o.on_error)
    items: list[dict[str, Any]] = []
    n_in = 0
    with atomic_dir(out_dir) as tmp:
        stream = _stream(reader, readable, su.step, su.prep, o.workers, tmp / ".exchange")
        with h5py.File(tmp / CHUNKS, "w", libver="earliest", track_order=False) as h5:
            for item in stream:
                if isinstance(item, _FileEnd):
                    items.append({"end": item.file_no, "sha256": item.sha256})
                    continue
                _write_chunk(h5, len(items), item)
                items.append({"chunk": len(items)})
                n_in += item.n_in
        extras = _copy_extras(reader.extras(), tmp, prefix="extra_")
        record = {
            "kind": "physfm convert part",
            "part_format": PART_FORMAT,
            "group": group,
            "groups": groups,
            "config": su.config,
            "inputs": [str(p) for p in every_file],
            "readable": [[str(p), n] for p, n in readable],
            "file_skipped": file_skipped,
            "items": items,
            "extras": extras,
            "events_in": n_in,
            "seconds": time.perf_counter() - t0,
        }
        write_json(tmp / PART, record)
    if o.progress:
        print(f"part {group + 1}/{groups}: {len(readable)} file(s), {n_in} events -> {out_dir}")
    return record


def _load_parts(parts: list[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """The parts in group order, checked to be all the groups of one conversion."""
    loaded = []
    for p in map(Path, parts):
        if not (p / PART).is_file():
            raise DataError(f"{p}: not a conversion part ({PART} missing); run `physfm convert --group` for it")
        record = read_json(p / PART)
        if record.get("part_format") != PART_FORMAT:
            raise DataError(f"{p}: part format {record.get('part_format')} is not {PART_FORMAT}; convert it again")
        loaded.append((p, record))
    if not loaded:
        raise DataError("no parts to gather")
    loaded.sort(key=lambda pr: pr[1]["group"])
    groups = loaded[0][1]["groups"]
    found = [r["group"] for _, r in loaded]
    if found != list(range(groups)) or any(r["groups"] != groups for _, r in loaded):
        raise DataError(
            f"parts {', '.join(str(p) for p, _ in loaded)} are groups {found} of "
            f"{sorted({r['groups'] for _, r in loaded})}: gather needs each of the {groups} groups exactly once"
        )
    first = loaded[0][1]
    for p, r in loaded[1:]:
        for key in ("config", "inputs"):
            if r[key] != first[key]:
                raise DataError(
                    f"{p}: its {key} differ from those of {loaded[0][0]}; convert every group with the same "
                    "input and settings"
                )
    return loaded


def _part_stream(loaded: list[tuple[Path, dict[str, Any]]]) -> Iterator[_Chunk | _FileEnd]:
    """Every part's chunks and file ends, in group order, file numbers made global."""
    offset = 0
    for path, record in loaded:
        with h5py.File(path / CHUNKS, "r") as h5:
            for item in record["items"]:
                if "end" in item:
                    yield _FileEnd(item["end"] + offset, item["sha256"])
                else:
                    yield _read_chunk(h5, item["chunk"], offset)
        offset += len(record["readable"])


def _gathered_extras(loaded: list[tuple[Path, dict[str, Any]]]) -> dict[str, Path]:
    """The extra files of the parts, which must agree where more than one part has one."""
    extras: dict[str, tuple[Path, str]] = {}
    for path, record in loaded:
        for name, e in record["extras"].items():
            if name in extras and extras[name][1] != e["sha256"]:
                raise DataError(
                    f"extra file '{name}' of {path} differs from that of {extras[name][0].parent} (the reader "
                    "collects it while reading, e.g. the sensors seen); convert these files as one group (groups: 1)"
                )
            extras.setdefault(name, (path / e["path"], e["sha256"]))
    # _write_dataset stores each as <name><suffix>, as a single job does
    return {name: p for name, (p, _) in extras.items()}


def gather_parts(
    parts: list[str | Path], out_dir: str | Path, *, progress: bool = True
) -> tuple[dict[str, Any], ConvertStats]:
    """Write the dataset ``out_dir`` from every part of a conversion; return (manifest, stats).

    The manifest, shards and ``data_version`` equal those of one :func:`physfm.data.convert.convert`
    over all the files with the same settings.
    """
    loaded = _load_parts(parts)
    config = loaded[0][1]["config"]
    reader: Reader = READERS[config["format"]](config["reader_options"])
    readable = [(Path(p), int(n)) for _, r in loaded for p, n in r["readable"]]
    stats = ConvertStats(skipped=[s for _, r in loaded for s in r["file_skipped"]])
    _require_readable(readable, stats.skipped)
    t0 = time.perf_counter()
    extras = _gathered_extras(loaded)
    with atomic_dir(out_dir) as tmp:
        manifest = _write_dataset(
            tmp, reader, readable, _prefetch(_part_stream(loaded)), config, stats, lambda: extras, progress
        )
    stats.seconds = time.perf_counter() - t0
    return manifest, stats
