"""Cost against size (issue 20): conversion in 1, 2 and 4 jobs, the loader's rate, embedding's peak RSS,
search latency; each with its log-log slope, for extrapolating to JetClass and IceCube Kaggle sizes.

Input: Pythia 8 jets (``physfm generate jets``, cached in --cache) replicated to each size by random
azimuthal rotations (physfm.data.replicate), in ROOT files of --per-file jets, written once.

* conversion: one job (``convert``), and G jobs simulated one after another on this machine
  (``convert --group g`` for each group, then ``convert-gather``), each job's wall and CPU time
  measured; on a cluster the groups run side by side, so the wall time is max(part) + gather. The
  reference is the one-job conversion of the same files in the same run (and the data_version of
  every G must equal it).
* loader: padded batches of the train split through ``ShardDataset`` (batch 256, max_len 128).
* embedding: ``embed_split`` of a small backbone (d_model 32, 1 layer, max_len 64) over the first N
  train events, in a fresh process each (peak RSS from getrusage), against the RSS of the same
  process before embedding (imports, model, dataset opened) as the reference.
* search: 1000 single-vector queries against flat (exact) and IVF indices over N clustered vectors
  (d 32, the smoke backbones' width), median and p99 latency, IVF recall@10 against exact search.

    python benchmarks/scale.py --sizes 30000 100000 300000 --jobs 1 2 4 \\
        --embed-sizes 30000 100000 --search-sizes 100000 300000 1000000 --out scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ["label_QCD", "label_Tbqq", "label_Wqq", "label_Zqq"]
PARTS = ("conversion", "embedding", "search")
SETTINGS = {"shard_events": 10_000, "reader_options": {"labels": LABELS}, "progress": False}


def slope(sizes: list[float], costs: list[float]) -> float:
    """Exponent b of cost ∝ size^b (least squares in log-log); 1 is linear."""
    if len(sizes) < 2:
        return float("nan")
    return float(np.polyfit(np.log(sizes), np.log(costs), 1)[0])


def _timed(fn: Any) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def conversion(files: list[Path], work: Path, jobs: list[int]) -> dict[str, Any]:
    from physfm.data.convert import convert
    from physfm.data.convert_parts import convert_part, gather_parts

    results: dict[str, Any] = {}
    (manifest, _), wall, cpu = _timed(lambda: convert("jetclass", files, work / "one", **SETTINGS))
    reference = manifest["data_version"]
    results["1"] = {"wall": wall, "cpu": cpu, "cluster_wall": wall, "data_version": reference}
    for g in (j for j in jobs if j > 1):
        parts = []
        for i in range(g):
            out = work / f"g{g}_{i}"
            _, w, c = _timed(
                lambda i=i, g=g, out=out: convert_part("jetclass", files, out, group=i, groups=g, **SETTINGS)
            )
            parts.append({"wall": w, "cpu": c})
        (gathered, _), gw, gc = _timed(
            lambda g=g: gather_parts([work / f"g{g}_{i}" for i in range(g)], work / f"data_{g}", progress=False)
        )
        assert gathered["data_version"] == reference, f"{g} jobs gave {gathered['data_version']} != {reference}"
        results[str(g)] = {
            "parts": parts,
            "gather": {"wall": gw, "cpu": gc},
            "cpu": sum(p["cpu"] for p in parts) + gc,
            "cluster_wall": max(p["wall"] for p in parts) + gw,
            "data_version": gathered["data_version"],
        }
    return results


def loader_rate(data: Path) -> dict[str, float]:
    import torch

    from physfm.data.loader import ShardDataset

    torch.set_num_threads(1)
    ds = ShardDataset(data, "train", max_len=128, batch_size=256)
    t0, n = time.perf_counter(), 0
    for batch in ds:
        n += len(batch["label"])
    wall = time.perf_counter() - t0
    return {"events": n, "wall": wall, "events_per_second": n / wall}


def embed_one(data: str, n: int, reference: bool = False) -> None:
    """Run in a fresh process: embed the first n train events (``reference``: only read them with
    ``load_arrays``, the whole-split way), print wall time and peak RSS as JSON."""
    import torch

    from physfm.data.dataset import open_dataset
    from physfm.evaluate.evaluate import embed_split
    from physfm.models.backbone import Backbone, BackboneConfig

    torch.set_num_threads(1)
    ds = open_dataset(data)
    names = ds.feature_names("particle")
    torch.manual_seed(0)
    model = Backbone(BackboneConfig(n_features=len(names), d_model=32, n_layers=1, n_heads=4, max_len=64)).eval()
    bmeta = {
        "features": names,
        "max_len": 64,
        "config": {"vocab_size": 0},
        "objective": "mpm",
        "norm": {"mean": [0.0] * len(names), "std": [100.0] * len(names)},
    }
    before = _peak_rss_mb()
    t0 = time.perf_counter()
    if reference:  # the whole split in memory first, as embedding did before streaming
        from physfm.data.loader import load_arrays

        emb = load_arrays(ds, "train", features=names, max_len=64, indices=np.arange(n))["label"]
    else:
        with torch.no_grad():
            emb, *_ = embed_split(model, bmeta, ds, "train", device="cpu", max_events=n)
    wall = time.perf_counter() - t0
    peak = _peak_rss_mb()
    print(json.dumps({"events": len(emb), "wall": wall, "rss_before_mb": before, "peak_rss_mb": peak}))


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike getrusage's ru_maxrss, it does not carry
    the peak of the process that forked this one over the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def embedding(data: Path, sizes: list[int]) -> dict[str, Any]:
    out = {}
    for n in sizes:
        row = {}
        for how in ("embed", "load_arrays"):
            cmd = [sys.executable, __file__, "--embed-one", str(data), str(n), how]
            env = {**os.environ, "PYTHONPATH": os.getcwd()}
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            row[how] = json.loads(res.stdout.strip().splitlines()[-1])
        out[str(n)] = {**row["embed"], "load_arrays_peak_rss_mb": row["load_arrays"]["peak_rss_mb"]}
    return out


def search(sizes: list[int], d: int = 32, queries: int = 1000, seed: int = 0) -> dict[str, Any]:
    import faiss

    from physfm.evaluate.search import build_index, index_recall, l2_normalize

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, d)).astype(np.float32)
    out = {}
    for n in sizes:
        emb = l2_normalize(centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, d)).astype(np.float32))
        q = emb[rng.choice(n, queries, replace=False)]
        row: dict[str, Any] = {}
        for kind in ("flat", "ivf"):
            (index, params), build, _ = _timed(lambda kind=kind, emb=emb: build_index(emb, kind))
            lat = []
            for i in range(len(q)):
                t0 = time.perf_counter()
                index.search(q[i : i + 1], 10)
                lat.append(time.perf_counter() - t0)
            lat_ms = 1e3 * np.array(lat)
            row[kind] = {
                "build_s": build,
                "median_ms": float(np.median(lat_ms)),
                "p99_ms": float(np.percentile(lat_ms, 99)),
                **{k: v for k, v in params.items() if k in ("nlist", "nprobe")},
            }
            if kind == "ivf":
                row[kind].update(index_recall(index, emb, k=10))
        out[str(n)] = row
        del emb
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[30_000, 100_000, 300_000])
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--embed-sizes", type=int, nargs="+", default=[30_000, 100_000])
    ap.add_argument("--search-sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--pythia-jets", type=int, default=2000)
    ap.add_argument("--per-file", type=int, default=10_000)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "physfm-bench")
    ap.add_argument("--out", type=Path, help="also write every number as JSON")
    ap.add_argument("--embed-one", nargs=3, metavar=("DATA", "N", "HOW"), help=argparse.SUPPRESS)
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="measure only these (default all)")
    args = ap.parse_args()
    os.environ["PHYSFM_TRACKING"] = "0"
    if args.embed_one:
        embed_one(args.embed_one[0], int(args.embed_one[1]), reference=args.embed_one[2] == "load_arrays")
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from convert import pythia_jets

    from physfm.data.replicate import rotated_copies

    report: dict[str, Any] = {"load_average_start": os.getloadavg(), "conversion": {}, "loader": {}}
    sources = pythia_jets(args.cache, args.pythia_jets, seed=1)
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        if "conversion" in args.only:
            for n in args.sizes:
                files = rotated_copies(sources, args.cache / f"scale_{n}", n, args.per_file, seed=2)
                work = Path(tmp) / str(n)
                work.mkdir()
                conv = conversion(files, work, args.jobs)
                report["conversion"][str(n)] = conv
                report["loader"][str(n)] = loader_rate(work / "one")
                line = "  ".join(
                    f"{g} job(s) {r['cluster_wall']:.1f} s wall, {r['cpu']:.1f} s CPU" for g, r in conv.items()
                )
                rate = report["loader"][str(n)]["events_per_second"]
                print(f"convert {n:>9,} jets: {line}; loader {rate:,.0f} jets/s", flush=True)
            sizes = [int(n) for n in report["conversion"]]
            for g in map(str, args.jobs):
                for what in ("cluster_wall", "cpu"):
                    b = slope(sizes, [report["conversion"][str(n)][g][what] for n in sizes])
                    print(f"slope of conversion {what} in {g} job(s): {b:.2f}")
            b = slope(sizes, [r["wall"] for r in report["loader"].values()])
            print(f"slope of the loader's wall time: {b:.2f}")
        if "embedding" in args.only:
            n = max(args.sizes)
            files = rotated_copies(sources, args.cache / f"scale_{n}", n, args.per_file, seed=2)
            data = Path(tmp) / "embed_data"
            if not data.exists():
                from physfm.data.convert import convert

                convert("jetclass", files, data, **SETTINGS)
            report["embedding"] = e = embedding(data, args.embed_sizes)
            for n, r in e.items():
                rss = f"peak RSS {r['peak_rss_mb']:.0f} MB (before embedding {r['rss_before_mb']:.0f}; "
                rss += f"load_arrays of the same events {r['load_arrays_peak_rss_mb']:.0f})"
                print(f"embed {int(n):>9,} jets: {r['wall']:.1f} s, {rss}", flush=True)
            sizes = [int(n) for n in e]
            print(
                f"slope of embedding wall: {slope(sizes, [r['wall'] for r in e.values()]):.2f}; of peak RSS: "
                f"{slope(sizes, [r['peak_rss_mb'] for r in e.values()]):.2f}; of load_arrays' peak RSS: "
                f"{slope(sizes, [r['load_arrays_peak_rss_mb'] for r in e.values()]):.2f}"
            )
    if "search" in args.only:
        report["search"] = s = search(args.search_sizes)
        for n, r in s.items():
            print(
                f"search {int(n):>9,} vectors: flat {r['flat']['median_ms']:.2f} ms, "
                f"ivf {r['ivf']['median_ms']:.3f} ms "
                f"(recall@10 {r['ivf']['recall_at_k']:.3f}, nlist {r['ivf']['nlist']}, nprobe {r['ivf']['nprobe']})"
            )
        for kind in ("flat", "ivf"):
            b = slope([int(n) for n in s], [r[kind]["median_ms"] for r in s.values()])
            print(f"slope of {kind} search latency: {b:.2f}")
    report["load_average_end"] = os.getloadavg()
    print(
        "load average (1, 5, 15 min) at start: {:.2f}, {:.2f}, {:.2f}; at end: {:.2f}, {:.2f}, {:.2f}".format(
            *report["load_average_start"], *report["load_average_end"]
        )
    )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
