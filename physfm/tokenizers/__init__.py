"""Particle tokenizers: k-means (faiss), VQ-VAE (torch, per-particle or set-conditional), binning.

    from physfm.tokenizers import load_tokenizer, fit_tokenizer
    tok = load_tokenizer("results/default/tokenizers/kmeans-512")
    codes = tok.encode(x, mask)          # x (B, L, F) raw features in tok.features order -> (B, L), -1 at padding
    x_hat = tok.decode(codes, mask)      # -> (B, L, F) raw units, zeros at padding

Tokens are computed on the fly where they are needed (pretraining encodes each batch); no token
shards are stored, so a tokenizer change never leaves stale tokens behind.
See :mod:`physfm.tokenizers.base` for the artefact layout, :mod:`physfm.tokenizers.options` for
each method's options and :mod:`physfm.tokenizers.metrics` for the quality measures.

Names are imported on first use, so ``import physfm.tokenizers.options`` stays light (no torch/faiss).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "METHODS": "physfm.tokenizers.base",
    "Tokenizer": "physfm.tokenizers.base",
    "load_tokenizer": "physfm.tokenizers.base",
    "tokenizer_class": "physfm.tokenizers.base",
    "fit_tokenizer": "physfm.tokenizers.fit",
    "make_tokenizer": "physfm.tokenizers.fit",
    "write_report": "physfm.tokenizers.fit",
    "evaluate": "physfm.tokenizers.metrics",
    "Normalizer": "physfm.tokenizers.normalization",
    "make_config": "physfm.tokenizers.options",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'physfm.tokenizers' has no attribute {name!r}")
