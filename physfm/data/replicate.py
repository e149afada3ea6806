"""Large jet sets without simulating them: azimuthal rotations of real jets (benchmarks, scale tests).

A rotation about the beam axis is an exact symmetry of a jet: ``part_px``, ``part_py`` and ``jet_phi``
rotate, everything else is unchanged. Each copy gets its own random angle, so the copies are distinct
events (distinct content keys) with the physics of the source jets.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from physfm.data.jetclass import ALL_LABELS, JET_BRANCHES, PARTICLE_BRANCHES

BRANCHES = list(PARTICLE_BRANCHES) + list(JET_BRANCHES)


def rotated_copies(sources: list[Path], out: Path, n_jets: int, per_file: int, seed: int) -> list[Path]:
    """Write ``n_jets`` jets into ``out/bench_NNN.root`` files of ``per_file`` jets, each a rotated copy
    of a jet of the JetClass-schema ``sources`` (cycled in order). Cached: a ``done_*`` marker in
    ``out`` makes a second call with the same arguments return the files already there."""
    done = out / f"done_{n_jets}_{per_file}_{seed}"
    if done.exists():
        return sorted(out.glob("bench_*.root"))
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("bench_*.root"), *out.glob("done_*")]:
        old.unlink()
    arrays = ak.concatenate([uproot.open(p)["tree"].arrays(BRANCHES + list(ALL_LABELS)) for p in sources])
    rng = np.random.default_rng(seed)
    paths, written = [], 0
    types = {b: ("var * float32" if b in PARTICLE_BRANCHES else "float32") for b in BRANCHES}
    types.update({b: "bool" for b in ALL_LABELS})
    while written < n_jets:
        n = min(per_file, n_jets - written)
        a = arrays[np.arange(written, written + n) % len(arrays)]
        phi = rng.uniform(-np.pi, np.pi, n).astype(np.float32)
        c, s = np.cos(phi), np.sin(phi)
        cols = {b: a[b] for b in BRANCHES + list(ALL_LABELS)}
        cols["part_px"] = a["part_px"] * c - a["part_py"] * s
        cols["part_py"] = a["part_px"] * s + a["part_py"] * c
        cols["jet_phi"] = np.mod(a["jet_phi"] + phi + np.pi, 2 * np.pi) - np.pi
        path = out / f"bench_{len(paths):03d}.root"
        with uproot.recreate(path) as f:
            tree = f.mktree("tree", types)
            tree.extend({b: (ak.values_astype(v, np.float32) if b in BRANCHES else v) for b, v in cols.items()})
        paths.append(path)
        written += n
    done.touch()
    return paths
