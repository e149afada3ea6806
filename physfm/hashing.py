"""Content hashing of numeric arrays: one uint64 per row from the exact bit patterns of its values.

The event keys of the shard format (:func:`physfm.data.shards.event_keys`), the deterministic
splits, and every seeded per-event random choice (masking, views) are built from these.
"""

from __future__ import annotations

import numpy as np

_U64 = np.uint64


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x.astype(_U64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> _U64(30)
        x *= _U64(0xBF58476D1CE4E5B9)
        x ^= x >> _U64(27)
        x *= _U64(0x94D049BB133111EB)
        x ^= x >> _U64(31)
    return x


_TILE = 8192  # rows hashed at a time: the tile's words stay in cache through the word loop


def row_hash(values: np.ndarray) -> np.ndarray:
    """One uint64 per row of a 2-D numeric array, from the exact bit patterns of its values.

    The row's bytes (zero-padded to whole words) are read as uint64 words (no conversion of the
    values) and folded with a multiply-xorshift per word, then finalised with splitmix64.
    """
    values = np.ascontiguousarray(values)
    n = values.shape[0]
    if values.dtype.kind not in "fiub":
        raise TypeError(f"cannot hash values of dtype {values.dtype}")
    raw = values.reshape(n, -1).view(np.uint8)
    width = raw.shape[1]
    n_words = -(-width // 8)
    h = np.empty(n, dtype=_U64)
    padded = np.zeros((min(n, _TILE), n_words * 8), np.uint8) if width % 8 else None
    shifted = np.empty(min(n, _TILE), dtype=_U64)
    with np.errstate(over="ignore"):
        for a in range(0, n, _TILE):
            b = min(a + _TILE, n)
            if padded is None:
                words = raw[a:b].view(_U64)
            else:
                padded[: b - a, :width] = raw[a:b]
                words = padded[: b - a].view(_U64)
            ht, st = h[a:b], shifted[: b - a]
            ht.fill(width)
            for j in range(n_words):
                ht ^= words[:, j]
                ht *= _U64(0x9E3779B97F4A7C15)
                np.right_shift(ht, _U64(29), out=st)
                ht ^= st
    return mix64(h)


def hash_uniform(event_key: np.ndarray, salt: int, length: int) -> np.ndarray:
    """``(B, length)`` uniforms in [0, 1) from (event key, salt, position): same event, same numbers."""
    keys = np.asarray(event_key).astype(np.uint64)
    base = mix64(keys ^ mix64(np.asarray([salt & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)))
    pos = np.arange(1, length + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        bits = mix64((base[:, None] + pos[None, :]).ravel()).reshape(len(keys), length)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
