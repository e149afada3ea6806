"""Jet observables computed from the constituents of any JetClass-schema dataset (issue 18).

The inputs are the stored four-momenta ``part_px, part_py, part_pz, part_energy`` of every
constituent (all of them: the load-time ``max_len`` truncation does not apply here). Per jet:

================  ======================================================================================
``m``             invariant mass of the summed constituent four-momenta, GeV
``m_sd``          soft-drop mass, GeV: FastJet contrib ``SoftDrop(beta=0, z_cut=0.1, R0=0.8)`` on the
                  C/A reclustering of all constituents (R = 1000, as contrib reclusters; the groomer
                  walks that C/A history, dropping the softer branch while min(pT1, pT2)/(pT1 + pT2) < 0.1)
``pt``            transverse momentum of the summed constituents, GeV
``multiplicity``  number of constituents
``tau1..tau3``    N-subjettiness (FastJet contrib ``Njettiness``): ``KT_Axes`` (the N exclusive-kT
                  subjets of the constituents) and ``NormalizedMeasure(beta=1, R0=0.8)``:
                  tau_N = sum_i pT_i min_k dR(i, axis_k) / (sum_i pT_i R0); 0 when N >= multiplicity
``tau21, tau32``  tau2/tau1 and tau3/tau2 (0 where the denominator is 0)
``pt_d``          sqrt(sum_i pT_i^2) / sum_i pT_i
``girth``         sum_i pT_i dR(i, jet) / pT_jet
================  ======================================================================================

Distances dR are in (rapidity, azimuth), as FastJet measures them. The per-jet sums are vectorised
with numpy over the flat constituent rows; soft drop and N-subjettiness run in FastJet's C++ over
many jets per call (its multi-event awkward interface).

Observables are computed once per dataset (:func:`write_observables`, the ``physfm observables``
stage) into ``observables.h5`` beside a ``manifest.json`` keyed by the dataset's ``data_version``
and the definition above; :func:`load_observables` checks both. No label is stored with them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from physfm.data.dataset import Dataset, open_dataset
from physfm.data.shards import SPLITS, DataError, EventBlock, feature_names
from physfm.io import atomic_dir, read_json, sha256_file, sha256_json, write_json

#: Column order of every observables array.
NAMES: tuple[str, ...] = (
    "m",
    "m_sd",
    "pt",
    "multiplicity",
    "tau1",
    "tau2",
    "tau3",
    "tau21",
    "tau32",
    "pt_d",
    "girth",
)

SOFT_DROP = {"z_cut": 0.1, "beta": 0.0, "R0": 0.8}
NSUBJETTINESS = {"axes": "KT_Axes", "measure": "NormalizedMeasure", "beta": 1.0, "R0": 0.8, "N": (1, 2, 3)}
CA_RECLUSTER_R = 1000.0  #: FastJet's largest allowed radius: every constituent ends in one C/A jet

#: What the cache is keyed by besides the data_version: change any of it and caches are refused.
DEFINITION: dict[str, Any] = {
    "version": 1,
    "names": list(NAMES),
    "soft_drop": {**SOFT_DROP, "reclustering": f"cambridge_algorithm R={CA_RECLUSTER_R}"},
    "nsubjettiness": {**NSUBJETTINESS, "N": list(NSUBJETTINESS["N"])},
    "distances": "rapidity-azimuth",
}

FILE = "observables.h5"
MANIFEST = "manifest.json"
CHUNK_JETS = 20_000  #: jets handed to FastJet per call
_MOMENTA = ("part_px", "part_py", "part_pz", "part_energy")

_BANNER_DONE = False


@contextlib.contextmanager
def stdout_fd_silenced() -> Iterator[None]:
    """Send the process's file descriptor 1 to /dev/null (to swallow C++ banners)."""
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def silence_fastjet_banner() -> None:
    """FastJet prints a banner on its first clustering in a process; do that clustering silently."""
    global _BANNER_DONE
    if _BANNER_DONE:
        return
    import awkward as ak
    import fastjet

    dummy = ak.Array([[{"px": 1.0, "py": 0.0, "pz": 0.0, "E": 1.0}]])
    with stdout_fd_silenced():
        fastjet.ClusterSequence(dummy, fastjet.JetDefinition(fastjet.antikt_algorithm, 0.8))
    _BANNER_DONE = True


# --------------------------------------------------------------------------- per-jet computation
def jagged_constituents(offsets: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray) -> Any:
    """Flat constituent rows + offsets as the awkward array of ``px, py, pz, E`` records FastJet reads."""
    import awkward as ak

    flat = ak.zip({"px": px, "py": py, "pz": pz, "E": e})
    return ak.unflatten(flat, np.diff(offsets))


def soft_drop_mass(constituents: Any) -> np.ndarray:
    """Soft-drop mass (``SOFT_DROP``) of each jet of an awkward array of ``px, py, pz, E`` records."""
    import awkward as ak
    import fastjet

    if len(constituents) == 0:
        return np.zeros(0)
    silence_fastjet_banner()
    ca = fastjet.JetDefinition(fastjet.cambridge_algorithm, CA_RECLUSTER_R)
    groomed = fastjet.ClusterSequence(constituents, ca).exclusive_jets_softdrop_grooming(
        njets=1, beta=SOFT_DROP["beta"], symmetry_cut=SOFT_DROP["z_cut"], R0=SOFT_DROP["R0"]
    )
    return ak.to_numpy(groomed.msoftdrop).astype(np.float64)


def nsubjettiness(constituents: Any) -> np.ndarray:
    """``(n_jets, 3)`` tau_1..tau_3 (``NSUBJETTINESS``) of each jet of an awkward array of records."""
    import awkward as ak
    import fastjet

    n_axes = list(NSUBJETTINESS["N"])
    if len(constituents) == 0:
        return np.zeros((0, len(n_axes)))
    silence_fastjet_banner()
    # the jet definition is not used by Njettiness (it works on each jet's constituents)
    cs = fastjet.ClusterSequence(constituents, fastjet.JetDefinition(fastjet.kt_algorithm, CA_RECLUSTER_R))
    taus = cs.njettiness(
        measure_definition=NSUBJETTINESS["measure"],
        axes_definition=NSUBJETTINESS["axes"],
        njets=n_axes,
        beta=NSUBJETTINESS["beta"],
        R0=NSUBJETTINESS["R0"],
    )
    return np.asarray(ak.to_numpy(taus), dtype=np.float64).reshape(len(constituents), len(n_axes))


def _rapidity(e: np.ndarray, pz: np.ndarray) -> np.ndarray:
    return 0.5 * np.log(np.maximum(e + pz, 1e-300) / np.maximum(e - pz, 1e-300))


def jet_observables(offsets: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``(n_jets, len(NAMES))`` float64 observables of jets given as flat constituent rows + offsets.

    Jet ``j`` owns rows ``offsets[j]:offsets[j+1]``; every jet needs at least one constituent.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    px, py, pz, e = (np.asarray(a, dtype=np.float64) for a in (px, py, pz, e))
    counts = np.diff(offsets)
    n = len(counts)
    if n == 0:
        return np.zeros((0, len(NAMES)))
    if np.any(counts < 1):
        raise DataError(f"{int(np.sum(counts < 1))} jet(s) without constituents: observables need at least one")
    starts = offsets[:-1] - offsets[0]

    def jet_sum(v: np.ndarray) -> np.ndarray:
        return np.add.reduceat(v, starts)

    jpx, jpy, jpz, je = jet_sum(px), jet_sum(py), jet_sum(pz), jet_sum(e)
    jpt = np.hypot(jpx, jpy)
    m = np.sqrt(np.maximum(je**2 - jpx**2 - jpy**2 - jpz**2, 0.0))
    pt = np.hypot(px, py)
    sum_pt = jet_sum(pt)
    pt_d = np.sqrt(jet_sum(pt**2)) / sum_pt
    jet_of = np.repeat(np.arange(n), counts)
    dy = _rapidity(e, pz) - _rapidity(je, jpz)[jet_of]
    dphi = (np.arctan2(py, px) - np.arctan2(jpy, jpx)[jet_of] + np.pi) % (2 * np.pi) - np.pi
    girth = jet_sum(pt * np.hypot(dy, dphi)) / jpt

    m_sd = np.empty(n)
    taus = np.empty((n, 3))
    for a in range(0, n, CHUNK_JETS):
        b = min(a + CHUNK_JETS, n)
        rows = slice(int(starts[a]), int(starts[b - 1] + counts[b - 1]))
        jag = jagged_constituents(offsets[a : b + 1] - offsets[a], px[rows], py[rows], pz[rows], e[rows])
        m_sd[a:b] = soft_drop_mass(jag)
        taus[a:b] = nsubjettiness(jag)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau21 = np.where(taus[:, 0] > 0, taus[:, 1] / taus[:, 0], 0.0)
        tau32 = np.where(taus[:, 1] > 0, taus[:, 2] / taus[:, 1], 0.0)
    columns = {
        "m": m,
        "m_sd": m_sd,
        "pt": jpt,
        "multiplicity": counts.astype(np.float64),
        "tau1": taus[:, 0],
        "tau2": taus[:, 1],
        "tau3": taus[:, 2],
        "tau21": tau21,
        "tau32": tau32,
        "pt_d": pt_d,
        "girth": girth,
    }
    return np.stack([columns[k] for k in NAMES], axis=1)


def block_observables(block: EventBlock, manifest: dict[str, Any]) -> np.ndarray:
    """Observables of the events of ``block`` (a jets dataset's shard layout)."""
    if manifest.get("modality") != "jets":
        raise DataError(
            f"jet observables need a jets dataset; this one is modality '{manifest.get('modality')}' "
            "(IceCube studies use LineFit as their zero-label baseline)"
        )
    stored = feature_names(manifest, "particle")
    missing = [c for c in _MOMENTA if c not in stored]
    if missing:
        raise DataError(f"jet observables need the stored columns {', '.join(missing)} (JetClass schema)")
    cols = [block.particles[:, stored.index(c)] for c in _MOMENTA]
    return jet_observables(block.offsets, *cols)


UNIT_EVENTS = 2000  #: events per work unit when computing with several processes


def _unit_values(unit: tuple[str, np.ndarray, dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Observables and keys of the events at ``local`` (sorted positions) of one shard."""
    from physfm.data.loader import read_block

    path, local, manifest = unit
    block = read_block(Path(path), int(local[0]), int(local[-1]) + 1)
    if len(local) != len(block):
        sel = np.zeros(len(block), dtype=bool)
        sel[local - local[0]] = True
        block = block.select(sel)
    return block_observables(block, manifest), block.event_key.astype(np.uint64)


def compute_split(
    data_dir: Dataset | str | Path,
    split: str,
    indices: np.ndarray | None = None,
    progress: bool = False,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``(values, event_key)`` of a split's events (or those at the sorted ``indices``), in stored order.

    With ``workers > 1`` pieces of ``UNIT_EVENTS`` events run in that many processes; the result is
    the same whatever the number.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    from physfm.data.loader import open_split

    s = open_split(data_dir, split)
    want = None if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
    units, start = [], 0
    for path, n in s.shards:
        local = np.arange(n) if want is None else want[(want >= start) & (want < start + n)] - start
        start += n
        units += [(str(path), local[a : a + UNIT_EVENTS], s.manifest) for a in range(0, len(local), UNIT_EVENTS)]
    if not units:
        return np.zeros((0, len(NAMES))), np.zeros(0, dtype=np.uint64)
    bar = tqdm(total=sum(len(u[1]) for u in units), desc=f"observables {split}", disable=not progress, unit="jet")
    results = []
    if workers > 1 and len(units) > 1:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for unit, res in zip(units, pool.map(_unit_values, units), strict=True):
                results.append(res)
                bar.update(len(unit[1]))
    else:
        for unit in units:
            results.append(_unit_values(unit))
            bar.update(len(unit[1]))
    bar.close()
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


# --------------------------------------------------------------------------- the cache (one per dataset)
def observables_version(data_version: str) -> str:
    """Key of a cache: the dataset's data_version and the observables' definition."""
    return sha256_json({"data_version": data_version, "definition": DEFINITION})[:16]


def write_observables(
    data_dir: Dataset | str | Path,
    out_dir: str | Path,
    splits: Sequence[str] = SPLITS,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Compute the observables of every event of ``splits`` into ``out_dir`` (atomically); return its manifest.

    ``observables.h5`` holds ``{split}/values`` (n, len(NAMES)) float64 and ``{split}/event_key``, in the
    split's stored order; labels are not stored. The files are the same whatever ``workers``.
    """
    ds = open_dataset(data_dir, verify=True)
    data_manifest = ds.manifest
    counts: dict[str, int] = {}
    with atomic_dir(out_dir) as tmp:
        with h5py.File(tmp / FILE, "w", libver="earliest", track_order=False) as f:
            for split in splits:
                if split not in data_manifest["n_events"]:
                    continue
                values, keys = compute_split(ds, split, progress=progress, workers=workers)
                f.create_dataset(f"{split}/values", data=values, track_times=False)
                f.create_dataset(f"{split}/event_key", data=keys, track_times=False)
                counts[split] = len(keys)
        manifest = {
            "kind": "physfm-observables",
            "data_version": data_manifest["data_version"],
            "observables_version": observables_version(data_manifest["data_version"]),
            "definition": DEFINITION,
            "n_events": counts,
            "files": {FILE: sha256_file(tmp / FILE)},
        }
        write_json(tmp / MANIFEST, manifest)
    return manifest


def check_observables(obs_dir: str | Path, data_dir: Dataset | str | Path) -> dict[str, Any]:
    """The cache's manifest, after checking it matches ``data_dir`` and this definition and its file hash."""
    obs_dir = Path(obs_dir)
    if not (obs_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{obs_dir} holds no observables ({MANIFEST} missing); run `physfm observables`")
    manifest = read_json(obs_dir / MANIFEST)
    version = open_dataset(data_dir).data_version
    if manifest.get("data_version") != version or manifest.get("definition") != DEFINITION:
        raise DataError(
            f"observables in {obs_dir} were computed for data_version {manifest.get('data_version')} "
            f"(definition v{manifest.get('definition', {}).get('version')}), but {data_dir} is {version} "
            f"(definition v{DEFINITION['version']}); re-run `physfm observables --data {data_dir} --out {obs_dir}`"
        )
    if sha256_file(obs_dir / FILE) != manifest["files"][FILE]:
        raise DataError(f"{obs_dir / FILE} does not match its manifest (modified?); re-run `physfm observables`")
    return manifest


def load_observables(
    obs_dir: str | Path, data_dir: Dataset | str | Path, split: str, indices: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(values, event_key)`` of a split (or of its events at the sorted ``indices``) from a checked cache."""
    manifest = check_observables(obs_dir, data_dir)
    if split not in manifest["n_events"]:
        raise KeyError(f"observables in {obs_dir} have no '{split}' split (have {', '.join(manifest['n_events'])})")
    with h5py.File(Path(obs_dir) / FILE, "r") as f:
        values, keys = f[f"{split}/values"][:], f[f"{split}/event_key"][:]
    if indices is not None:
        idx = np.unique(np.asarray(indices, dtype=np.int64))
        values, keys = values[idx], keys[idx]
    return values, keys
