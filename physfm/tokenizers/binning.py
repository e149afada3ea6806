"""Binning tokenizer, the baseline: per-feature bins, code = mixed-radix index of the bins.

With F features and a requested codebook size K, each feature gets ``n = floor(K ** (1/F))`` bins,
so the codebook holds ``n ** F`` codes (exactly K when K is a perfect F-th power, e.g. 512 = 8^3).
``scheme = quantile`` puts bin edges at equal-population quantiles of the train sample;
``scheme = uniform`` spaces them evenly between the ``clip`` and ``1 - clip`` quantiles (values
outside fall in the outer bins). A bin decodes to the mean of the train values that fell in it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from physfm.data.dataset import Dataset
from physfm.tokenizers.base import LogFn, Tokenizer
from physfm.tokenizers.normalization import Normalizer
from physfm.tokenizers.options import BinningConfig
from physfm.tokenizers.sample import sample_particles


def bins_per_feature(codebook_size: int, n_features: int) -> int:
    n = int(np.floor(codebook_size ** (1.0 / n_features) + 1e-9))
    if n < 2:
        raise ValueError(f"binning {n_features} features needs a codebook size >= {2**n_features}, got {codebook_size}")
    return n


class BinningTokenizer(Tokenizer):
    """Per-particle tokens from independent per-feature bins."""

    method = "binning"
    Config = BinningConfig

    def __init__(
        self,
        features: list[str],
        norm: Normalizer,
        edges: np.ndarray,
        centres: np.ndarray,
        config: BinningConfig,
        **kw: Any,
    ):
        n = centres.shape[1]
        super().__init__(features, norm, n ** len(features), config, **kw)
        self.edges = np.ascontiguousarray(edges, dtype=np.float32)  # (F, n + 1), normalised units
        self.centres = np.ascontiguousarray(centres, dtype=np.float32)  # (F, n)
        self.radix = n ** np.arange(len(features) - 1, -1, -1, dtype=np.int64)

    @classmethod
    def fit(
        cls,
        data_dir: Dataset,
        features: list[str],
        codebook_size: int,
        config: BinningConfig,
        *,
        seed: int = 0,
        progress: bool = True,
        log: LogFn | None = None,
    ) -> BinningTokenizer:
        if config.scheme not in ("quantile", "uniform"):
            raise ValueError(f"binning scheme must be quantile or uniform, got {config.scheme!r}")
        n = bins_per_feature(codebook_size, len(features))
        x = sample_particles(data_dir, "train", features, config.sample, seed)
        norm = Normalizer.fit(features, x)
        z = norm.transform(x).astype(np.float64)
        edges = np.empty((len(features), n + 1))
        centres = np.empty((len(features), n))
        for j in range(len(features)):
            if config.scheme == "quantile":
                edges[j] = np.quantile(z[:, j], np.linspace(0, 1, n + 1))
            else:
                lo, hi = np.quantile(z[:, j], [config.clip, 1 - config.clip])
                edges[j] = np.linspace(lo, hi if hi > lo else lo + 1.0, n + 1)
            idx = _bin(z[:, j], edges[j])
            sums = np.bincount(idx, weights=z[:, j], minlength=n)
            counts = np.bincount(idx, minlength=n)
            mid = 0.5 * (edges[j][:-1] + edges[j][1:])
            centres[j] = np.where(counts > 0, sums / np.maximum(counts, 1), mid)
        info = {"train_particles": len(x), "bins_per_feature": n}
        return cls(features, norm, edges, centres, config, fit_info=info)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"edges": self.edges, "centres": self.centres}

    @classmethod
    def from_arrays(
        cls, spec: dict[str, Any], norm: Normalizer, config: BinningConfig, arrays: dict[str, np.ndarray]
    ) -> BinningTokenizer:
        return cls(spec["features"], norm, arrays["edges"], arrays["centres"], config)

    def _encode_rows(self, z: np.ndarray) -> np.ndarray:
        codes = np.zeros(len(z), dtype=np.int64)
        for j in range(len(self.features)):
            codes += _bin(z[:, j], self.edges[j]) * self.radix[j]
        return codes

    def _decode_rows(self, codes: np.ndarray) -> np.ndarray:
        n = self.centres.shape[1]
        out = np.empty((len(codes), len(self.features)), dtype=np.float32)
        for j in range(len(self.features)):
            out[:, j] = self.centres[j][(codes // self.radix[j]) % n]
        return out


def _bin(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index in [0, n) for ``n + 1`` edges; values outside go to the outer bins."""
    n = len(edges) - 1
    return np.clip(np.searchsorted(edges[1:-1], values, side="right"), 0, n - 1).astype(np.int64)
