"""k-means tokenizer (MPM's targets): the nearest of K centroids in normalised feature space, fitted with faiss.

The fit runs ``faiss.Kmeans`` (``nredo=1``, fixed seed) on a random sample of train-split particles
(``sample``), on a GPU when GPU faiss is installed and ``device`` allows it. Every sampled point is
used (faiss' own sub-sampling is switched off), so the sample size is the one knob for fit time.
Encoding is an exact nearest-centroid search (``faiss.IndexFlatL2``); decoding returns the centroid.
"""

from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np

from physfm.data.dataset import Dataset
from physfm.tokenizers.base import LogFn, Tokenizer
from physfm.tokenizers.normalization import Normalizer
from physfm.tokenizers.options import KMeansConfig
from physfm.tokenizers.sample import sample_particles

MAX_K = 1 << 16


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def kmeans_centroids(
    x: np.ndarray, k: int, *, niter: int = 25, seed: int = 0, device: str = "auto", verbose: bool = False
) -> np.ndarray:
    """faiss k-means on all rows of ``x`` (N, d) float32; returns (k, d) centroids."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < k:
        raise ValueError(f"k-means with K={k} needs at least K training points, got {len(x)}; lower K or sample more")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {device!r}")
    use_gpu = gpu_available() and device != "cpu"
    if device.startswith("cuda") and not use_gpu:
        raise ValueError("device=cuda but this faiss has no GPU support (install faiss-gpu) or no GPU is visible")
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        nredo=1,
        seed=seed,
        verbose=verbose,
        gpu=use_gpu,
        max_points_per_centroid=-(-len(x) // k) + 1,  # use the whole sample
        min_points_per_centroid=1,
    )
    km.train(x)
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, x.shape[1])


class KMeansTokenizer(Tokenizer):
    """Per-particle tokens: index of the nearest centroid; decoding gives the centroid."""

    method = "kmeans"
    Config = KMeansConfig

    def __init__(self, features: list[str], norm: Normalizer, centroids: np.ndarray, config: KMeansConfig, **kw: Any):
        super().__init__(features, norm, len(centroids), config, **kw)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self._index: faiss.IndexFlatL2 | None = None

    @classmethod
    def fit(
        cls,
        data_dir: Dataset,
        features: list[str],
        codebook_size: int,
        config: KMeansConfig,
        *,
        seed: int = 0,
        progress: bool = True,
        log: LogFn | None = None,
    ) -> KMeansTokenizer:
        if not 2 <= codebook_size <= MAX_K:
            raise ValueError(f"k-means codebook size must be in [2, {MAX_K}], got {codebook_size}")
        x = sample_particles(data_dir, "train", features, config.sample, seed)
        norm = Normalizer.fit(features, x)
        t0 = time.perf_counter()
        centroids = kmeans_centroids(
            norm.transform(x), codebook_size, niter=config.niter, seed=seed, device=config.device, verbose=progress
        )
        info = {"train_particles": len(x), "fit_seconds": time.perf_counter() - t0, "gpu": gpu_available()}
        return cls(features, norm, centroids, config, fit_info=info)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids}

    @classmethod
    def from_arrays(
        cls, spec: dict[str, Any], norm: Normalizer, config: KMeansConfig, arrays: dict[str, np.ndarray]
    ) -> KMeansTokenizer:
        return cls(spec["features"], norm, arrays["centroids"], config)

    def _encode_rows(self, z: np.ndarray) -> np.ndarray:
        if self._index is None:
            self._index = faiss.IndexFlatL2(self.centroids.shape[1])
            self._index.add(self.centroids)
        if len(z) == 0:
            return np.zeros(0, dtype=np.int64)
        _, idx = self._index.search(np.ascontiguousarray(z, dtype=np.float32), 1)
        return idx[:, 0].astype(np.int64)

    def _decode_rows(self, codes: np.ndarray) -> np.ndarray:
        return self.centroids[codes]
