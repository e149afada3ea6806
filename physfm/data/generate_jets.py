"""Generate boosted jets with Pythia 8 + FastJet and write them in the JetClass ROOT schema.

Each process (``qcd``, ``tbqq``, ``wqq``, ``zqq``) is simulated at 13.6 TeV with multi-parton
interactions, parton showers and hadronisation on. Visible final-state particles (all but
neutrinos) are clustered with anti-kt R = 0.8; jets with 500 < pT < 1000 GeV and |eta| < 2 that
match the hard-process objects of their process (as in JetClass) are kept.

Simulation settings for domain-shift studies ("trained on simulation, tested on data"): ``tune``
selects Pythia's ``Tune:pp`` (14, Monash 2013, is Pythia's default; 21 is ATLAS A14 with
NNPDF2.3LO), and ``smear_energy`` / ``smear_angle`` a simple detector smearing of every visible
particle before clustering (:func:`smear_particles`). The defaults leave the events as they were.

Dijet events for weakly supervised anomaly detection (CWoLa, docs/anomaly.md): the processes ``dijet`` (QCD
2 -> 2 with ``PhaseSpace:mHatMin = dijet_mhat_min``) and ``resonance`` (a heavy resonance A -> B C with B, C -> q q',
at the masses ``resonance = [m_A, m_B, m_C]``; Pythia's W' -> W Z with the three masses set by hand and the W' -> W Z
coupling switched on) keep, per event, the two leading anti-kt R = 0.8 jets when both have pT > ``DIJET_PT_MIN``
and |eta| < 2 (no truth matching). Each jet is one record in the JetClass schema (its constituents exactly as for
a single jet, so a backbone pretrained on jets reads it unchanged), with three more per-jet branches
(:data:`DIJET_BRANCHES`): ``event_id`` (the event's number within its process), ``jet_index`` (0 = the leading
jet, 1 = the subleading) and ``event_mjj`` (the dijet invariant mass). ``n_jets`` counts jets (two per event).
The two processes cannot be mixed with the single-jet ones in one sample.

The work is split into deterministic *work units* (one process, one output file, at most
``UNIT_JETS`` jets, with a Pythia seed derived from the user's seed), which run in a process
pool and are assembled in unit order, so the result does not depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import fastjet
import numpy as np
import uproot
from tqdm import tqdm

from physfm.data.jetclass import (
    ALL_LABELS,
    JET_BRANCHES,
    PARTICLE_BRANCHES,
    PROCESS_LABELS,
    TREE_NAME,
)
from physfm.data.substructure import silence_fastjet_banner, soft_drop_mass

try:  # the PyPI wheel ``pythia8mc`` installs the module under this name
    import pythia8mc as pythia8
except ImportError:  # pragma: no cover - a Pythia built from source names it ``pythia8``
    import pythia8

__all__ = [
    "generate_jets",
    "DEFAULT_PROCESSES",
    "DIJET_BRANCHES",
    "DIJET_PROCESSES",
    "JET_PT_RANGE",
    "JET_ABS_ETA_MAX",
    "JET_R",
]

DEFAULT_PROCESSES: tuple[str, ...] = ("qcd", "tbqq", "wqq", "zqq")

JET_R = 0.8  #: anti-kt radius, also the matching radius (soft drop: physfm.data.substructure.SOFT_DROP)
JET_PT_RANGE = (500.0, 1000.0)  #: GeV, exclusive bounds
JET_ABS_ETA_MAX = 2.0

DIJET_PT_MIN = 300.0  #: GeV: both leading jets of a dijet event are above this (and within |eta| < JET_ABS_ETA_MAX)
DIJET_PROCESSES = ("dijet", "resonance")  #: processes writing two jets per event (DIJET_BRANCHES)
DEFAULT_RESONANCE = (1500.0, 200.0, 80.0)  #: GeV: m_A, m_B, m_C of A -> B C (LHC Olympics R&D: 3500, 500, 100)
DEFAULT_DIJET_MHAT_MIN = 1000.0  #: GeV: QCD dijet PhaseSpace:mHatMin (below the sidebands of config/anomaly.yaml)
#: Per-jet branches of a dijet sample, after the JetClass ones (kept by ``physfm convert`` with ``event_branches``).
DIJET_BRANCHES: dict[str, str] = {
    "event_id": "count (the event's number within its process; both jets of an event share it)",
    "jet_index": "0 = leading, 1 = subleading jet of the event",
    "event_mjj": "GeV (invariant mass of the two leading jets)",
}
UNIT_JETS = 400  #: largest number of jets made by one work unit (one Pythia instance)
MAX_BATCH_EVENTS = 50  #: events asked of Pythia per call
MAX_EVENTS_PER_JET = 200  #: give up on a unit whose selection efficiency is below 1/this
PYTHIA_SEED_MAX = 900_000_000  #: Pythia accepts seeds 0..900_000_000 (0 means "use the clock")
WRITE_CHUNK_JETS = 20_000  #: jets per TTree.extend call (one basket per branch)
DEFAULT_TUNE = 14  #: Pythia's Tune:pp default (Monash 2013)

NEUTRINO_IDS = (12, 14, 16)
FILE_NAME = "jets_{index:03d}.root"

_COMMON_SETTINGS: tuple[str, ...] = (
    "Beams:idA = 2212",
    "Beams:idB = 2212",
    "Beams:eCM = 13600.",
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Random:setSeed = on",
)

_HADRONIC_W = ("24:onMode = off", "24:onIfAny = 1 2 3 4 5")

#: Pythia settings per process (on top of _COMMON_SETTINGS and the seed).
PROCESS_SETTINGS: dict[str, tuple[str, ...]] = {
    "qcd": ("HardQCD:all = on", "PhaseSpace:pTHatMin = 450."),
    "tbqq": (
        "Top:gg2ttbar = on",
        "Top:qqbar2ttbar = on",
        "PhaseSpace:pTHatMin = 450.",  # vs 400: 1.7x more jets per event, same share below 550
        "6:onMode = off",
        "6:onIfAll = 5 24",
        *_HADRONIC_W,
    ),
    "wqq": (
        "WeakBosonAndParton:qqbar2Wg = on",
        "WeakBosonAndParton:qg2Wq = on",
        "PhaseSpace:pTHatMin = 450.",
        *_HADRONIC_W,
    ),
    "dijet": ("HardQCD:all = on", "PhaseSpace:pTHatMin = 200."),  # + PhaseSpace:mHatMin (dijet_settings)
    "resonance": (  # A = W' (34), B = W (24), C = Z (23), masses set by resonance_settings
        "NewGaugeBoson:ffbar2Wprime = on",
        "Wprime:coup2WZ = 1.",  # Pythia's default 0 closes W' -> W Z
        "34:onMode = off",
        "34:onIfAll = 23 24",
        "24:onMode = off",
        "24:onIfAny = 1 2 3 4",  # no b: a heavy B would open W -> t b
        "23:onMode = off",
        "23:onIfAny = 1 2 3 4 5",
    ),
    "zqq": (
        "WeakBosonAndParton:qqbar2gmZg = on",
        "WeakBosonAndParton:qg2gmZq = on",
        "WeakZ0:gmZmode = 2",
        "PhaseSpace:pTHatMin = 450.",
        "23:onMode = off",
        "23:onIfAny = 1 2 3 4 5",
    ),
}

assert set(PROCESS_SETTINGS) == set(PROCESS_LABELS), "every labelled process needs settings"


# ----------------------------------------------------------------------------------------------
# Work planning and seeds
# ----------------------------------------------------------------------------------------------


@dataclass
class JetGenConfig:
    """Settings of ``physfm generate jets`` (config section ``data.generate``; IceCube keys aside)."""

    n_jets: int = 6000  # total, split evenly over the processes (or by weights)
    seed: int = 1
    processes: list[str] = field(default_factory=lambda: list(DEFAULT_PROCESSES))
    weights: list[float] = field(default_factory=list)  # relative share of each process ([]: even), e.g. [9, 1]
    files: int = 2  # output ROOT files
    tune: int = DEFAULT_TUNE  # Pythia Tune:pp (14 Monash 2013, Pythia's default; 21 ATLAS A14)
    smear_energy: float = 0.0  # detector smearing: relative Gaussian resolution of each particle's energy
    smear_angle: float = 0.0  # detector smearing: Gaussian resolution of each particle's eta and phi (rad)
    resonance: list[float] = field(default_factory=lambda: list(DEFAULT_RESONANCE))  # dijet: m_A, m_B, m_C (GeV)
    dijet_mhat_min: float = DEFAULT_DIJET_MHAT_MIN  # dijet: QCD PhaseSpace:mHatMin (GeV)


#: JetGenConfig fields that only the dijet processes read (left out of a single-jet sample's settings).
DIJET_KEYS = ("resonance", "dijet_mhat_min")


def dijet_settings(process: str, resonance: Sequence[float], mhat_min: float) -> tuple[str, ...]:
    """The Pythia settings of a dijet process beyond :data:`PROCESS_SETTINGS`: the QCD mHat cut, or the masses of
    A -> B C (each decay product's mass window +-50 %, the resonance's own width as Pythia computes it)."""
    if process == "dijet":
        return (f"PhaseSpace:mHatMin = {float(mhat_min)}",)
    if process != "resonance":
        return ()
    m_a, m_b, m_c = (float(m) for m in resonance)
    if not 0 < m_b + m_c < m_a:
        raise ValueError(f"resonance masses [m_A, m_B, m_C] need m_B + m_C < m_A, all positive, got {list(resonance)}")
    out = [f"34:m0 = {m_a}", f"34:mMin = {0.5 * m_a}", f"34:mMax = {1.5 * m_a}"]
    for pid, m in ((24, m_b), (23, m_c)):
        out += [f"{pid}:m0 = {m}", f"{pid}:mMin = {0.5 * m}", f"{pid}:mMax = {1.5 * m}"]
    return tuple(out)


@dataclass(frozen=True)
class WorkUnit:
    """One independent, seeded piece of work: ``n_jets`` jets of ``process`` for one file."""

    process: str
    file_index: int
    chunk_index: int
    n_jets: int
    pythia_seed: int
    tune: int = DEFAULT_TUNE
    smear_energy: float = 0.0
    smear_angle: float = 0.0
    resonance: tuple[float, ...] = DEFAULT_RESONANCE
    dijet_mhat_min: float = DEFAULT_DIJET_MHAT_MIN
    first_event: int = 0  # dijet processes: event_id of the unit's first event (ids count up within a process)


def derive_seed(*parts: object) -> int:
    """Map ``parts`` to a Pythia seed in 1..PYTHIA_SEED_MAX (0 is avoided: it means the clock)."""
    text = "physfm.generate_jets/" + "/".join(str(part) for part in parts)
    digest = hashlib.sha256(text.encode()).digest()
    return 1 + int.from_bytes(digest[:8], "little") % PYTHIA_SEED_MAX


def split_evenly(total: int, n_parts: int) -> list[int]:
    """Split ``total`` into ``n_parts`` integers differing by at most one, larger ones first."""
    base, extra = divmod(total, n_parts)
    return [base + (1 if i < extra else 0) for i in range(n_parts)]


def split_weighted(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainders, ties to the earlier part); equal
    weights give :func:`split_evenly`."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not len(w) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be positive numbers, got {list(weights)!r}")
    exact = total * w / w.sum()
    out = np.floor(exact).astype(np.int64)
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: total - int(out.sum())]:
        out[i] += 1
    return [int(n) for n in out]


def plan_units(
    n_jets: int,
    seed: int,
    processes: Sequence[str],
    n_files: int,
    weights: Sequence[float] | None = None,
    **simulation: Any,
) -> list[WorkUnit]:
    """Lay out the work units, ordered by file, then process, then chunk; ``weights``: each process's share
    (None or empty: an even split); ``simulation``: the :class:`WorkUnit` settings ``tune``,
    ``smear_energy``, ``smear_angle`` (defaults: none changed)."""
    counts = split_weighted(n_jets, weights) if weights else split_evenly(n_jets, len(processes))
    per_process = dict(zip(processes, counts, strict=True))
    units: list[WorkUnit] = []
    first_event = dict.fromkeys(processes, 0)
    for file_index in range(n_files):
        for process in processes:
            per = 2 if process in DIJET_PROCESSES else 1  # jets per event: a dijet unit makes whole events
            n_file = split_evenly(per_process[process] // per, n_files)[file_index]
            n_chunks = math.ceil(n_file * per / UNIT_JETS)
            for chunk_index, n_chunk in enumerate(split_evenly(n_file, n_chunks) if n_chunks else []):
                unit_seed = derive_seed(seed, process, file_index, chunk_index)
                extra = {"first_event": first_event[process]} if per == 2 else {}
                units.append(
                    WorkUnit(process, file_index, chunk_index, n_chunk * per, unit_seed, **simulation, **extra)
                )
                first_event[process] += n_chunk
    return units


# ----------------------------------------------------------------------------------------------
# Pythia and event-record helpers
# ----------------------------------------------------------------------------------------------


def make_pythia(process: str, pythia_seed: int, tune: int = DEFAULT_TUNE, extra: Sequence[str] = ()) -> pythia8.Pythia:
    """Return an initialised, quiet Pythia for ``process`` seeded with ``pythia_seed``, with ``Tune:pp = tune``
    and the ``extra`` settings last (a dijet process's, :func:`dijet_settings`)."""
    pythia = pythia8.Pythia("", False)
    tune_setting = () if tune == DEFAULT_TUNE else (f"Tune:pp = {tune}",)  # set first: a tune resets parameters
    settings = (*_COMMON_SETTINGS, *tune_setting, f"Random:seed = {pythia_seed}", *PROCESS_SETTINGS[process], *extra)
    for setting in settings:
        if not pythia.readString(setting):
            raise RuntimeError(f"Pythia rejected the setting {setting!r}")
    if not pythia.init():
        raise RuntimeError(f"Pythia failed to initialise for process {process!r}")
    return pythia


@dataclass
class EventRecord:
    """Flat numpy view of a batch of Pythia event records (``offsets`` delimit the events)."""

    offsets: np.ndarray
    pid: np.ndarray
    status: np.ndarray
    daughter1: np.ndarray
    daughter2: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    energy: np.ndarray

    @classmethod
    def from_batch(cls, events: ak.Array) -> EventRecord:
        """Flatten the awkward array returned by ``Pythia.nextBatch``."""
        prt = events.prt
        offsets = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(prt)))]).astype(np.int64)

        def flat(array: ak.Array) -> np.ndarray:
            return ak.to_numpy(ak.flatten(array))

        return cls(
            offsets=offsets,
            pid=flat(prt.id),
            status=flat(prt.status),
            daughter1=flat(prt.daughter1),
            daughter2=flat(prt.daughter2),
            px=flat(prt.p.px),
            py=flat(prt.p.py),
            pz=flat(prt.p.pz),
            energy=flat(prt.p.e),
        )

    @property
    def n_events(self) -> int:
        """Number of events in the batch."""
        return len(self.offsets) - 1

    def daughters(self, event: int, index: int) -> list[int]:
        """Daughter indices (within the event) of particle ``index``, as Pythia's daughterList."""
        base = self.offsets[event]
        d1, d2 = int(self.daughter1[base + index]), int(self.daughter2[base + index])
        if d1 <= 0:
            return []
        if d2 == 0 or d2 == d1:
            return [d1]
        if d2 > d1:
            return list(range(d1, d2 + 1))
        return [d1, d2]

    def bottom_copy(self, event: int, index: int) -> int:
        """Follow carbon copies of particle ``index`` to its last copy (Pythia's iBotCopyId)."""
        base = self.offsets[event]
        pid = self.pid[base + index]
        while True:
            same = [d for d in self.daughters(event, index) if self.pid[base + d] == pid]
            if not same:
                return index
            index = same[0]

    def eta_phi(self, event: int, index: int) -> tuple[float, float]:
        """Pseudorapidity and azimuth of particle ``index`` of ``event``."""
        i = self.offsets[event] + index
        pt = math.hypot(self.px[i], self.py[i])
        eta = math.asinh(self.pz[i] / pt) if pt > 0 else math.copysign(math.inf, self.pz[i])
        return eta, math.atan2(self.py[i], self.px[i])

    def find(self, event: int, abs_ids: Sequence[int], abs_status: int) -> list[int]:
        """Indices within ``event`` of particles with |id| in ``abs_ids`` and |status| given."""
        lo, hi = self.offsets[event], self.offsets[event + 1]
        mask = np.isin(np.abs(self.pid[lo:hi]), abs_ids) & (np.abs(self.status[lo:hi]) == abs_status)
        return [int(i) for i in np.flatnonzero(mask)]


#: A hard-process object to match: the directions (eta, phi) that must all lie in the jet.
Target = list[tuple[float, float]]


def _decay_targets(record: EventRecord, event: int, resonance: int, abs_id: int) -> Target | None:
    """Directions of the resonance (last copy) and its decay products (first copies)."""
    last = record.bottom_copy(event, resonance)
    base = record.offsets[event]
    products = [d for d in record.daughters(event, last) if abs(record.pid[base + d]) != abs_id]
    if len(products) != 2:
        return None
    return [record.eta_phi(event, i) for i in (last, *products)]


def _top_targets(record: EventRecord, event: int, top: int) -> Target | None:
    """Directions of a top (last copy), its b quark and the two quarks of its W."""
    last = record.bottom_copy(event, top)
    base = record.offsets[event]
    daughters = record.daughters(event, last)
    w_bosons = [d for d in daughters if abs(record.pid[base + d]) == 24]
    quarks = [d for d in daughters if 1 <= abs(record.pid[base + d]) <= 5]
    if len(w_bosons) != 1 or len(quarks) != 1:
        return None
    w_targets = _decay_targets(record, event, w_bosons[0], 24)
    if w_targets is None:
        return None
    return [record.eta_phi(event, last), record.eta_phi(event, quarks[0]), *w_targets[1:]]


def hard_targets(record: EventRecord, event: int, process: str) -> list[Target]:
    """The hard-process objects of ``event`` that a jet of ``process`` must contain."""
    if process == "qcd":
        partons = record.find(event, (1, 2, 3, 4, 5, 21), 23)
        return [[record.eta_phi(event, i)] for i in partons]
    if process == "tbqq":
        found = [_top_targets(record, event, i) for i in record.find(event, (6,), 22)]
    else:
        abs_id = 24 if process == "wqq" else 23
        found = [_decay_targets(record, event, i, abs_id) for i in record.find(event, (abs_id,), 22)]
    return [target for target in found if target is not None]


def delta_r(eta1: float, phi1: float, eta2: float, phi2: float) -> float:
    """Distance in (eta, phi) with the azimuthal difference wrapped."""
    dphi = (phi1 - phi2 + math.pi) % (2 * math.pi) - math.pi
    return math.hypot(eta1 - eta2, dphi)


def match_jets(jet_eta: np.ndarray, jet_phi: np.ndarray, targets: list[Target]) -> list[int]:
    """Indices of jets matched to targets; each target and each jet is used at most once.

    A jet matches a target when every direction of the target lies within ``JET_R`` of the jet
    axis; among several such jets the one closest to the target's first direction is taken.
    """
    chosen: list[int] = []
    for target in targets:
        best, best_dr = -1, math.inf
        for j in range(len(jet_eta)):
            if j in chosen:
                continue
            drs = [delta_r(jet_eta[j], jet_phi[j], eta, phi) for eta, phi in target]
            if max(drs) < JET_R and drs[0] < best_dr:
                best, best_dr = j, drs[0]
        if best >= 0:
            chosen.append(best)
    return sorted(chosen)


# ----------------------------------------------------------------------------------------------
# Jets and their features
# ----------------------------------------------------------------------------------------------


def four_vector_kinematics(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transverse momentum, pseudorapidity and azimuth."""
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(pz / pt)
    return pt, eta, np.arctan2(py, px)


def wrap_phi(dphi: np.ndarray) -> np.ndarray:
    """Wrap angles to [-pi, pi)."""
    return (dphi + np.pi) % (2 * np.pi) - np.pi


class ChargeTable:
    """Electric charge per PDG id, looked up in Pythia's particle data and cached."""

    def __init__(self, particle_data: object) -> None:
        self._particle_data = particle_data
        self._cache: dict[int, float] = {}

    def __call__(self, pids: np.ndarray) -> np.ndarray:
        """Charges of ``pids``."""
        unique, inverse = np.unique(pids, return_inverse=True)
        for pid in unique.tolist():
            if pid not in self._cache:
                self._cache[pid] = float(self._particle_data.charge(pid))
        return np.array([self._cache[pid] for pid in unique.tolist()])[inverse]


def particle_type_flags(pids: np.ndarray, charge: np.ndarray) -> dict[str, np.ndarray]:
    """JetClass particle-type one-hot flags from PDG ids and charges."""
    abs_pid = np.abs(pids)
    is_electron = abs_pid == 11
    is_muon = abs_pid == 13
    is_photon = pids == 22
    charged = charge != 0
    return {
        "part_isChargedHadron": charged & ~is_electron & ~is_muon,
        "part_isNeutralHadron": ~charged & ~is_photon,
        "part_isPhoton": is_photon,
        "part_isElectron": is_electron,
        "part_isMuon": is_muon,
    }


@dataclass
class JetBlock:
    """Jets of one process: flat per-particle columns, per-jet columns and particle counts."""

    process: str
    counts: np.ndarray
    particles: dict[str, np.ndarray]
    jets: dict[str, np.ndarray]

    @property
    def n_jets(self) -> int:
        """Number of jets."""
        return len(self.counts)

    def head(self, n: int) -> JetBlock:
        """The first ``n`` jets."""
        n_particles = int(self.counts[:n].sum())
        return JetBlock(
            self.process,
            self.counts[:n],
            {k: v[:n_particles] for k, v in self.particles.items()},
            {k: v[:n] for k, v in self.jets.items()},
        )

    @classmethod
    def concatenate(cls, process: str, blocks: Sequence[JetBlock]) -> JetBlock:
        """Join blocks of the same process, in order."""
        return cls(
            process,
            np.concatenate([b.counts for b in blocks]),
            {k: np.concatenate([b.particles[k] for b in blocks]) for k in PARTICLE_BRANCHES},
            {k: np.concatenate([b.jets[k] for b in blocks]) for k in blocks[0].jets},
        )


@dataclass
class _Selection:
    """Selected jets of a batch: visible-particle indices (flat, jet by jet) and counts."""

    particle_index: list[np.ndarray]
    counts: list[int]


def _visible_particles(record: EventRecord) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of visible final-state particles and per-event offsets into them."""
    visible = (record.status > 0) & ~np.isin(np.abs(record.pid), NEUTRINO_IDS)
    index = np.flatnonzero(visible)
    per_event = np.add.reduceat(visible, record.offsets[:-1]) if record.n_events else np.zeros(0)
    offsets = np.concatenate([[0], np.cumsum(per_event)]).astype(np.int64)
    return index, offsets


def smear_particles(record: EventRecord, rng: np.random.Generator, energy: float, angle: float) -> None:
    """A simple detector: smear every visible final-state particle of ``record`` in place, its
    energy by a relative Gaussian resolution ``energy`` and its eta and phi by Gaussian ``angle``
    (rad), keeping its mass. An energy smeared below the mass is set to the mass plus a thousandth of the
    particle's momentum: a particle is never left at rest (its log pT would be -inf)."""
    index, _ = _visible_particles(record)
    px, py, pz, e = (getattr(record, k)[index].astype(np.float64) for k in ("px", "py", "pz", "energy"))
    pt, eta, phi = four_vector_kinematics(px, py, pz)
    ok = (pt > 0) & np.isfinite(eta)  # a particle along the beam has no direction to smear
    index, px, py, pz, e, eta, phi = (a[ok] for a in (index, px, py, pz, e, eta, phi))
    m2 = np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0)
    noise = rng.standard_normal((3, len(index)))
    if energy > 0:
        p_min = 1e-3 * np.sqrt(px**2 + py**2 + pz**2)
        e = np.maximum(e * (1.0 + energy * noise[0]), np.sqrt(m2 + p_min**2))
    if angle > 0:
        eta, phi = eta + angle * noise[1], phi + angle * noise[2]
    pt = np.sqrt(np.maximum(e**2 - m2, 0.0)) / np.cosh(eta)
    record.px[index], record.py[index] = pt * np.cos(phi), pt * np.sin(phi)
    record.pz[index], record.energy[index] = pt * np.sinh(eta), e


def _select_jets(record: EventRecord, process: str) -> _Selection:
    """Cluster each event, apply the jet cuts and the truth matching."""
    index, offsets = _visible_particles(record)
    particles = ak.unflatten(
        ak.zip(
            {
                "px": record.px[index],
                "py": record.py[index],
                "pz": record.pz[index],
                "E": record.energy[index],
            }
        ),
        np.diff(offsets),
    )
    sequence = fastjet.ClusterSequence(particles, fastjet.JetDefinition(fastjet.antikt_algorithm, JET_R))
    jets = sequence.inclusive_jets(JET_PT_RANGE[0])
    jet_offsets = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(jets)))]).astype(np.int64)
    flat_jets = ak.flatten(jets)
    pt, eta, phi = four_vector_kinematics(*(ak.to_numpy(flat_jets[c]) for c in ("px", "py", "pz")))
    in_cuts = (pt > JET_PT_RANGE[0]) & (pt < JET_PT_RANGE[1]) & (np.abs(eta) < JET_ABS_ETA_MAX)
    members = ak.flatten(sequence.constituent_index(JET_PT_RANGE[0]))  # jet -> constituent indices
    member_offsets = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(members)))]).astype(np.int64)
    flat_members = ak.to_numpy(ak.flatten(members)).astype(np.int64)

    selection = _Selection([], [])
    for event in range(record.n_events):
        lo, hi = jet_offsets[event], jet_offsets[event + 1]
        good = lo + np.flatnonzero(in_cuts[lo:hi])
        if len(good) == 0:
            continue
        targets = hard_targets(record, event, process)
        for j in match_jets(eta[good], phi[good], targets):
            jet = good[j]
            constituents = flat_members[member_offsets[jet] : member_offsets[jet + 1]]
            selection.particle_index.append(index[offsets[event] + constituents])
            selection.counts.append(len(constituents))
    return selection


def _select_dijets(record: EventRecord) -> _Selection:
    """The two leading jets (leading first) of each event where both pass the dijet cuts."""
    index, offsets = _visible_particles(record)
    particles = ak.unflatten(
        ak.zip({"px": record.px[index], "py": record.py[index], "pz": record.pz[index], "E": record.energy[index]}),
        np.diff(offsets),
    )
    sequence = fastjet.ClusterSequence(particles, fastjet.JetDefinition(fastjet.antikt_algorithm, JET_R))
    jets = sequence.inclusive_jets(0.5 * DIJET_PT_MIN)
    members = sequence.constituent_index(0.5 * DIJET_PT_MIN)
    selection = _Selection([], [])
    for event in range(record.n_events):
        px, py, pz = (ak.to_numpy(jets[event][c]) for c in ("px", "py", "pz"))
        if len(px) < 2:
            continue
        pt, eta, _ = four_vector_kinematics(px, py, pz)
        lead = np.argsort(-pt, kind="stable")[:2]
        if np.any(pt[lead] <= DIJET_PT_MIN) or np.any(np.abs(eta[lead]) >= JET_ABS_ETA_MAX):
            continue
        for j in lead:
            constituents = ak.to_numpy(members[event][int(j)]).astype(np.int64)
            selection.particle_index.append(index[offsets[event] + constituents])
            selection.counts.append(len(constituents))
    return selection


def dijet_mass(jets: dict[str, np.ndarray]) -> np.ndarray:
    """Invariant mass of consecutive jet pairs (leading, subleading) from their pT, eta, phi and energy."""
    pt, eta, phi, e = (jets[k].astype(np.float64) for k in ("jet_pt", "jet_eta", "jet_phi", "jet_energy"))
    p4 = np.stack([e, pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=1).reshape(-1, 2, 4).sum(axis=1)
    return np.sqrt(np.maximum(p4[:, 0] ** 2 - (p4[:, 1:] ** 2).sum(axis=1), 0.0))


def _jet_features(record: EventRecord, selection: _Selection, charges: ChargeTable, process: str) -> JetBlock:
    """Per-particle and per-jet JetClass features of the selected jets."""
    counts = np.asarray(selection.counts, dtype=np.int64)
    if len(counts) == 0:
        empty = np.zeros(0, dtype=np.float32)
        return JetBlock(process, counts, dict.fromkeys(PARTICLE_BRANCHES, empty), dict.fromkeys(JET_BRANCHES, empty))
    flat = np.concatenate(selection.particle_index)
    jet_of = np.repeat(np.arange(len(counts)), counts)
    px, py, pz, energy = record.px[flat], record.py[flat], record.pz[flat], record.energy[flat]
    pt, eta, phi = four_vector_kinematics(px, py, pz)
    order = np.lexsort((-pt, jet_of))  # by jet, then by decreasing pT (stable)
    flat, px, py, pz, energy, pt, eta, phi = (a[order] for a in (flat, px, py, pz, energy, pt, eta, phi))

    jet_sum = {name: np.bincount(jet_of, weights=v) for name, v in (("px", px), ("py", py), ("pz", pz), ("e", energy))}
    jet_pt, jet_eta, jet_phi = four_vector_kinematics(jet_sum["px"], jet_sum["py"], jet_sum["pz"])
    pids = record.pid[flat]
    charge = charges(pids)
    constituents = ak.unflatten(ak.zip({"px": px, "py": py, "pz": pz, "E": energy}), counts)

    zeros = np.zeros(len(flat))
    particle_columns: dict[str, np.ndarray] = {
        "part_px": px,
        "part_py": py,
        "part_pz": pz,
        "part_energy": energy,
        "part_deta": eta - jet_eta[jet_of],
        "part_dphi": wrap_phi(phi - jet_phi[jet_of]),
        "part_d0val": zeros,
        "part_d0err": zeros,
        "part_dzval": zeros,
        "part_dzerr": zeros,
        "part_charge": charge,
        **particle_type_flags(pids, charge),
    }
    jet_columns: dict[str, np.ndarray] = {
        "jet_pt": jet_pt,
        "jet_eta": jet_eta,
        "jet_phi": jet_phi,
        "jet_energy": jet_sum["e"],
        "jet_nparticles": counts,
        "jet_sdmass": soft_drop_mass(constituents),
    }
    return JetBlock(
        process,
        counts,
        {k: np.asarray(particle_columns[k], dtype=np.float32) for k in PARTICLE_BRANCHES},
        {k: np.asarray(jet_columns[k], dtype=np.float32) for k in JET_BRANCHES},
    )


def generate_unit(unit: WorkUnit) -> JetBlock:
    """Run one work unit: generate events until ``unit.n_jets`` jets are selected (a dijet process: two per event,
    with the :data:`DIJET_BRANCHES`)."""
    silence_fastjet_banner()
    extra = dijet_settings(unit.process, unit.resonance, unit.dijet_mhat_min)
    pythia = make_pythia(unit.process, unit.pythia_seed, unit.tune, extra)
    dijet = unit.process in DIJET_PROCESSES
    charges = ChargeTable(pythia.particleData)
    smear = unit.smear_energy > 0 or unit.smear_angle > 0
    rng = np.random.default_rng([unit.pythia_seed, 0x5EA5]) if smear else None  # the unit's own detector noise
    blocks: list[JetBlock] = []
    n_selected, n_events = 0, 0
    while n_selected < unit.n_jets:
        if n_events > MAX_EVENTS_PER_JET * unit.n_jets:
            raise RuntimeError(
                f"{unit.process}: only {n_selected} jets selected from {n_events} events; "
                "the selection efficiency is implausibly low"
            )
        batch = min(MAX_BATCH_EVENTS, max(10, unit.n_jets - n_selected))
        record = EventRecord.from_batch(pythia.nextBatch(batch))
        if rng is not None:
            smear_particles(record, rng, unit.smear_energy, unit.smear_angle)
        n_events += record.n_events
        if dijet:
            block = _jet_features(record, _select_dijets(record), charges, unit.process)
            n_pairs = block.n_jets // 2
            ids = unit.first_event + n_selected // 2 + np.arange(n_pairs)
            block.jets["event_id"] = np.repeat(ids, 2).astype(np.float32)  # exact below 2**24 events
            block.jets["jet_index"] = np.tile([0.0, 1.0], n_pairs).astype(np.float32)
            block.jets["event_mjj"] = np.repeat(dijet_mass(block.jets), 2).astype(np.float32)
        else:
            block = _jet_features(record, _select_jets(record, unit.process), charges, unit.process)
        blocks.append(block)
        n_selected += block.n_jets
    return JetBlock.concatenate(unit.process, blocks).head(unit.n_jets)


# ----------------------------------------------------------------------------------------------
# Running the units and writing files
# ----------------------------------------------------------------------------------------------


def _results_in_order(units: Sequence[WorkUnit], workers: int) -> Iterator[JetBlock]:
    """Yield the result of every unit, in unit order (in-process when ``workers == 1``)."""
    if workers == 1:
        for unit in units:
            yield generate_unit(unit)
        return
    # fork (Linux): fast, and unlike spawn/forkserver it does not re-import the caller's
    # __main__, so scripts without an ``if __name__ == "__main__"`` guard work too.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        futures = deque(pool.submit(generate_unit, unit) for unit in units)
        while futures:
            yield futures.popleft().result()  # popped, so a consumed result is freed
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def assemble_file(blocks: Sequence[JetBlock], shuffle_seed: int) -> dict[str, Any]:
    """Join the blocks of one file, mix the processes in a seeded order, add one-hot labels."""
    counts = np.concatenate([b.counts for b in blocks])
    jets = {k: np.concatenate([b.jets[k] for b in blocks]) for k in blocks[0].jets}
    particles = {k: np.concatenate([b.particles[k] for b in blocks]) for k in PARTICLE_BRANCHES}
    extra = [PROCESS_LABELS[b.process] for b in blocks if PROCESS_LABELS[b.process] not in ALL_LABELS]
    labels = {name: np.zeros(len(counts), dtype=np.bool_) for name in (*ALL_LABELS, *dict.fromkeys(extra))}
    start = 0
    for block in blocks:
        labels[PROCESS_LABELS[block.process]][start : start + block.n_jets] = True
        start += block.n_jets

    perm = np.random.default_rng(shuffle_seed).permutation(len(counts))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    new_counts = counts[perm]
    new_starts = np.concatenate([[0], np.cumsum(new_counts)[:-1]])
    gather = np.arange(int(counts.sum())) + np.repeat(starts[perm] - new_starts, new_counts)
    part_record = ak.zip({k.removeprefix("part_"): particles[k][gather] for k in PARTICLE_BRANCHES})
    columns: dict[str, Any] = {"part": ak.unflatten(part_record, new_counts)}
    columns.update({k: v[perm] for k, v in jets.items()})
    columns.update({k: v[perm] for k, v in labels.items()})
    return columns


def write_tree(path: Path, columns: dict[str, Any]) -> None:
    """Write ``columns`` as a TTree, atomically (temporary file in the same folder, then rename).

    ``columns["part"]`` is a jagged record array: uproot writes its fields as ``part_<field>``
    branches sharing one counter branch ``npart``; the other columns are flat numpy arrays.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    types = {name: ak.type(value).content if name == "part" else value.dtype for name, value in columns.items()}
    try:
        with uproot.recreate(tmp) as file:
            tree = file.mktree(TREE_NAME, types)
            for lo in range(0, len(columns["part"]), WRITE_CHUNK_JETS):
                tree.extend({name: value[lo : lo + WRITE_CHUNK_JETS] for name, value in columns.items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def usable_cpus() -> int:
    """CPUs this process may run on (respects affinity masks, unlike ``os.cpu_count``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_processes(processes: Sequence[str]) -> tuple[str, ...]:
    """Validate the process names; return them as a tuple."""
    allowed = ", ".join(PROCESS_LABELS)
    if isinstance(processes, str):
        raise ValueError(f"processes must be a sequence of names, not the string {processes!r} (allowed: {allowed})")
    processes = tuple(processes)
    if not processes:
        raise ValueError(f"processes must not be empty (allowed: {allowed})")
    for process in processes:
        if process not in PROCESS_LABELS:
            raise ValueError(f"unknown process {process!r}; allowed processes are: {allowed}")
    if len(set(processes)) != len(processes):
        raise ValueError(f"processes contains duplicates: {processes}")
    return processes


def generate_jets(
    out_dir: str | Path,
    n_jets: int,
    seed: int,
    processes: Sequence[str] = DEFAULT_PROCESSES,
    n_files: int = 1,
    workers: int | None = None,
    progress: bool = True,
    *,
    tune: int = DEFAULT_TUNE,
    smear_energy: float = 0.0,
    smear_angle: float = 0.0,
    weights: Sequence[float] | None = None,
    resonance: Sequence[float] = DEFAULT_RESONANCE,
    dijet_mhat_min: float = DEFAULT_DIJET_MHAT_MIN,
) -> list[Path]:
    """Generate n_jets jets (split as evenly as possible over processes, or in proportion to ``weights``,
    one per process, e.g. ``(9, 1)`` for a QCD-dominated sample of ``("qcd", "tbqq")``; each file holds a mix of
    all processes, in a deterministic order), write n_files ROOT files out_dir/jets_{i:03d}.root in
    the JetClass schema, return their paths.

    ``tune``, ``smear_energy``, ``smear_angle``: simulation settings for a shifted domain (see the
    module docstring); ``resonance`` ([m_A, m_B, m_C], GeV) and ``dijet_mhat_min``: the dijet processes' (the module
    docstring). The content is a deterministic function of (n_jets, seed, processes,
    n_files) and these; ``workers``
    (default: all usable cores) and ``progress`` (a tqdm bar of jets done) only change how it is made.
    """
    n_jets = _check_int("n_jets", n_jets, 1)
    seed = _check_int("seed", seed, 0)
    n_files = _check_int("n_files", n_files, 1)
    processes = _check_processes(processes)
    if 0 < sum(p in DIJET_PROCESSES for p in processes) < len(processes):
        raise ValueError(
            f"processes {list(processes)}: the dijet processes {DIJET_PROCESSES} cannot be mixed with single-jet ones"
        )
    if any(p in DIJET_PROCESSES for p in processes) and n_jets % 2:
        raise ValueError(f"n_jets counts jets, two per dijet event: give an even number, got {n_jets}")
    if weights and len(weights) != len(processes):
        raise ValueError(f"weights {list(weights)} must give one share per process {list(processes)}")
    if n_files > n_jets:
        raise ValueError(f"n_files ({n_files}) must not exceed n_jets ({n_jets}): no file may be empty")
    workers = _check_int("workers", workers, 1) if workers is not None else usable_cpus()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, value in (("smear_energy", smear_energy), ("smear_angle", smear_angle)):
        if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
            raise ValueError(f"{name} must be a resolution in [0, 1), got {value!r}")
    tune = _check_int("tune", tune, 0)
    units = plan_units(
        n_jets,
        seed,
        processes,
        n_files,
        weights,
        tune=tune,
        smear_energy=float(smear_energy),
        smear_angle=float(smear_angle),
        resonance=tuple(float(m) for m in resonance),
        dijet_mhat_min=float(dijet_mhat_min),
    )
    workers = min(workers, len(units))
    paths: list[Path] = []
    pending: list[JetBlock] = []
    with tqdm(total=n_jets, unit="jet", desc="generating jets", disable=not progress) as bar:
        for i, block in enumerate(_results_in_order(units, workers)):
            pending.append(block)
            bar.update(block.n_jets)
            last_of_file = i + 1 == len(units) or units[i + 1].file_index != units[i].file_index
            if last_of_file:
                file_index = units[i].file_index
                path = out / FILE_NAME.format(index=file_index)
                write_tree(path, assemble_file(pending, derive_seed(seed, "shuffle", file_index)))
                paths.append(path)
                pending = []
    return paths
