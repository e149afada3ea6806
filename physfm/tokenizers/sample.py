"""Training samples for tokenizer fits: random events of a split, as flat particles or padded jets.

Samples are drawn by event (so a jet's particles stay together) from a seeded generator; a split
smaller than the request is taken whole, in stored order. Memory is bounded by the request, plus
one shard being read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from physfm.data.dataset import Dataset
from physfm.data.loader import open_split, pad
from physfm.data.shards import EventBlock


def sample_events(data_dir: Dataset | str | Path, split: str, n_particles: int, seed: int) -> EventBlock:
    """Random events of ``split`` holding about ``n_particles`` particles (all events if fewer)."""
    s = open_split(data_dir, split)
    n_events = len(s)
    if n_events == 0:
        raise ValueError(f"split '{split}' of {data_dir} is empty; a tokenizer needs training particles")
    shards = [e for e in s.manifest["shards"] if e["split"] == split]
    n_rows = sum(int(e.get("n_rows", 0)) for e in shards)
    if n_rows and n_rows <= n_particles:
        return s.read()
    per_event = n_rows / n_events if n_rows else 50.0
    take = min(n_events, int(np.ceil(n_particles / per_event * 1.05)) + 1)
    rng = np.random.default_rng([seed, 17])
    return s.read(np.sort(rng.choice(n_events, size=take, replace=False)))


def sample_particles(
    data_dir: Dataset | str | Path, split: str, features: list[str], n_particles: int, seed: int
) -> np.ndarray:
    """``(N, F)`` float32 features of at most ``n_particles`` particles from random events of ``split``."""
    s = open_split(data_dir, split)
    block = sample_events(data_dir, split, n_particles, seed)
    x = s.features(block, features)
    if len(x) > n_particles:
        rng = np.random.default_rng([seed, 18])
        x = x[np.sort(rng.choice(len(x), size=n_particles, replace=False))]
    _check_finite(x, features, data_dir, split)
    return x


def sample_jets(
    data_dir: Dataset | str | Path, split: str, features: list[str], n_particles: int, max_len: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Padded ``x`` (n, max_len, F) and ``mask`` (n, max_len) of random events holding ~``n_particles``."""
    s = open_split(data_dir, split)
    block = sample_events(data_dir, split, n_particles, seed)
    feats = s.features(block, features)
    _check_finite(feats, features, data_dir, split)
    return pad(block, feats, max_len)


def _check_finite(x: np.ndarray, features: list[str], data_dir: Dataset | str | Path, split: str) -> None:
    bad = ~np.isfinite(x).all(axis=0)
    if bad.any():
        names = [f for f, b in zip(features, bad, strict=True) if b]
        raise ValueError(f"features {names} of split '{split}' in {data_dir} contain NaN/inf; fix the data first")
