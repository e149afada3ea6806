"""The shard format: the one place that defines how events live on disk.

A dataset directory holds ``manifest.json`` and ``{split}/shard_{i:05d}.h5`` files. Each shard is
an HDF5 file with ragged per-particle (or per-pulse) features stored losslessly as a flat 2-D
array plus offsets, so reading events ``[a, b)`` is two contiguous slices:

=================  ====================  ===================================================
dataset            shape                 meaning
=================  ====================  ===================================================
``offsets``        (n_events + 1,) int64  event ``i`` owns rows ``offsets[i]:offsets[i+1]``
``particles``      (n_rows, n_pfeat)     per-particle features, source dtype (float32)
``events``         (n_events, n_efeat)   per-event features (e.g. jet pT, mass)
``label``          (n_events,) int64     class index into manifest ``classes``; -1 = none
``event_key``      (n_events,) uint64    content hash of the event (stable event key)
=================  ====================  ===================================================

The manifest records feature names and units, counts, every shard's sha256, every source file's
sha256, the conversion config, and a ``data_version`` hashed from all of that *content* (not from
paths or times): same input + same config gives the same ``data_version`` and byte-identical
shards; any change gives a different one.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from physfm import __version__
from physfm.hashing import mix64, row_hash
from physfm.io import atomic_path, commit_path, read_json, sha256_file, sha256_json, temp_path_beside, write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")


class DataError(RuntimeError):
    """Input data that physfm refuses to process; the message says what and where."""


# --------------------------------------------------------------------------- event keys, splits
_U64 = np.uint64


def event_keys(offsets: np.ndarray, particles: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Content hash (uint64) of each event: its per-event features and ordered particles.

    The same event read from any file, under any name, gets the same key, so the train/val/test
    assignment is stable and duplicated events across files can be detected.
    """
    n = len(offsets) - 1
    counts = np.diff(offsets)
    ph = row_hash(particles) if len(particles) else np.zeros(0, dtype=_U64)
    local = np.arange(len(ph), dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], counts)
    with np.errstate(over="ignore"):
        ph = mix64(ph + local.astype(_U64) * _U64(0x9E3779B97F4A7C15))
        cs = np.concatenate([np.zeros(1, dtype=_U64), np.cumsum(ph, dtype=_U64)])
        start = offsets[:-1] - offsets[0]
        per_event = cs[start + counts] - cs[start]
        eh = row_hash(events) if events.size else np.zeros(n, dtype=_U64)
        return mix64(per_event ^ mix64(eh + counts.astype(_U64)))


def assign_splits(keys: np.ndarray, fractions: dict[str, float], salt: int = 0) -> np.ndarray:
    """Deterministic split index (0=train, 1=val, 2=test) from each event key."""
    total = sum(fractions.get(s, 0.0) for s in SPLITS)
    if not np.isclose(total, 1.0):
        raise ValueError(f"split fractions must sum to 1, got {fractions} (sum {total})")
    u = (mix64(keys ^ _U64(salt)) >> _U64(11)).astype(np.float64) * 2.0**-53
    edges = np.cumsum([fractions.get(s, 0.0) for s in SPLITS])[:-1]
    return np.searchsorted(edges, u, side="right").astype(np.int8)


# --------------------------------------------------------------------------- writing
@dataclass
class EventBlock:
    """A batch of events in memory, in shard layout."""

    offsets: np.ndarray  # (n+1,) int64, starting at 0
    particles: np.ndarray  # (rows, n_pfeat)
    events: np.ndarray  # (n, n_efeat)
    label: np.ndarray  # (n,) int64
    event_key: np.ndarray  # (n,) uint64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def select(self, mask: np.ndarray) -> EventBlock:
        """Events where the boolean ``mask`` is true, in order."""
        mask = np.asarray(mask, dtype=bool)
        counts = np.diff(self.offsets)
        kept = counts[mask]
        return EventBlock(
            offsets=np.concatenate([[0], np.cumsum(kept)]).astype(np.int64),
            particles=self.particles[np.repeat(mask, counts)],
            events=self.events[mask],
            label=self.label[mask],
            event_key=self.event_key[mask],
        )

    def take(self, index: np.ndarray, empty: Callable[..., np.ndarray] = np.empty) -> EventBlock:
        """Events at the integer positions ``index``, in that order (one gather of the particle rows).

        The new arrays come from ``empty(shape, dtype)`` (e.g. memory shared with another process),
        in the order offsets, particles, events, label, event_key.
        """
        index = np.asarray(index, dtype=np.int64)
        if empty is np.empty and len(index) == len(self) and np.array_equal(index, np.arange(len(self))):
            return self
        counts = np.diff(self.offsets)[index]
        offsets = empty((len(index) + 1,), np.int64)
        offsets[0] = 0
        np.cumsum(counts, out=offsets[1:])
        rows = np.arange(offsets[-1], dtype=np.int64) + np.repeat(self.offsets[:-1][index] - offsets[:-1], counts)
        out = []
        for arr, at in ((self.particles, rows), (self.events, index), (self.label, index), (self.event_key, index)):
            dst = empty((len(at), *arr.shape[1:]), arr.dtype)
            np.take(arr, at, axis=0, out=dst, mode="clip")  # indices are valid; "raise" would buffer out
            out.append(dst)
        return EventBlock(offsets, *out)

    def slice(self, a: int, b: int) -> EventBlock:
        """Events ``[a, b)`` as views (no copy)."""
        o = self.offsets[a : b + 1]
        return EventBlock(
            o - o[0], self.particles[o[0] : o[-1]], self.events[a:b], self.label[a:b], self.event_key[a:b]
        )

    @staticmethod
    def concat(blocks: Sequence[EventBlock]) -> EventBlock:
        counts = np.concatenate([np.diff(b.offsets) for b in blocks])
        return EventBlock(
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            particles=np.concatenate([b.particles for b in blocks]),
            events=np.concatenate([b.events for b in blocks]),
            label=np.concatenate([b.label for b in blocks]),
            event_key=np.concatenate([b.event_key for b in blocks]),
        )


def _write_hdf5(path: Path, pieces: Sequence[EventBlock], attrs: dict[str, Any]) -> None:
    """Write consecutive blocks as one shard, copying each piece straight into its dataset."""
    counts = np.concatenate([np.diff(b.offsets) for b in pieces])
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    with h5py.File(path, "w", libver="earliest", track_order=False) as f:
        f.create_dataset("offsets", data=offsets, track_times=False)
        for name in ("particles", "events"):
            parts = [getattr(b, name) for b in pieces]
            total = sum(len(a) for a in parts)
            if len(parts) == 1 or total == 0:
                f.create_dataset(name, data=np.concatenate(parts) if len(parts) > 1 else parts[0], track_times=False)
                continue
            shape = (total, *parts[0].shape[1:])
            dset = f.create_dataset(name, shape=shape, dtype=np.result_type(*parts), track_times=False)
            start = 0
            for a in parts:
                if len(a):
                    dset[start : start + len(a)] = a
                    start += len(a)
        f.create_dataset("label", data=np.concatenate([b.label for b in pieces]).astype(np.int64), track_times=False)
        keys = np.concatenate([b.event_key for b in pieces]).astype(np.uint64)
        f.create_dataset("event_key", data=keys, track_times=False)
        for k, v in sorted(attrs.items()):
            f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v)


def write_shard(path: Path, block: EventBlock, attrs: dict[str, Any], hash_now: bool = True) -> dict[str, Any]:
    """Write one shard atomically and return its manifest entry (without the path).

    With ``hash_now=False`` the entry's sha256 is left for the caller to fill in.
    """
    with atomic_path(path) as tmp:
        _write_hdf5(tmp, [block], attrs)
    return {
        "n_events": len(block),
        "n_rows": int(block.offsets[-1]),
        "sha256": sha256_file(path) if hash_now else None,
    }


def _commit_and_hash(tmp: Path, path: Path) -> str:
    """fsync and rename a finished shard, then hash it from a memory map (no copy into a buffer)."""
    commit_path(tmp, path)
    h = hashlib.sha256()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        h.update(m)
    return h.hexdigest()


@dataclass
class ShardWriter:
    """Buffers events per split and writes fixed-size shards in arrival order.

    Added blocks are kept as they come (views are fine) and copied once, straight into the shard's
    HDF5 datasets. Each shard is written under a temporary name; the fsync, the rename onto its
    final name and the sha256 run in a background thread (both release the GIL) while the next
    shards are built; :meth:`close` waits for them.
    """

    out_dir: Path
    shard_events: int
    attrs: dict[str, Any]
    shards: list[dict[str, Any]] = field(default_factory=list)
    _buffers: dict[str, list[EventBlock]] = field(default_factory=dict)
    _buffered: dict[str, int] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)
    _hashes: list[tuple[dict[str, Any], Future[str]]] = field(default_factory=list)
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))

    def __post_init__(self) -> None:
        if self.shard_events < 1:
            raise ValueError(f"shard_events must be >= 1, got {self.shard_events}")
        for s in SPLITS:
            self._buffers[s], self._buffered[s], self._counts[s] = [], 0, 0

    def add(self, split: str, block: EventBlock) -> None:
        if len(block) == 0:
            return
        bufs = self._buffers[split]
        bufs.append(block)
        self._buffered[split] += len(block)
        while self._buffered[split] >= self.shard_events:
            pieces, need = [], self.shard_events
            while need:
                head = bufs.pop(0)
                if len(head) > need:
                    pieces.append(head.slice(0, need))
                    bufs.insert(0, head.slice(need, len(head)))
                    need = 0
                else:
                    pieces.append(head)
                    need -= len(head)
            self._buffered[split] -= self.shard_events
            self._write(split, pieces)

    def _write(self, split: str, pieces: list[EventBlock]) -> None:
        index = sum(1 for s in self.shards if s["split"] == split)
        rel = f"{split}/shard_{index:05d}.h5"
        tmp = temp_path_beside(self.out_dir / rel)
        _write_hdf5(tmp, pieces, {**self.attrs, "split": split})
        n_events = sum(len(b) for b in pieces)
        record = {"path": rel, "split": split, "n_events": n_events, "n_rows": sum(int(b.offsets[-1]) for b in pieces)}
        record["sha256"] = None
        self._hashes.append((record, self._pool.submit(_commit_and_hash, tmp, self.out_dir / rel)))
        self.shards.append(record)
        self._counts[split] += n_events

    def close(self) -> dict[str, int]:
        """Flush partial shards, wait for their renames and hashes; return events per split."""
        try:
            for s in SPLITS:
                if self._buffers[s]:
                    self._write(s, self._buffers[s])
                    self._buffers[s], self._buffered[s] = [], 0
            for record, future in self._hashes:
                record["sha256"] = future.result()
            # by split, then shard number: the order shards fill up in depends on the chunking
            self.shards.sort(key=lambda r: (SPLITS.index(r["split"]), r["path"]))
        finally:
            self._pool.shutdown()
        return dict(self._counts)


# --------------------------------------------------------------------------- manifest
def compute_data_version(manifest: dict[str, Any]) -> str:
    """Hash of the dataset's content: shard hashes, features, classes, counts and config.

    Source files are listed (with their sha256) in the manifest but do not enter the hash: two ROOT
    files with the same events differ in header timestamps, yet convert to identical shards.
    """
    content = {
        "format_version": manifest["format_version"],
        "modality": manifest["modality"],
        "particle_features": manifest["particle_features"],
        "event_features": manifest["event_features"],
        "classes": manifest["classes"],
        "n_events": manifest["n_events"],
        "shards": [(s["path"], s["sha256"]) for s in manifest["shards"]],
        "config": manifest["config"],
        "extras": {k: v["sha256"] for k, v in sorted(manifest.get("extras", {}).items())},
    }
    return sha256_json(content)[:16]


def build_manifest(
    *,
    modality: str,
    particle_features: dict[str, str],
    event_features: dict[str, str],
    classes: list[str],
    n_events: dict[str, int],
    shards: list[dict[str, Any]],
    sources: list[dict[str, Any]],
    config: dict[str, Any],
    skipped: list[dict[str, Any]] | None = None,
    extras: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "modality": modality,
        "physfm_version": __version__,
        "particle_features": [{"name": k, "unit": v} for k, v in particle_features.items()],
        "event_features": [{"name": k, "unit": v} for k, v in event_features.items()],
        "classes": classes,
        "n_events": n_events,
        "shards": shards,
        "sources": sources,
        "config": config,
        "skipped": skipped or [],
        "extras": extras or {},
    }
    manifest["data_version"] = compute_data_version(manifest)
    return manifest


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST
    write_json(path, manifest)
    return path


def load_manifest(data_dir: str | Path, verify: bool = False) -> dict[str, Any]:
    """Read a dataset's manifest, with a clear error if it is missing or (optionally) corrupt."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{data_dir} is not a physfm dataset: {MANIFEST} is missing "
            "(run `physfm convert` to create one; an interrupted conversion leaves no manifest)"
        )
    manifest = read_json(path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: shard format version {manifest.get('format_version')} is not supported by this "
            f"physfm (expects {FORMAT_VERSION}); re-run `physfm convert`"
        )
    if verify:
        _raise_on_problems(data_dir, verify_dataset(data_dir, manifest), "`physfm convert`")
    return manifest


def _raise_on_problems(directory: Path, problems: list[str], remedy: str) -> None:
    if problems:
        raise DataError(
            f"{directory} does not verify against its {MANIFEST} (corrupt or modified since it was written):\n  "
            + "\n  ".join(problems)
            + f"\nrun `physfm verify {directory}` to list every problem, then re-create it with {remedy}"
        )


def verify_dataset(data_dir: str | Path, manifest: dict[str, Any] | None = None) -> list[str]:
    """Re-hash every shard and extra file; return a list of problems (empty when all is well)."""
    data_dir = Path(data_dir)
    manifest = manifest if manifest is not None else read_json(data_dir / MANIFEST)
    problems = []
    entries = [(s["path"], s["sha256"]) for s in manifest["shards"]]
    entries += [(v["path"], v["sha256"]) for v in manifest.get("extras", {}).values()]
    for rel, expected in entries:
        p = data_dir / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif (got := sha256_file(p)) != expected:
            problems.append(f"{rel}: sha256 {got[:12]}… does not match manifest {expected[:12]}…")
    if compute_data_version(manifest) != manifest.get("data_version"):
        problems.append("manifest.json: data_version does not match its content (manifest edited?)")
    return problems


def verify_artefact(directory: str | Path, manifest: dict[str, Any]) -> list[str]:
    """Re-hash every file an artefact manifest lists under ``files`` (tokenizers, backbones)."""
    directory = Path(directory)
    problems = []
    for rel, expected in sorted(manifest.get("files", {}).items()):
        p = directory / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif (got := sha256_file(p)) != expected:
            problems.append(f"{rel}: sha256 {got[:12]}… does not match manifest {expected[:12]}…")
    if "backbone_version" in manifest and sha256_json(manifest.get("files", {}))[:16] != manifest["backbone_version"]:
        problems.append(f"{MANIFEST}: backbone_version does not match its file list (manifest edited?)")
    return problems


def verify_directory(directory: str | Path) -> tuple[dict[str, Any], list[str]]:
    """``(manifest, problems)`` for a dataset (``shards``) or an artefact directory (``files``)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        return {}, [f"{MANIFEST}: missing (not a physfm dataset or artefact, or its writing was interrupted)"]
    manifest = read_json(path)
    if "shards" in manifest:
        return manifest, verify_dataset(directory, manifest)
    if "files" in manifest:
        return manifest, verify_artefact(directory, manifest)
    return manifest, [f"{MANIFEST}: lists neither shards nor files; nothing to verify against"]


def check_artefact(directory: str | Path, remedy: str) -> dict[str, Any] | None:
    """Verify an artefact directory that has a manifest; raise :class:`DataError` naming the fix.

    Returns the manifest, or None when the directory has none (written before manifests existed).
    """
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        return None
    manifest = read_json(directory / MANIFEST)
    _raise_on_problems(directory, verify_artefact(directory, manifest), remedy)
    return manifest


def feature_names(manifest: dict[str, Any], kind: str = "particle") -> list[str]:
    return [f["name"] for f in manifest[f"{kind}_features"]]
