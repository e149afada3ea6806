"""Conversion throughput: `physfm convert` vs a bare uproot read of the same branches.

The reference is the practical limit for any converter: reading the same branches of the same
files with ``uproot`` into awkward arrays and doing nothing else. The script prints both rates and
their ratio (target: convert >= 0.5x the bare read).

Input: Pythia 8 jets from ``physfm generate jets`` (cached in --cache), replicated to --n-jets
with a random azimuthal rotation per copy (an exact symmetry of the event: px, py and jet_phi
rotate, everything else is unchanged), so the file set holds N distinct, realistic jets without
simulating all of them.

    python benchmarks/convert.py --n-jets 100000 --pythia-jets 4000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from physfm.data.convert import convert
from physfm.data.jetclass import ALL_LABELS, JET_BRANCHES, PARTICLE_BRANCHES

BRANCHES = list(PARTICLE_BRANCHES) + list(JET_BRANCHES)
LABELS = ["label_QCD", "label_Tbqq", "label_Wqq", "label_Zqq"]


def pythia_jets(cache: Path, n: int, seed: int) -> list[Path]:
    from physfm.data.generate_jets import generate_jets

    target = cache / f"pythia_{n}_{seed}"
    if not (target / "done").exists():
        shutil.rmtree(target, ignore_errors=True)
        generate_jets(target, n_jets=n, seed=seed, n_files=1, progress=True)
        (target / "done").touch()
    return sorted(target.glob("*.root"))


def replicate(sources: list[Path], out: Path, n_jets: int, per_file: int, seed: int) -> list[Path]:
    """Write n_jets jets in files of per_file, each a rotated copy of a source jet (cached in out).

    Written once: rewriting 169 MB before each measurement left dirty pages being flushed to
    disk during the timed runs.
    """
    done = out / f"done_{per_file}_{seed}"
    if done.exists():
        return sorted(out.glob("bench_*.root"))
    done.parent.mkdir(parents=True, exist_ok=True)
    for old in out.glob("bench_*.root"):
        old.unlink()
    arrays = ak.concatenate([uproot.open(p)["tree"].arrays(BRANCHES + list(ALL_LABELS)) for p in sources])
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths, written = [], 0
    while written < n_jets:
        n = min(per_file, n_jets - written)
        idx = np.arange(written, written + n) % len(arrays)
        a = arrays[idx]
        phi = rng.uniform(-np.pi, np.pi, n).astype(np.float32)
        c, s = np.cos(phi), np.sin(phi)
        cols = {b: a[b] for b in BRANCHES + list(ALL_LABELS)}
        cols["part_px"] = a["part_px"] * c - a["part_py"] * s
        cols["part_py"] = a["part_px"] * s + a["part_py"] * c
        cols["jet_phi"] = np.mod(a["jet_phi"] + phi + np.pi, 2 * np.pi) - np.pi
        types = {b: ("var * float32" if b in PARTICLE_BRANCHES else "float32") for b in BRANCHES}
        types.update({b: "bool" for b in ALL_LABELS})
        path = out / f"bench_{len(paths):03d}.root"
        with uproot.recreate(path) as f:
            tree = f.mktree("tree", types)
            tree.extend({b: (ak.values_astype(v, np.float32) if b in BRANCHES else v) for b, v in cols.items()})
        paths.append(path)
        written += n
    done.touch()
    return paths


def bare_uproot(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    n = 0
    for p in paths:
        arr = uproot.open(p)["tree"].arrays(BRANCHES + LABELS, library="ak")
        n += len(arr)
    return n / (time.perf_counter() - t0)


def physfm_convert(paths: list[Path], out: Path, workers: int) -> float:
    t0 = time.perf_counter()
    manifest, stats = convert(
        "jetclass",
        [str(p) for p in paths],
        out,
        shard_events=10_000,
        reader_options={"labels": LABELS},
        workers=workers,
        progress=False,
    )
    return stats.events_in / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-jets", type=int, default=100_000)
    ap.add_argument("--pythia-jets", type=int, default=4000)
    ap.add_argument("--per-file", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="convert's worker processes (default 2)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "physfm-bench")
    args = ap.parse_args()
    os.environ["PHYSFM_TRACKING"] = "0"

    sources = pythia_jets(args.cache, args.pythia_jets, seed=1)
    files = replicate(sources, args.cache / f"files_{args.n_jets}", args.n_jets, args.per_file, seed=2)
    size = sum(p.stat().st_size for p in files) / 1e6
    print(f"input: {args.n_jets} jets in {len(files)} files, {size:.0f} MB; convert --workers {args.workers}")
    ref, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            ref.append(bare_uproot(files))
            ours.append(physfm_convert(files, Path(tmp) / f"out{r}", args.workers))
            print(f"  repeat {r}: bare uproot {ref[-1]:,.0f} jets/s   physfm convert {ours[-1]:,.0f} jets/s")
    best_ref, best = max(ref), max(ours)
    print(f"bare uproot read : {best_ref:,.0f} jets/s (best of {args.repeats})")
    print(f"physfm convert   : {best:,.0f} jets/s (best of {args.repeats})")
    print(f"ratio convert / uproot = {best / best_ref:.2f}  (target >= 0.5)")
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
