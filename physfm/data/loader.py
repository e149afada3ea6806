"""Reading shards back: contiguous slices, padded batches, a torch IterableDataset.

Padding/truncation to ``max_len`` happens here, at load time; shards keep every particle.
Particles are kept in stored order (pT-descending for jets), so truncation drops the softest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from physfm.data.dataset import Dataset, open_dataset
from physfm.data.shards import EventBlock


def read_block(path: Path, start: int = 0, stop: int | None = None) -> EventBlock:
    """Events ``[start, stop)`` of one shard, read as contiguous slices."""
    with h5py.File(path, "r") as f:
        n = f["label"].shape[0]
        stop = n if stop is None else min(stop, n)
        offsets = f["offsets"][start : stop + 1]
        particles = f["particles"][offsets[0] : offsets[-1]]
        return EventBlock(
            offsets=(offsets - offsets[0]).astype(np.int64),
            particles=particles,
            events=f["events"][start:stop],
            label=f["label"][start:stop],
            event_key=f["event_key"][start:stop],
        )


def pad(block: EventBlock, parts: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense ``(n, max_len, F)`` float32 features and ``(n, max_len)`` bool mask (True = real particle).

    ``parts`` holds one row per particle of ``block`` (stored or derived features).
    """
    n = len(block)
    counts = np.diff(block.offsets)
    x = np.zeros((n, max_len, parts.shape[1]), dtype=np.float32)
    mask = np.zeros((n, max_len), dtype=bool)
    ev = np.repeat(np.arange(n), counts)
    pos = np.arange(len(ev)) - np.repeat(block.offsets[:-1], counts)
    keep = pos < max_len
    x[ev[keep], pos[keep]] = parts[keep]
    mask[ev[keep], pos[keep]] = True
    return x, mask


#: Events per block when streaming a split (:meth:`Split.blocks`): ~10 MB of padded jets.
BLOCK_EVENTS = 4096


@dataclass
class Split:
    """One split of a dataset: its shards and how many events each holds."""

    dataset: Dataset
    split: str

    @property
    def data_dir(self) -> Path:
        return self.dataset.path

    @property
    def manifest(self) -> dict[str, Any]:
        return self.dataset.manifest

    @property
    def shards(self) -> list[tuple[Path, int]]:
        return self.dataset.shards(self.split)

    def __len__(self) -> int:
        return sum(n for _, n in self.shards)

    def max_particles(self) -> int:
        """The most particles one event of the split holds (0 when it is empty), from the shards' offsets."""
        most = 0
        for path, _ in self.shards:
            with h5py.File(path, "r") as f:
                offsets = f["offsets"][:]
            if len(offsets) > 1:
                most = max(most, int(np.diff(offsets).max()))
        return most

    def features(self, block: EventBlock, names: Sequence[str] | None) -> np.ndarray:
        """Per-particle features of ``block``: stored columns or derived ones (physfm.features)."""
        if names is None:
            return block.particles.astype(np.float32)
        return compute_features(block, self.manifest, names)

    def units(
        self, block_events: int | None = None, indices: np.ndarray | None = None, stop: int | None = None
    ) -> list[Unit]:
        """The split (or the events at global ``indices``, or its first ``stop``) as :class:`Unit` s of at
        most ``block_events`` events each (``None``: one per shard), in stored order; each lies within
        one shard."""
        if block_events is not None and block_events < 1:
            raise ValueError(f"block_events must be >= 1, got {block_events}")
        want = None if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
        units, start = [], 0
        for path, n in self.shards:
            if stop is not None:
                n = max(0, min(n, stop - start))
            if want is None:
                step = block_events or max(n, 1)
                units += [Unit(path, a, min(a + step, n)) for a in range(0, n, step)]
            else:
                local = want[(want >= start) & (want < start + n)] - start
                step = block_events or max(len(local), 1)
                for a in range(0, len(local), step):
                    piece = local[a : a + step]
                    lo, hi = int(piece[0]), int(piece[-1]) + 1
                    contiguous = hi - lo == len(piece)
                    units.append(Unit(path, lo, hi, None if contiguous else piece - lo))
            start += n
        return units

    def blocks(
        self, block_events: int = BLOCK_EVENTS, indices: np.ndarray | None = None, stop: int | None = None
    ) -> Iterator[EventBlock]:
        """The split's events (or those at ``indices``, or its first ``stop``) in stored order,
        ``block_events`` at most at a time: the one way to stream a split whatever its size (memory
        bounded by the block)."""
        for unit in self.units(block_events, indices, stop):
            yield unit.read()

    def arrays(
        self,
        features: Sequence[str] | None = None,
        max_len: int = 128,
        block_events: int = BLOCK_EVENTS,
        indices: np.ndarray | None = None,
        stop: int | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """:meth:`blocks` as padded arrays (the keys of :func:`load_arrays`), one dict per block."""
        for block in self.blocks(block_events, indices, stop):
            yield padded_arrays(self, block, features, max_len)

    def read(self, indices: np.ndarray | None = None) -> EventBlock:
        """Events of the split in stored order, or those at global ``indices`` (sorted on return)."""
        blocks = [u.read() for u in self.units(None, indices)]
        if not blocks:
            raise ValueError(f"split '{self.split}' of {self.data_dir} has no events to read")
        return EventBlock.concat(blocks)


@dataclass(frozen=True)
class Unit:
    """Events ``[start, stop)`` of one shard, or only those at ``select`` (positions from ``start``)."""

    path: Path
    start: int
    stop: int
    select: np.ndarray | None = None

    def __len__(self) -> int:
        return self.stop - self.start if self.select is None else len(self.select)

    def read(self) -> EventBlock:
        block = read_block(self.path, self.start, self.stop)
        if self.select is None:
            return block
        mask = np.zeros(len(block), dtype=bool)
        mask[self.select] = True
        return block.select(mask)


def padded_arrays(
    split: Split, block: EventBlock, features: Sequence[str] | None, max_len: int
) -> dict[str, np.ndarray]:
    """A block of ``split`` as padded arrays: x, mask, label, events, event_key, n_particles."""
    x, mask = pad(block, split.features(block, features), max_len)
    return {
        "x": x,
        "mask": mask,
        "label": block.label,
        "events": block.events,
        "event_key": block.event_key,
        "n_particles": np.diff(block.offsets),
    }


def compute_features(block: EventBlock, manifest: dict[str, Any], names: Sequence[str]) -> np.ndarray:
    from physfm.features import compute

    return compute(block, manifest, names)


def open_split(data: Dataset | str | Path, split: str) -> Split:
    """One split of a dataset (an opened :class:`Dataset`, or a directory, opened here)."""
    ds = open_dataset(data)
    ds.shards(split)  # KeyError naming the splits there are
    return Split(ds, split)


def load_arrays(
    data_dir: Dataset | str | Path,
    split: str,
    features: Sequence[str] | None = None,
    max_len: int = 128,
    indices: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """A whole split (or selected events) in memory as padded numpy arrays.

    Its memory grows with the split: to go over a split of any size, stream it with
    :func:`iter_arrays` (or :meth:`Split.blocks`) instead.
    """
    s = open_split(data_dir, split)
    return padded_arrays(s, s.read(indices), features, max_len)


def iter_arrays(
    data_dir: Dataset | str | Path,
    split: str,
    features: Sequence[str] | None = None,
    max_len: int = 128,
    indices: np.ndarray | None = None,
    block_events: int = BLOCK_EVENTS,
    stop: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """:func:`load_arrays` in blocks of at most ``block_events`` events, in stored order (all events,
    those at ``indices``, or the first ``stop``)."""
    return open_split(data_dir, split).arrays(features, max_len, block_events, indices, stop)


def rechunk(blocks: Iterable[dict[str, np.ndarray]], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Blocks of row-aligned arrays (the same keys in each) regrouped, in order, into chunks of exactly
    ``size`` rows (the last one shorter): e.g. so model batches fall where they would on the whole split."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    pending: list[dict[str, np.ndarray]] = []
    have = 0
    for block in blocks:
        n = len(next(iter(block.values()))) if block else 0
        if n == 0:
            continue
        pending.append(block)
        have += n
        if have < size:
            continue
        merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
        full = have - have % size
        for a in range(0, full, size):
            yield {k: v[a : a + size] for k, v in merged.items()}
        pending = [{k: v[full:].copy() for k, v in merged.items()}] if have > full else []
        have -= full
    if have:
        yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}


class ShardDataset(IterableDataset):
    """Iterates padded batches over a split's shards, in contiguous blocks.

    Yields dicts of tensors: ``x`` (B, L, F) float32, ``mask`` (B, L) bool, ``label`` (B,) int64,
    ``events`` (B, E) float32. Work is split over DataLoader workers and over distributed ranks
    (``rank``/``world_size``) by block, so each event is seen once per epoch. With ``shuffle``,
    the block order and the events within each block are permuted from ``seed`` and the epoch
    (call :meth:`set_epoch`). ``max_events`` > 0 keeps only the split's first ``max_events`` events in
    stored order (a smaller corpus of the same data). Use with ``DataLoader(ds, batch_size=None, num_workers=N)``.
    """

    def __init__(
        self,
        data_dir: Dataset | str | Path,
        split: str,
        *,
        features: Sequence[str] | None = None,
        max_len: int = 128,
        batch_size: int = 256,
        shuffle: bool = False,
        seed: int = 0,
        block_batches: int = 8,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        max_events: int = 0,
    ) -> None:
        super().__init__()
        self.split = open_split(data_dir, split)
        if max_events < 0 or max_events > len(self.split):
            raise ValueError(
                f"max_events {max_events}: the {split} split holds {len(self.split)} events; use 0 (all) up to that"
            )
        self.feature_names = list(features) if features is not None else None
        if self.feature_names is not None:
            from physfm.features import available

            missing = [f for f in self.feature_names if f not in available(self.split.manifest)]
            if missing:
                raise KeyError(f"features {missing} are not available; choose from {available(self.split.manifest)}")
        self.max_len, self.batch_size, self.shuffle, self.seed = max_len, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        block = batch_size * block_batches
        self.units: list[tuple[Path, int, int]] = []
        left = max_events or len(self.split)
        for p, n in self.split.shards:
            n = min(n, left)
            self.units += [(p, a, min(a + block, n)) for a in range(0, n, block)]
            left -= n
        self.n_events = sum(b - a for _, a, b in self.units)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.n_events // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _my_units(self) -> list[tuple[Path, int, int]]:
        units = list(self.units)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(units))
            units = [units[i] for i in order]
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        slot, stride = self.rank * n_workers + worker, self.world_size * n_workers
        return units[slot::stride]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 7])
        carry: EventBlock | None = None
        for path, a, b in self._my_units():
            block = read_block(path, a, b)
            if self.shuffle:
                block = _take(block, rng.permutation(len(block)))
            if carry is not None and len(carry):
                block = EventBlock.concat([carry, block])
            n_full = len(block) // self.batch_size
            for i in range(n_full):
                yield self._batch(block.slice(i * self.batch_size, (i + 1) * self.batch_size))
            carry = block.slice(n_full * self.batch_size, len(block))
        if carry is not None and len(carry) and not self.drop_last:
            yield self._batch(carry)

    def _batch(self, block: EventBlock) -> dict[str, torch.Tensor]:
        x, mask = pad(block, self.split.features(block, self.feature_names), self.max_len)
        return {
            "x": torch.from_numpy(x),
            "mask": torch.from_numpy(mask),
            "label": torch.from_numpy(block.label.astype(np.int64)),
            "events": torch.from_numpy(block.events.astype(np.float32)),
        }


def _take(block: EventBlock, order: np.ndarray) -> EventBlock:
    """Events in the given order (a permutation)."""
    counts = np.diff(block.offsets)[order]
    starts = block.offsets[:-1][order]
    rows = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
    return EventBlock(
        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        block.particles[rows],
        block.events[order],
        block.label[order],
        block.event_key[order],
    )
