"""Per-feature standardisation of tokenizer inputs, fitted on the train split only.

Every feature ``f`` is mapped to ``z = (x - mean_f) / std_f`` with ``mean_f`` and ``std_f`` measured on
the train-split particle sample the tokenizer is fitted on, and mapped back with ``x = z * std_f +
mean_f`` on decoding. The values are stored per feature, by name, in the artefact's ``tokenizer.json``,
so a reader sees e.g. that ``log_pt`` (log of particle pT in GeV) had mean 0.82 and std 1.88, and
``deta``/``dphi`` (radians relative to the jet axis) std ≈ 0.29/0.27 on the default study's jets.
A feature that is constant on the train split (std 0, e.g. an unused particle-ID flag) keeps std 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Normalizer:
    """``z = (x - mean) / std`` per feature, in the order of ``features``."""

    features: list[str]
    mean: np.ndarray  # (F,) float64
    std: np.ndarray  # (F,) float64

    @classmethod
    def fit(cls, features: Sequence[str], x: np.ndarray) -> Normalizer:
        """Measure mean and std of ``x`` (N, F) (the train-split particles)."""
        if x.ndim != 2 or x.shape[1] != len(features) or len(x) == 0:
            raise ValueError(f"need a non-empty (N, {len(features)}) array to fit the normalisation, got {x.shape}")
        x64 = x.astype(np.float64)
        mean, std = x64.mean(axis=0), x64.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(list(features), mean, std)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return (z * self.std + self.mean).astype(np.float32)

    def to_json(self) -> dict[str, dict[str, float]]:
        return {
            f: {"mean": float(m), "std": float(s)} for f, m, s in zip(self.features, self.mean, self.std, strict=True)
        }

    @classmethod
    def from_json(cls, features: Sequence[str], spec: dict[str, Any]) -> Normalizer:
        missing = [f for f in features if f not in spec]
        if missing:
            raise ValueError(f"normalisation has no entry for features {missing}")
        mean = np.array([spec[f]["mean"] for f in features], dtype=np.float64)
        std = np.array([spec[f]["std"] for f in features], dtype=np.float64)
        return cls(list(features), mean, std)
