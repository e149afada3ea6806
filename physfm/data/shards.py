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

import json
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from physfm import __version__
from physfm.io import atomic_path, read_json, sha256_file, sha256_json, write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")


class DataError(RuntimeError):
    """Input data that physfm refuses to process; the message says what and where."""


# --------------------------------------------------------------------------- event keys, splits
_U64 = np.uint64


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x.astype(_U64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> _U64(30)
        x *= _U64(0xBF58476D1CE4E5B9)
        x ^= x >> _U64(27)
        x *= _U64(0x94D049BB133111EB)
        x ^= x >> _U64(31)
    return x


def _row_hash(values: np.ndarray) -> np.ndarray:
    """One uint64 per row of a 2-D numeric array, from the exact bit patterns of its values.

    The row's bytes are read as uint64 words (no conversion of the values) and folded with a
    multiply-xorshift per word, then finalised with splitmix64.
    """
    values = np.ascontiguousarray(values)
    n = values.shape[0]
    if values.dtype.kind not in "fiub":
        raise TypeError(f"cannot hash values of dtype {values.dtype}")
    raw = values.reshape(n, -1).view(np.uint8)
    width = raw.shape[1]
    if width % 8:
        raw = np.concatenate([raw, np.zeros((n, 8 - width % 8), np.uint8)], axis=1)
    words = np.ascontiguousarray(raw).view(_U64)
    h = np.full(n, width, dtype=_U64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            h ^= words[:, j]
            h *= _U64(0x9E3779B97F4A7C15)
            h ^= h >> _U64(29)
    return _mix64(h)


def event_keys(offsets: np.ndarray, particles: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Content hash (uint64) of each event: its per-event features and ordered particles.

    The same event read from any file, under any name, gets the same key, so the train/val/test
    assignment is stable and duplicated events across files can be detected.
    """
    n = len(offsets) - 1
    counts = np.diff(offsets)
    ph = _row_hash(particles) if len(particles) else np.zeros(0, dtype=_U64)
    local = np.arange(len(ph), dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], counts)
    with np.errstate(over="ignore"):
        ph = _mix64(ph + local.astype(_U64) * _U64(0x9E3779B97F4A7C15))
        cs = np.concatenate([np.zeros(1, dtype=_U64), np.cumsum(ph, dtype=_U64)])
        start = offsets[:-1] - offsets[0]
        per_event = cs[start + counts] - cs[start]
        eh = _row_hash(events) if events.size else np.zeros(n, dtype=_U64)
        return _mix64(per_event ^ _mix64(eh + counts.astype(_U64)))


def assign_splits(keys: np.ndarray, fractions: dict[str, float], salt: int = 0) -> np.ndarray:
    """Deterministic split index (0=train, 1=val, 2=test) from each event key."""
    total = sum(fractions.get(s, 0.0) for s in SPLITS)
    if not np.isclose(total, 1.0):
        raise ValueError(f"split fractions must sum to 1, got {fractions} (sum {total})")
    u = (_mix64(keys ^ _U64(salt)) >> _U64(11)).astype(np.float64) * 2.0**-53
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


def write_shard(path: Path, block: EventBlock, attrs: dict[str, Any], hash_now: bool = True) -> dict[str, Any]:
    """Write one shard atomically and return its manifest entry (without the path).

    With ``hash_now=False`` the entry's sha256 is left for the caller to fill in.
    """
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="earliest", track_order=False) as f:
            for name, arr in (
                ("offsets", block.offsets.astype(np.int64)),
                ("particles", block.particles),
                ("events", block.events),
                ("label", block.label.astype(np.int64)),
                ("event_key", block.event_key.astype(np.uint64)),
            ):
                f.create_dataset(name, data=arr, track_times=False)
            for k, v in sorted(attrs.items()):
                f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v)
    return {
        "n_events": len(block),
        "n_rows": int(block.offsets[-1]),
        "sha256": sha256_file(path) if hash_now else None,
    }


@dataclass
class ShardWriter:
    """Buffers events per split and writes fixed-size shards in arrival order.

    Shards are hashed in a background thread (hashlib releases the GIL) while the next ones are
    built; :meth:`close` waits for the hashes.
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
        self._buffers[split].append(block)
        self._buffered[split] += len(block)
        while self._buffered[split] >= self.shard_events:
            bufs = self._buffers[split]
            merged = bufs[0] if len(bufs) == 1 else EventBlock.concat(bufs)
            head = merged.slice(0, self.shard_events)
            tail = merged.slice(self.shard_events, len(merged))
            self._write(split, head)
            self._buffers[split] = [tail] if len(tail) else []
            self._buffered[split] = len(tail)

    def _write(self, split: str, block: EventBlock) -> None:
        index = sum(1 for s in self.shards if s["split"] == split)
        rel = f"{split}/shard_{index:05d}.h5"
        entry = write_shard(self.out_dir / rel, block, {**self.attrs, "split": split}, hash_now=False)
        record = {"path": rel, "split": split, **entry}
        self._hashes.append((record, self._pool.submit(sha256_file, self.out_dir / rel)))
        self.shards.append(record)
        self._counts[split] += len(block)

    def close(self) -> dict[str, int]:
        """Flush partial shards, wait for their hashes; return events per split."""
        for s in SPLITS:
            if self._buffers[s]:
                self._write(s, EventBlock.concat(self._buffers[s]))
                self._buffers[s], self._buffered[s] = [], 0
        for record, future in self._hashes:
            record["sha256"] = future.result()
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
        problems = verify_dataset(data_dir, manifest)
        if problems:
            raise DataError(f"{data_dir} does not verify against its manifest:\n  " + "\n  ".join(problems))
    return manifest


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


def feature_names(manifest: dict[str, Any], kind: str = "particle") -> list[str]:
    return [f["name"] for f in manifest[f"{kind}_features"]]


def shard_paths(data_dir: str | Path, manifest: dict[str, Any], split: str) -> list[Path]:
    return [Path(data_dir) / s["path"] for s in manifest["shards"] if s["split"] == split]
