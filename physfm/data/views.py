"""Views of a jet for contrastive and self-distillation pretraining (JetCLR, DINO, RINO).

Everything here is numpy and runs in the data-loader workers. A *view* is a jet seen through a
chain of steps, written as one string joined by ``+`` (e.g. ``"rotate+collinear+smear+translate"``):

==============  ======================================================================================
``full``        the jet as stored (alone only)
``rotate``      rotation of every constituent about the jet axis in the (Δη, Δφ) plane by one angle
                θ ~ U[0, 2π) per jet: pT and ΔR to the axis are unchanged (JetCLR ``rotate_jets``)
``translate``   one shift of the jet in η and φ: Δη ~ U(−w·ptp(Δη), w·ptp(Δη)), Δφ ~ U(max(−w·ptp(Δφ),
                −π − min Δφ), min(w·ptp(Δφ), π − max Δφ)), ptp = max − min over the jet's constituents,
                w = ``translate_width`` (JetCLR ``translate_jets``, ``trsw = 1.0``)
``smear``       soft-particle smearing: each constituent moves by N(0, σ²) in Δη and in Δφ with
                σ = ``smear_strength`` / max(pT / GeV, ``smear_pt_clip``) (JetCLR ``distort_jets``)
``collinear``   collinear splitting: min(n, max_len − n) constituents, chosen uniformly, each split into
                two at its direction with pT fractions r and 1 − r, r ~ U(0, 1); the four-momentum
                is split the same way, so the jet's four-momentum is unchanged (JetCLR
                ``collinear_fill_jets``; its run script applies it twice: ``collinear+collinear``)
``ktN``         the N exclusive-kT subjets of the jet (RINO's views; fastjet, E-scheme). When the jet
                has fewer than N constituents, zero-momentum ghosts pad it to N (fastjet refuses to
                cluster n < N particles into N jets) and are dropped again: the view is the jet.
``dropout``     IceCube pulses: each pulse dropped with probability ``dropout_fraction`` (an event keeps
                at least one), the views of a noisy, partly inefficient detector
``jitter``      IceCube pulses: N(0, ``time_jitter``²) ns added to every pulse time
==============  ======================================================================================

Every step works on each constituent's (pT, Δη, Δφ, m²) with respect to the stored jet axis
(``jet_eta``, ``jet_phi``), and the view is written back as an :class:`EventBlock` with the stored
columns rebuilt (``part_px/py/pz/energy`` from pT, η = η_jet + Δη, φ = φ_jet + Δφ and m², so each
constituent keeps its mass; ``part_deta``, ``part_dphi`` (wrapped to [−π, π)); the jet's
``jet_pt``, ``jet_energy`` and ``jet_nparticles`` summed over the view's constituents;
``jet_eta``/``jet_phi`` stay the reference axis and ``jet_sdmass`` stays the stored jet's). The
model's features are then computed from it by :mod:`physfm.features`, exactly as for stored jets,
and the constituents are ordered by decreasing pT, so ``max_len`` truncation drops the softest.
Columns without kinematics (charge, particle-ID flags, impact parameters) travel with their
constituent; a split copies them to both halves; a subjet gets the summed charge and the other
columns of its hardest constituent.

The randomness of a view is a pure function of the event key, the salt (seed, epoch, split: the
same salt as masking) and the view's and step's position (:func:`physfm.models.hash_uniform`), so
the views of an event do not depend on batching, loader workers, ranks or resuming.
"""

from __future__ import annotations

import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from physfm.data.shards import EventBlock, feature_names
from physfm.hashing import hash_uniform

AUGMENTATIONS = ("rotate", "translate", "smear", "collinear")
#: Steps for neutrino-telescope pulses (modality ``icecube``).
PULSE_AUGMENTATIONS = ("dropout", "jitter")
FULL = "full"
_KT = re.compile(r"^kt([1-9][0-9]*)$")
#: Stored columns a view rebuilds; a jets dataset has them all.
KINEMATIC_COLUMNS = ("part_px", "part_py", "part_pz", "part_energy", "part_deta", "part_dphi")
JET_COLUMNS = ("jet_pt", "jet_eta", "jet_phi", "jet_energy")


def parse_view(spec: str) -> tuple[str, ...]:
    """The steps of a view string, checked: ``"kt8"`` -> ``("kt8",)``, ``"rotate+smear"`` -> two steps."""
    steps = tuple(s.strip() for s in str(spec).split("+"))
    for s in steps:
        if s not in AUGMENTATIONS and s not in PULSE_AUGMENTATIONS and s != FULL and not _KT.match(s):
            raise ValueError(
                f"unknown view step '{s}' in view '{spec}'; steps are {', '.join(AUGMENTATIONS)}, ktN (N >= 1, "
                f"exclusive-kT subjets) for jets, {', '.join(PULSE_AUGMENTATIONS)} for IceCube pulses, and "
                f"'{FULL}' (alone), joined by '+'"
            )
    if FULL in steps and len(steps) > 1:
        raise ValueError(f"view '{spec}': '{FULL}' is the stored jet and cannot be combined with other steps")
    return steps


def view_length(spec: str, max_len: int) -> int:
    """Most constituents the view can have after ``max_len`` truncation (its padded length)."""
    n = max_len
    for step in parse_view(spec):
        if m := _KT.match(step):
            n = min(n, int(m.group(1)))
        elif step == "collinear":
            n = max_len  # fills up to max_len
    return n


@dataclass(frozen=True)
class AugmentParams:
    """Parameters of the view steps (JetCLR's defaults: ``trsw = 1.0``, ``ptst = 0.1``, ``ptcm = 0.1``)."""

    translate_width: float = 1.0
    smear_strength: float = 0.1  # sigma = strength / max(pT / GeV, pt_clip), in eta and in phi
    smear_pt_clip: float = 0.1  # GeV
    kt_radius: float = 10.0  # decides only pair vs beam merging; >> any jet's Delta R: subjets sum to the jet
    dropout_fraction: float = 0.1  # IceCube: fraction of an event's pulses dropped (at least one is kept)
    time_jitter: float = 3.0  # IceCube: ns, standard deviation of the Gaussian added to each pulse time

    def __post_init__(self) -> None:
        if not 0 <= self.dropout_fraction <= 1:
            raise ValueError(f"dropout_fraction must lie in [0, 1], got {self.dropout_fraction}")
        for name in ("translate_width", "smear_strength", "smear_pt_clip", "kt_radius", "time_jitter"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"view parameter {name} must be >= 0, got {getattr(self, name)}")
        if self.kt_radius <= 0:
            raise ValueError(f"kt_radius must be > 0, got {self.kt_radius}")


@dataclass(frozen=True)
class ViewSpec:
    """The views a batch carries, in order (view ``i`` is ``x_v{i}``/``mask_v{i}``), and their parameters."""

    views: tuple[str, ...]
    params: AugmentParams = field(default_factory=AugmentParams)

    def __post_init__(self) -> None:
        if not self.views:
            raise ValueError("a ViewSpec needs at least one view")
        for v in self.views:
            parse_view(v)


# --------------------------------------------------------------------------- constituents
@dataclass
class Constituents:
    """Ragged constituents relative to the jet axis (float64): ``pt`` (GeV), ``deta``, ``dphi`` (rad),
    ``m2`` (GeV², E² − p², kept so that each constituent keeps its mass) and ``other`` (rows, k): the
    stored columns without kinematics, carried along. ``offsets`` (n + 1) as in an EventBlock."""

    offsets: np.ndarray
    pt: np.ndarray
    deta: np.ndarray
    dphi: np.ndarray
    m2: np.ndarray
    other: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def event(self) -> np.ndarray:
        """Event index of each row."""
        return np.repeat(np.arange(len(self.offsets) - 1), self.counts)

    def position(self) -> np.ndarray:
        """Position of each row within its event."""
        return np.arange(len(self.pt)) - np.repeat(self.offsets[:-1], self.counts)

    def rows(self, keep: np.ndarray, order: np.ndarray | None = None) -> Constituents:
        """The rows where ``keep`` (then in ``order``, which must keep events contiguous and in order)."""
        ev = self.event()
        idx = np.flatnonzero(keep) if order is None else order[keep[order]]
        counts = np.bincount(ev[idx], minlength=len(self.offsets) - 1)
        return Constituents(
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            self.pt[idx],
            self.deta[idx],
            self.dphi[idx],
            self.m2[idx],
            self.other[idx],
        )


def wrap_phi(phi: np.ndarray) -> np.ndarray:
    """Angles wrapped to [−π, π)."""
    return (phi + np.pi) % (2 * np.pi) - np.pi


def four_momenta(c: Constituents, eta0: np.ndarray, phi0: np.ndarray) -> tuple[np.ndarray, ...]:
    """(px, py, pz, E) of every row, with η = η0 + Δη and φ = φ0 + Δφ of its event's axis."""
    ev = c.event()
    eta, phi = eta0[ev] + c.deta, phi0[ev] + c.dphi
    pz = c.pt * np.sinh(eta)
    p2 = c.pt**2 + pz**2
    return c.pt * np.cos(phi), c.pt * np.sin(phi), pz, np.sqrt(np.maximum(c.m2 + p2, 0.0))


def from_four_momenta(
    px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray, eta0: np.ndarray, phi0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pT, Δη, Δφ, m²) of four-momenta against the axis (η0, φ0) (already one entry per row)."""
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.where(pt > 0, np.arcsinh(pz / np.where(pt > 0, pt, 1.0)), 0.0)
    phi = np.arctan2(py, px)
    return pt, eta - eta0, wrap_phi(phi - phi0), e**2 - (px**2 + py**2 + pz**2)


def sort_by_pt(c: Constituents) -> Constituents:
    """Each event's constituents by decreasing pT (stable)."""
    order = np.lexsort((-c.pt, c.event()))
    return c.rows(np.ones(len(c.pt), dtype=bool), order)


# --------------------------------------------------------------------------- the augmentations
def rotate(c: Constituents, angle: np.ndarray) -> Constituents:
    """Rotate each jet's constituents about its axis in the (Δη, Δφ) plane by ``angle`` (one per jet)."""
    a = np.asarray(angle, dtype=np.float64)[c.event()]
    cos, sin = np.cos(a), np.sin(a)
    return replace(c, deta=cos * c.deta - sin * c.dphi, dphi=sin * c.deta + cos * c.dphi)


def _per_event(c: Constituents, values: np.ndarray, fn: Any, empty: float) -> np.ndarray:
    out = np.full(len(c.offsets) - 1, empty)
    filled = c.counts > 0
    if filled.any():
        out[filled] = fn.reduceat(values, c.offsets[:-1][filled])
    return out


def translate(c: Constituents, u_eta: np.ndarray, u_phi: np.ndarray, width: float) -> Constituents:
    """Shift each jet in η and φ; ``u_eta``, ``u_phi`` are one uniform in [0, 1) per jet (JetCLR's ranges)."""
    lo_eta, hi_eta = _per_event(c, c.deta, np.minimum, 0.0), _per_event(c, c.deta, np.maximum, 0.0)
    lo_phi, hi_phi = _per_event(c, c.dphi, np.minimum, 0.0), _per_event(c, c.dphi, np.maximum, 0.0)
    w_eta, w_phi = width * (hi_eta - lo_eta), width * (hi_phi - lo_phi)
    a_phi, b_phi = np.maximum(-w_phi, -np.pi - lo_phi), np.minimum(w_phi, np.pi - hi_phi)
    shift_eta = -w_eta + 2 * w_eta * np.asarray(u_eta)
    shift_phi = a_phi + (b_phi - a_phi) * np.asarray(u_phi)
    ev = c.event()
    return replace(c, deta=c.deta + shift_eta[ev], dphi=c.dphi + shift_phi[ev])


def smear(c: Constituents, n_eta: np.ndarray, n_phi: np.ndarray, strength: float, pt_clip: float) -> Constituents:
    """Move each constituent by ``strength / max(pT, pt_clip)`` times the standard normals ``n_eta``, ``n_phi``."""
    sigma = strength / np.maximum(c.pt, pt_clip)
    return replace(c, deta=c.deta + sigma * n_eta, dphi=c.dphi + sigma * n_phi)


def collinear_split(c: Constituents, u_pick: np.ndarray, r: np.ndarray, max_len: int) -> Constituents:
    """Split ``min(n, max_len − n)`` constituents of each jet (those with the smallest ``u_pick``) into two
    collinear halves carrying fractions ``r`` and ``1 − r`` of their four-momentum; the second half of each
    is appended after the jet's constituents. ``u_pick``, ``r``: one value per row."""
    counts = c.counts
    n_fill = np.minimum(np.maximum(max_len - counts, 0), counts)
    ev = c.event()
    order = np.lexsort((u_pick, ev))
    rank = np.empty(len(ev), dtype=np.int64)
    rank[order] = np.arange(len(ev)) - np.repeat(c.offsets[:-1], counts)
    chosen = rank < n_fill[ev]
    frac = np.where(chosen, r, 1.0)
    kids = np.flatnonzero(chosen)
    rest = 1.0 - r[kids]
    pt = np.concatenate([c.pt * frac, c.pt[kids] * rest])
    m2 = np.concatenate([c.m2 * frac**2, c.m2[kids] * rest**2])
    deta = np.concatenate([c.deta, c.deta[kids]])
    dphi = np.concatenate([c.dphi, c.dphi[kids]])
    other = np.concatenate([c.other, c.other[kids]])
    new_ev = np.concatenate([ev, ev[kids]])
    is_kid = np.concatenate([np.zeros(len(ev), bool), np.ones(len(kids), bool)])
    pos = np.concatenate([np.arange(len(ev)), kids])
    order = np.lexsort((pos, is_kid, new_ev))
    n_new = counts + np.bincount(ev[kids], minlength=len(counts))
    return Constituents(
        np.concatenate([[0], np.cumsum(n_new)]).astype(np.int64),
        pt[order],
        deta[order],
        dphi[order],
        m2[order],
        other[order],
    )


def _silent_fastjet() -> None:
    """No FastJet banner on stdout (it would print one per loader worker): a null banner stream."""
    import fastjet

    fastjet._swig.ClusterSequence.set_fastjet_banner_stream(None)  # FastJet's documented switch (NULL stream)


def kt_subjets(
    c: Constituents, n_subjets: int, eta0: np.ndarray, phi0: np.ndarray, radius: float, charge_col: int | None
) -> Constituents:
    """The ``n_subjets`` exclusive-kT subjets of every jet (fastjet ``kt_algorithm``, E-scheme).

    Jets with fewer constituents than ``n_subjets`` are padded with zero-momentum ghosts, which the
    clustering absorbs at zero distance (or returns untouched) and which are dropped from the result.
    A subjet's ``other`` columns are its hardest constituent's, except ``charge_col`` (summed).
    """
    return kt_subjets_many(c, [n_subjets], eta0, phi0, radius, charge_col)[0]


def kt_subjets_many(
    c: Constituents, ns: Sequence[int], eta0: np.ndarray, phi0: np.ndarray, radius: float, charge_col: int | None
) -> list[Constituents]:
    """:func:`kt_subjets` for several N, coarsening step by step: the constituents are clustered to the
    largest N, those subjets (as pseudo-particles) to the next N, and so on. kT clustering is sequential,
    so the subjets at N are exactly what clustering the subjets at any N' > N down to N gives; each
    subjet's members are tracked down to the original constituents."""
    px, py, pz, e = four_momenta(c, eta0, phi0)
    levels: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    cur, cur_of_row = c, np.arange(len(c.pt))  # pseudo-particles clustered next; row of c -> row of cur (-1: gone)
    for n in sorted(set(ns), reverse=True):
        sub_of_cur, sub_event = _cluster(cur, n, eta0, phi0, radius)
        alive = cur_of_row >= 0
        sub = np.where(alive, sub_of_cur[np.where(alive, cur_of_row, 0)], -1)
        alive &= sub >= 0  # a small kt_radius merges some with the beam: they leave the view
        rows = np.flatnonzero(alive)
        levels[n] = (sub[rows], rows, sub_event)
        has = np.bincount(sub[rows], minlength=len(sub_event)) > 0
        cur = _from_members(c, sub[rows], rows, sub_event, eta0, phi0, px, py, pz, e, charge_col)
        cur_of_row = np.where(alive, (np.cumsum(has) - 1)[np.maximum(sub, 0)], -1)  # cur's rows: subjets with members
    return [sort_by_pt(_from_members(c, *levels[n], eta0, phi0, px, py, pz, e, charge_col)) for n in ns]


def _cluster(
    c: Constituents, n: int, eta0: np.ndarray, phi0: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Exclusive kT clustering of every jet of ``c`` to ``n`` subjets (ghost-padded to ``n`` rows):
    the subjet of each row of ``c`` (-1 if merged with the beam) and the event of each of the
    ``n_jets * n`` subjets."""
    import awkward as ak
    import fastjet

    _silent_fastjet()
    px, py, pz, e = four_momenta(c, eta0, phi0)
    counts = c.counts
    padded = np.maximum(counts, n)
    p_off = np.concatenate([[0], np.cumsum(padded)]).astype(np.int64)
    dest = np.repeat(p_off[:-1], counts) + c.position()  # where each real row goes in the padded layout
    row_of = np.full(int(padded.sum()), -1, dtype=np.int64)  # padded row -> row of c (-1: a ghost)
    row_of[dest] = np.arange(len(c.pt))
    cols = {}
    for name, v in (("px", px), ("py", py), ("pz", pz), ("E", e)):
        col = np.zeros(len(row_of))
        col[dest] = v
        cols[name] = col
    arr = ak.unflatten(ak.zip(cols, depth_limit=1), padded)
    with warnings.catch_warnings():  # fastjet warns about exclusive jets for every JetDefinition object
        warnings.simplefilter("ignore", UserWarning)
        cs = fastjet.ClusterSequence(arr, fastjet.JetDefinition(fastjet.kt_algorithm, float(radius)))
        index = cs.exclusive_jets_constituent_index(njets=n)
    per_sub = ak.to_numpy(ak.flatten(ak.num(index, axis=2))).astype(np.int64)  # members per subjet
    local = ak.to_numpy(ak.flatten(index, axis=None)).astype(np.int64)  # member index within the padded jet
    sub_event = np.repeat(np.arange(len(counts)), n)
    member_sub = np.repeat(np.arange(len(per_sub)), per_sub)
    member_row = row_of[p_off[sub_event[member_sub]] + local]
    keep = member_row >= 0
    sub_of_row = np.full(len(c.pt), -1, dtype=np.int64)  # -1: merged with the beam (R smaller than the jet)
    sub_of_row[member_row[keep]] = member_sub[keep]
    return sub_of_row, sub_event


def _from_members(
    c: Constituents,
    member_sub: np.ndarray,
    member_row: np.ndarray,
    sub_event: np.ndarray,
    eta0: np.ndarray,
    phi0: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    pz: np.ndarray,
    e: np.ndarray,
    charge_col: int | None,
) -> Constituents:
    """Subjets as constituents: summed four-momenta (E-scheme), the hardest member's other columns."""
    n_sub = len(sub_event)
    sums = [np.bincount(member_sub, weights=v[member_row], minlength=n_sub) for v in (px, py, pz, e)]
    has_real = np.bincount(member_sub, minlength=n_sub) > 0
    order = np.lexsort((-c.pt[member_row], member_sub))
    first = order[np.r_[True, member_sub[order][1:] != member_sub[order][:-1]]]
    other = np.zeros((n_sub, c.other.shape[1]))
    other[member_sub[first]] = c.other[member_row[first]]
    if charge_col is not None:
        other[:, charge_col] = np.bincount(member_sub, weights=c.other[member_row, charge_col], minlength=n_sub)
    ev = sub_event[has_real]
    pt, deta, dphi, m2 = from_four_momenta(*(s[has_real] for s in sums), eta0[ev], phi0[ev])
    n_new = np.bincount(ev, minlength=len(c.offsets) - 1)
    return Constituents(np.concatenate([[0], np.cumsum(n_new)]).astype(np.int64), pt, deta, dphi, m2, other[has_real])


# --------------------------------------------------------------------------- blocks <-> constituents
class JetColumns:
    """Where the kinematic columns of a jets dataset are (from its manifest)."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        if manifest.get("modality") != "jets":
            raise ValueError(
                f"views need jet constituents' four-momenta; this dataset's modality is '{manifest.get('modality')}' "
                "(views for other modalities are not implemented)"
            )
        self.particle, self.event = feature_names(manifest, "particle"), feature_names(manifest, "event")
        missing = [n for n in KINEMATIC_COLUMNS if n not in self.particle]
        missing += [n for n in JET_COLUMNS if n not in self.event]
        if missing:
            raise ValueError(f"views need the stored columns {missing}, which this dataset does not have")
        self.kin = [self.particle.index(n) for n in KINEMATIC_COLUMNS]
        self.other = [j for j, n in enumerate(self.particle) if n not in KINEMATIC_COLUMNS]
        other_names = [self.particle[j] for j in self.other]
        self.charge = other_names.index("part_charge") if "part_charge" in other_names else None

    def axis(self, block: EventBlock) -> tuple[np.ndarray, np.ndarray]:
        ev = block.events.astype(np.float64)
        return ev[:, self.event.index("jet_eta")], ev[:, self.event.index("jet_phi")]

    def constituents(self, block: EventBlock) -> Constituents:
        p = block.particles.astype(np.float64)
        px, py, pz, e, deta, dphi = (p[:, j] for j in self.kin)
        return Constituents(
            block.offsets.astype(np.int64),
            np.hypot(px, py),
            deta,
            dphi,
            e**2 - (px**2 + py**2 + pz**2),
            p[:, self.other],
        )

    def block(self, c: Constituents, like: EventBlock) -> EventBlock:
        """An EventBlock of the constituents ``c`` of the jets of ``like`` (see the module docstring)."""
        eta0, phi0 = self.axis(like)
        px, py, pz, e = four_momenta(c, eta0, phi0)
        parts = np.empty((len(c.pt), len(self.particle)))
        for j, v in zip(self.kin, (px, py, pz, e, c.deta, wrap_phi(c.dphi)), strict=True):
            parts[:, j] = v
        parts[:, self.other] = c.other
        events = like.events.astype(np.float64, copy=True)
        n = len(like)
        sums = [_per_event(c, v, np.add, 0.0) for v in (px, py, e)]
        events[:, self.event.index("jet_pt")] = np.hypot(sums[0], sums[1])
        events[:, self.event.index("jet_energy")] = sums[2]
        if "jet_nparticles" in self.event:
            events[:, self.event.index("jet_nparticles")] = c.counts
        assert len(c.offsets) == n + 1
        return EventBlock(c.offsets, parts, events, like.label, like.event_key)


# --------------------------------------------------------------------------- views of a block
def _uniforms(event_key: np.ndarray, salt: int, tag: str, length: int) -> np.ndarray:

    return hash_uniform(event_key, (int(salt) * 0x9E3779B1 + zlib.crc32(tag.encode())) & 0xFFFFFFFFFFFFFFFF, length)


def _normals(event_key: np.ndarray, salt: int, tag: str, length: int) -> np.ndarray:
    """Standard normals from two hashed uniforms (Box–Muller)."""
    u1 = 1.0 - _uniforms(event_key, salt, tag + "/a", length)  # (0, 1]
    u2 = _uniforms(event_key, salt, tag + "/b", length)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)


class PulseColumns:
    """The columns pulse views change in an IceCube-modality dataset (from its manifest)."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        if manifest.get("modality") != "icecube":
            raise ValueError(f"pulse views need an icecube dataset; this one is '{manifest.get('modality')}'")
        names = feature_names(manifest, "particle")
        if "time" not in names:
            raise ValueError("pulse views need the stored pulse column 'time'")
        self.time = names.index("time")


def pulse_view(
    block: EventBlock, steps: Sequence[str], columns: PulseColumns, params: AugmentParams, *, salt: int, tag: str
) -> EventBlock:
    """IceCube views: ``dropout`` removes each pulse with probability ``dropout_fraction`` (an event keeps at
    least its pulse with the largest draw), ``jitter`` adds N(0, ``time_jitter``²) ns to each pulse time.
    Pulses keep their stored order; the derived features (t_rel, ...) are recomputed from the view."""
    keys = block.event_key
    for k, step in enumerate(steps):
        t = f"{tag}/{k}/{step}"
        counts = np.diff(block.offsets)
        ev = np.repeat(np.arange(len(counts)), counts)
        pos = np.arange(len(ev)) - np.repeat(block.offsets[:-1], counts)
        length = max(int(counts.max(initial=0)), 1)
        if step == "dropout":
            u = _uniforms(keys, salt, t, length)[ev, pos]
            keep = u >= params.dropout_fraction
            best = np.lexsort((-u, ev))[np.r_[0, np.cumsum(counts)[:-1]][counts > 0]]  # largest draw per event
            keep[best] = True
            n_new = np.bincount(ev[keep], minlength=len(counts))
            block = EventBlock(
                np.concatenate([[0], np.cumsum(n_new)]).astype(np.int64),
                block.particles[keep],
                block.events,
                block.label,
                block.event_key,
            )
        elif step == "jitter":
            parts = block.particles.astype(np.float64, copy=True)
            parts[:, columns.time] += params.time_jitter * _normals(keys, salt, t, length)[ev, pos]
            block = EventBlock(block.offsets, parts, block.events, block.label, block.event_key)
        else:
            raise ValueError(f"view step '{step}' is for jets; IceCube pulses take {', '.join(PULSE_AUGMENTATIONS)}")
    return block


def make_view(
    block: EventBlock,
    spec: str,
    columns: JetColumns | PulseColumns,
    params: AugmentParams,
    *,
    salt: int,
    max_len: int,
    tag: str = "",
) -> EventBlock:
    """One view of every event of ``block``: a pure function of (event key, salt, ``tag``, spec)."""
    steps = parse_view(spec)
    if steps == (FULL,):
        return block
    if isinstance(columns, PulseColumns):
        return pulse_view(block, steps, columns, params, salt=salt, tag=tag)
    if bad := [s for s in steps if s in PULSE_AUGMENTATIONS]:
        raise ValueError(f"view steps {bad} are for IceCube pulses; jets take {', '.join(AUGMENTATIONS)} and ktN")
    c = columns.constituents(block)
    eta0, phi0 = columns.axis(block)
    keys = block.event_key
    for k, step in enumerate(steps):
        t = f"{tag}/{k}/{step}"
        if step == "rotate":
            c = rotate(c, 2 * np.pi * _uniforms(keys, salt, t, 1)[:, 0])
        elif step == "translate":
            u = _uniforms(keys, salt, t, 2)
            c = translate(c, u[:, 0], u[:, 1], params.translate_width)
        else:
            length = max(int(c.counts.max(initial=0)), 1)
            ev, pos = c.event(), c.position()
            if step == "smear":
                n_eta = _normals(keys, salt, t + "/eta", length)[ev, pos]
                n_phi = _normals(keys, salt, t + "/phi", length)[ev, pos]
                c = smear(c, n_eta, n_phi, params.smear_strength, params.smear_pt_clip)
            elif step == "collinear":
                u_pick = _uniforms(keys, salt, t + "/pick", length)[ev, pos]
                r = _uniforms(keys, salt, t + "/r", length)[ev, pos]
                c = collinear_split(c, u_pick, r, max_len)
            else:
                n = int(_KT.match(step).group(1))  # type: ignore[union-attr]
                c = kt_subjets(c, n, eta0, phi0, params.kt_radius, columns.charge)
    return columns.block(sort_by_pt(c), block)


class ViewMaker:
    """Builds the model inputs of every view of a batch: ``x_v{i}`` (B, L_i, F) normalised features and
    ``mask_v{i}`` (B, L_i) with ``L_i`` = :func:`view_length`; ``stats`` holds ``features`` and ``norm``."""

    def __init__(self, spec: ViewSpec, manifest: dict[str, Any], stats: dict[str, Any], max_len: int) -> None:
        self.spec, self.manifest, self.stats, self.max_len = spec, manifest, stats, max_len
        self.columns = PulseColumns(manifest) if manifest.get("modality") == "icecube" else JetColumns(manifest)
        pulses = isinstance(self.columns, PulseColumns)
        for v in spec.views:  # steps of the other modality fail here, before any worker starts
            bad = [
                step
                for step in parse_view(v)
                if step != FULL and (step not in PULSE_AUGMENTATIONS if pulses else step in PULSE_AUGMENTATIONS)
            ]
            if bad:
                allowed = ", ".join(PULSE_AUGMENTATIONS) if pulses else ", ".join(AUGMENTATIONS) + ", ktN"
                raise ValueError(
                    f"view '{v}': steps {bad} do not apply to this {manifest['modality']} dataset; its steps are "
                    f"{allowed} and '{FULL}'"
                )
        self.lengths = [view_length(v, max_len) for v in spec.views]

    def blocks(self, block: EventBlock, salt: int) -> list[EventBlock]:
        """The views of ``block`` as EventBlocks (all stored columns, rebuilt); the plain ``ktN`` views
        share one clustering."""
        kt = {i: int(m.group(1)) for i, v in enumerate(self.spec.views) if (m := _KT.match(v))}
        out: dict[int, EventBlock] = {}
        if len(kt) > 1 and isinstance(self.columns, JetColumns):
            eta0, phi0 = self.columns.axis(block)
            c = self.columns.constituents(block)
            subjets = kt_subjets_many(c, list(kt.values()), eta0, phi0, self.spec.params.kt_radius, self.columns.charge)
            out = {i: self.columns.block(s, block) for i, s in zip(kt, subjets, strict=True)}
        return [
            out[i]
            if i in out
            else make_view(block, v, self.columns, self.spec.params, salt=salt, max_len=self.max_len, tag=f"view{i}")
            for i, v in enumerate(self.spec.views)
        ]

    def __call__(self, block: EventBlock, salt: int) -> dict[str, np.ndarray]:
        from physfm.data.loader import pad
        from physfm.features import compute
        from physfm.models.backbone import normalize  # noqa: PLC0415  (physfm.models imports this module)

        out: dict[str, np.ndarray] = {}
        for i, (vb, length) in enumerate(zip(self.blocks(block, salt), self.lengths, strict=True)):
            x, mask = pad(vb, compute(vb, self.manifest, self.stats["features"]), length)
            out[f"x_v{i}"], out[f"mask_v{i}"] = normalize(x, mask, self.stats), mask
        return out


def view_keys(n_views: int) -> list[tuple[str, str]]:
    """Batch keys ``(x_v{i}, mask_v{i})`` of ``n_views`` views."""
    return [(f"x_v{i}", f"mask_v{i}") for i in range(n_views)]


def check_views(views: Sequence[str]) -> list[str]:
    """The views, each checked by :func:`parse_view`."""
    for v in views:
        parse_view(v)
    return list(views)
