"""Jet substructure of constituent four-momenta, with FastJet and FastJet contrib (issue 18).

Per jet, from its constituents' ``px, py, pz, E`` (GeV), the observables ``NAMES``:

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
                  (unoptimised kT axes: tau3 > tau2 can happen)
``tau21, tau32``  tau2/tau1 and tau3/tau2 (0 where the denominator is 0)
``pt_d``          sqrt(sum_i pT_i^2) / sum_i pT_i
``girth``         sum_i pT_i dR(i, jet) / pT_jet
================  ======================================================================================

Distances dR are in (rapidity, azimuth), as FastJet measures them. The per-jet sums are vectorised
with numpy over flat constituent rows; soft drop and N-subjettiness run in FastJet's C++ over many
jets per call (its multi-event awkward interface). The generator's ``jet_sdmass`` comes from
:func:`soft_drop_mass` too. Datasets' observables are cached by :mod:`physfm.baselines.observables`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from physfm.data.shards import DataError

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

CHUNK_JETS = 20_000  #: jets handed to FastJet per call

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
