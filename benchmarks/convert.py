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

import uproot

from physfm.data.convert import convert
from physfm.data.replicate import BRANCHES, rotated_copies

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
    """n_jets rotated copies of the source jets in files of per_file, written once (cached in out):
    rewriting 169 MB before each measurement left dirty pages being flushed during the timed runs."""
    return rotated_copies(sources, out, n_jets, per_file, seed)


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
