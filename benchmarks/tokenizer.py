"""Tokenizer benchmark: faiss k-means fit vs scikit-learn MiniBatchKMeans, and encode throughput.

Both k-means implementations fit the same N×d sample with the same K in this run; the script
prints both times, their ratio (target: faiss ≥ 5× faster) and the mean squared distance to the
nearest centroid each reaches (so a speed-up is not bought with a worse fit). Then it measures
``Tokenizer.encode`` throughput (particles/s) of each method on padded jets.

The sample is real particles (log_pt, deta, dphi of a converted dataset's train split, normalised,
resampled with replacement to N with a little jitter) with ``--data``, else a Gaussian mixture.

    python benchmarks/tokenizer.py --data results/default/data              # 1M x 3, K = 512
    python benchmarks/tokenizer.py --n 100000 --k 256 --skip-sklearn        # quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from harness import timed

from physfm.tokenizers.binning import BinningTokenizer
from physfm.tokenizers.kmeans import KMeansTokenizer, gpu_available, kmeans_centroids
from physfm.tokenizers.normalization import Normalizer
from physfm.tokenizers.options import BinningConfig, KMeansConfig, VQVAEConfig
from physfm.tokenizers.vqvae import VQVAE, VQVAETokenizer

FEATURES = ["log_pt", "deta", "dphi"]


def make_sample(n: int, d: int, data: Path | None, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if data is not None:
        from physfm.tokenizers.sample import sample_particles

        x = sample_particles(data, "train", FEATURES[:d], 2_000_000, seed)
        z = Normalizer.fit(FEATURES[:d], x).transform(x)
        out = z[rng.integers(len(z), size=n)]
        return (out + rng.normal(scale=0.01, size=out.shape)).astype(np.float32)
    centres = rng.normal(scale=3.0, size=(50, d))
    return (centres[rng.integers(50, size=n)] + rng.normal(size=(n, d))).astype(np.float32)


def mse_to_nearest(x: np.ndarray, centroids: np.ndarray) -> float:
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, _ = index.search(x, 1)
    return float(dist.mean())


def bench_kmeans(x: np.ndarray, k: int, niter: int, seed: int, skip_sklearn: bool) -> dict:
    t0 = time.perf_counter()
    cents = kmeans_centroids(x, k, niter=niter, seed=seed)
    faiss_s = time.perf_counter() - t0
    out = {"faiss_seconds": faiss_s, "faiss_mse": mse_to_nearest(x, cents), "faiss_gpu": gpu_available()}
    print(f"faiss k-means      : {faiss_s:8.2f} s   mse {out['faiss_mse']:.5f}   ({niter} iterations)")
    if skip_sklearn:
        return out
    from sklearn.cluster import MiniBatchKMeans

    t0 = time.perf_counter()
    mbk = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1, batch_size=1024).fit(x)
    sk_s = time.perf_counter() - t0
    out.update(
        sklearn_seconds=sk_s,
        sklearn_mse=mse_to_nearest(x, mbk.cluster_centers_),
        sklearn_steps=int(mbk.n_steps_),
        speedup=sk_s / faiss_s,
    )
    print(f"sklearn MiniBatch  : {sk_s:8.2f} s   mse {out['sklearn_mse']:.5f}   ({mbk.n_steps_} steps of 1024)")
    print(f"faiss speed-up     : {out['speedup']:8.1f} x   (target >= 5 x)")
    return out


def bench_encode(x: np.ndarray, k: int, n_particles: int, repeats: int = 3) -> dict:
    """Encode throughput on padded jets of 64 slots, ~50 real particles each, for every method."""
    d = x.shape[1]
    feats = FEATURES[:d] if d <= 3 else [f"f{i}" for i in range(d)]
    norm = Normalizer(feats, np.zeros(d), np.ones(d))
    rng = np.random.default_rng(0)
    n_jets, slots = n_particles // 50, 64
    jets = x[rng.integers(len(x), size=n_jets * slots)].reshape(n_jets, slots, d)
    mask = np.arange(slots)[None, :] < rng.integers(30, 71, size=n_jets)[:, None].clip(max=slots)
    n_real = int(mask.sum())
    cents = x[rng.choice(len(x), size=k, replace=False)]
    n_bins = int(round(k ** (1 / d)))
    edges = np.stack([np.quantile(x[:100_000, j], np.linspace(0, 1, n_bins + 1)) for j in range(d)])
    toks = {
        "kmeans": KMeansTokenizer(feats, norm, cents, KMeansConfig()),
        "binning": BinningTokenizer(feats, norm, edges, 0.5 * (edges[:, 1:] + edges[:, :-1]), BinningConfig()),
    }
    for name, conditional in (("vqvae", False), ("vqvae-set", True)):
        cfg = VQVAEConfig(conditional=conditional)
        toks[name] = VQVAETokenizer(feats, norm, VQVAE(d, k, cfg), cfg)
    out = {}
    for name, tok in toks.items():
        tok.encode(jets[:10], mask[:10])  # warm-up
        best = min(timed(tok.encode, jets, mask) for _ in range(repeats))
        out[name] = n_real / best
        print(f"encode {name:10s}  : {out[name]:12,.0f} particles/s  (K={tok.codebook_size}, {n_real} particles)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="converted dataset: sample its train particles (default: synthetic)")
    p.add_argument("--n", type=int, default=1_000_000, help="sample size N (default 1M)")
    p.add_argument("--d", type=int, default=3, help="dimensions (synthetic sample; with --data at most 3)")
    p.add_argument("--k", type=int, default=512, help="codebook size K (default 512)")
    p.add_argument("--niter", type=int, default=25, help="faiss iterations (the tokenizer's default)")
    p.add_argument("--encode-particles", type=int, default=200_000)
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    x = make_sample(args.n, args.d, args.data, args.seed)
    print(
        f"sample {x.shape[0]:,} x {x.shape[1]} ({'real particles' if args.data else 'Gaussian mixture'}), "
        f"K={args.k}; {platform.processor() or platform.machine()}, faiss threads {faiss.omp_get_max_threads()}, "
        f"torch threads {torch.get_num_threads()}"
    )
    result = {"n": args.n, "d": x.shape[1], "k": args.k, "real_data": args.data is not None}
    result["kmeans"] = bench_kmeans(x, args.k, args.niter, args.seed, args.skip_sklearn)
    result["encode_particles_per_second"] = bench_encode(x, args.k, args.encode_particles)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
