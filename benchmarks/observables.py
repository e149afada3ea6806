"""Jet-observables throughput: `physfm observables` parts vs one plain FastJet clustering of the same jets.

The reference is the cheapest FastJet pass over the same input: clustering every jet's
constituents once (C/A, R = 1000, the multi-event awkward interface), doing nothing else. The
script prints jets/s of the reference, of each part of :func:`physfm.data.substructure.jet_observables`
(numpy sums, soft drop, N-subjettiness) and of the whole, and the ratio whole / reference.

Input: the train split of a converted jets dataset (e.g. from `physfm generate jets` + `physfm convert`).

    python benchmarks/observables.py --data results/default/data --max-jets 5000
"""

from __future__ import annotations

import argparse

import numpy as np
from harness import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="jets dataset directory")
    parser.add_argument("--split", default="train")
    parser.add_argument("--max-jets", type=int, default=5000)
    args = parser.parse_args()

    import fastjet

    from physfm.data import substructure as obs
    from physfm.data.loader import open_split

    split = open_split(args.data, args.split)
    block = split.read(np.arange(min(args.max_jets, len(split))))
    names = split.dataset.feature_names()
    cols = [
        block.particles[:, names.index(c)].astype(np.float64) for c in ("part_px", "part_py", "part_pz", "part_energy")
    ]
    jets = obs.jagged_constituents(block.offsets, *cols)
    obs.silence_fastjet_banner()
    n = len(block)

    def rate(fn) -> float:
        return n / timed(fn)

    ca = fastjet.JetDefinition(fastjet.cambridge_algorithm, obs.CA_RECLUSTER_R)
    reference = rate(lambda: fastjet.ClusterSequence(jets, ca).inclusive_jets())
    soft_drop = rate(lambda: obs.soft_drop_mass(jets))
    nsub = rate(lambda: obs.nsubjettiness(jets))
    whole = rate(lambda: obs.jet_observables(block.offsets, *cols))
    print(f"{n} jets of {args.data} ({args.split}), mean multiplicity {np.diff(block.offsets).mean():.1f}")
    print(f"reference: one C/A clustering      {reference:10.0f} jets/s")
    print(f"soft drop (contrib SoftDrop)       {soft_drop:10.0f} jets/s")
    print(f"N-subjettiness (contrib Njettiness) {nsub:9.0f} jets/s")
    print(f"all observables                    {whole:10.0f} jets/s")
    print(f"ratio all observables / reference: {whole / reference:.3f}")


if __name__ == "__main__":
    main()
