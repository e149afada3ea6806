"""Model-ready per-particle features computed from the stored (raw) ones, at load time.

Shards keep the raw inputs losslessly; models and tokenizers ask for named features here.
A name that is a stored column (e.g. ``part_deta``) is passed through; the derived names below
are computed from stored columns. Units: GeV for momenta/energies before the log.

IceCube (modality ``icecube``; see :func:`_icecube`): ``dom``, ``t_rel``, ``log_charge``, ``aux``,
``event_log10_qtot``; the stored ``sensor_id, time, charge, auxiliary, x, y, z`` pass through.

LArTPC (modality ``lartpc``; see :func:`_lartpc`): ``log_energy``; the stored point columns
(``x, y, z, voxel_energy, ...``, labels ``semantic``, ``group_id``, ...) pass through.

Jets (modality ``jets``):

==================  ======================================================
``log_pt``          log(particle pT / GeV)
``log_e``           log(particle energy / GeV)
``log_pt_rel``      log(particle pT / jet pT)
``log_e_rel``       log(particle energy / jet energy)
``deta``            eta_particle - eta_jet
``dphi``            phi_particle - phi_jet, in [-pi, pi)
``dr``              sqrt(deta^2 + dphi^2)
``charge``          electric charge / e
``is_*``            particle-ID flags: charged_hadron, neutral_hadron, photon, electron, muon
==================  ======================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from physfm.data.jetclass import OPTIONAL_GROUPS
from physfm.data.shards import EventBlock, feature_names

#: Default continuous inputs for jet models (MPM / OmniJet-α style) and for tokenizers.
JET_DEFAULT = (
    "log_pt",
    "deta",
    "dphi",
    "log_e",
    "log_pt_rel",
    "log_e_rel",
    "dr",
    "charge",
    "is_charged_hadron",
    "is_neutral_hadron",
    "is_photon",
    "is_electron",
    "is_muon",
)
JET_TOKEN_DEFAULT = ("log_pt", "deta", "dphi")

#: Derived jet features that read one stored column of an optional input group
#: (:data:`physfm.data.jetclass.OPTIONAL_GROUPS`); a stored column passes through as its own name.
_SOURCE_COLUMN = {
    "charge": "part_charge",
    "is_charged_hadron": "part_isChargedHadron",
    "is_neutral_hadron": "part_isNeutralHadron",
    "is_photon": "part_isPhoton",
    "is_electron": "part_isElectron",
    "is_muon": "part_isMuon",
}


def input_group(name: str) -> str | None:
    """The optional input group (``charge``, ``pid``, ``impact_parameters``) a model feature belongs
    to, or None for the kinematic features every data set has."""
    column = _SOURCE_COLUMN.get(name, name)
    return next((g for g, cols in OPTIONAL_GROUPS.items() if column in cols), None)


_EPS = 1e-8


def _col(block: EventBlock, names: list[str], name: str) -> np.ndarray:
    return block.particles[:, names.index(name)].astype(np.float64)


def _per_row(block: EventBlock, enames: list[str], name: str) -> np.ndarray:
    return np.repeat(block.events[:, enames.index(name)].astype(np.float64), np.diff(block.offsets))


def _jets(block: EventBlock, p: list[str], e: list[str]) -> dict[str, Callable[[], np.ndarray]]:
    pt = lambda: np.hypot(_col(block, p, "part_px"), _col(block, p, "part_py"))  # noqa: E731
    return {
        "log_pt": lambda: np.log(np.maximum(pt(), _EPS)),
        "log_e": lambda: np.log(np.maximum(_col(block, p, "part_energy"), _EPS)),
        "log_pt_rel": lambda: np.log(np.maximum(pt() / _per_row(block, e, "jet_pt"), _EPS)),
        "log_e_rel": lambda: np.log(np.maximum(_col(block, p, "part_energy") / _per_row(block, e, "jet_energy"), _EPS)),
        "deta": lambda: _col(block, p, "part_deta"),
        "dphi": lambda: _col(block, p, "part_dphi"),
        "dr": lambda: np.hypot(_col(block, p, "part_deta"), _col(block, p, "part_dphi")),
        "charge": lambda: _col(block, p, "part_charge"),
        "is_charged_hadron": lambda: _col(block, p, "part_isChargedHadron"),
        "is_neutral_hadron": lambda: _col(block, p, "part_isNeutralHadron"),
        "is_photon": lambda: _col(block, p, "part_isPhoton"),
        "is_electron": lambda: _col(block, p, "part_isElectron"),
        "is_muon": lambda: _col(block, p, "part_isMuon"),
    }


# --------------------------------------------------------------------------- IceCube (issue 6)
#: Default continuous inputs for IceCube models: pulse time, charge, flag and DOM position.
ICECUBE_DEFAULT = ("t_rel", "log_charge", "aux", "x", "y", "z")
#: PolarBERT's projected per-pulse features (the DOM identity enters as a token, feature ``dom``).
POLARBERT_FEATURES = ("t_rel", "log_charge", "aux")


def _per_event_min(block: EventBlock, values: np.ndarray) -> np.ndarray:
    """Each event's minimum of ``values`` (inf where the event has no finite value), per row."""
    counts = np.diff(block.offsets)
    out = np.full(len(counts), np.inf)
    filled = counts > 0
    if filled.any():
        out[filled] = np.minimum.reduceat(values, block.offsets[:-1][filled])
    return np.repeat(out, counts)


def _per_event_sum(block: EventBlock, values: np.ndarray) -> np.ndarray:
    counts = np.diff(block.offsets)
    out = np.zeros(len(counts))
    filled = counts > 0
    if filled.any():
        out[filled] = np.add.reduceat(values, block.offsets[:-1][filled])
    return np.repeat(out, counts)


def _icecube(block: EventBlock, p: list[str], e: list[str]) -> dict[str, Callable[[], np.ndarray]]:
    """IceCube pulses (modality ``icecube``; stored: sensor_id, time, charge, auxiliary, x, y, z).

    ``dom`` sensor id (the PolarBERT vocabulary); ``t_rel`` time - the event's first non-auxiliary
    pulse time, ns (first pulse when all are auxiliary); ``log_charge`` log10(charge / pe);
    ``aux`` auxiliary flag 0/1; ``event_log10_qtot`` log10 of the event's total charge over *all*
    its pulses (repeated on each pulse; PolarBERT's class-token target, immune to truncation).
    """

    def t_rel() -> np.ndarray:
        t = _col(block, p, "time")
        first_hlc = _per_event_min(block, np.where(_col(block, p, "auxiliary") == 0, t, np.inf))
        first_any = _per_event_min(block, t)
        return t - np.where(np.isfinite(first_hlc), first_hlc, first_any)

    def cog(values: np.ndarray) -> np.ndarray:
        """Charge-weighted mean over the event's non-auxiliary pulses (all pulses if none), per row."""
        q = _col(block, p, "charge")
        w = np.where(_col(block, p, "auxiliary") == 0, q, 0.0)
        w_sum = _per_event_sum(block, w)
        w = np.where(w_sum > 0, w, q)
        return _per_event_sum(block, w * values) / np.maximum(_per_event_sum(block, w), 1e-12)

    return {
        "dom": lambda: _col(block, p, "sensor_id"),
        "t_cog": lambda: _col(block, p, "time") - cog(_col(block, p, "time")),
        "x_cog": lambda: _col(block, p, "x") - cog(_col(block, p, "x")),
        "y_cog": lambda: _col(block, p, "y") - cog(_col(block, p, "y")),
        "z_cog": lambda: _col(block, p, "z") - cog(_col(block, p, "z")),
        "t_rel": t_rel,
        "log_charge": lambda: np.log10(np.maximum(_col(block, p, "charge"), 1e-3)),
        "aux": lambda: (_col(block, p, "auxiliary") != 0).astype(np.float64),
        "event_log10_qtot": lambda: np.log10(np.maximum(_per_event_sum(block, _col(block, p, "charge")), 1e-3)),
    }


def _lartpc(block: EventBlock, p: list[str], e: list[str]) -> dict[str, Callable[[], np.ndarray]]:
    """LArTPC points (modality ``lartpc``; see physfm.data.lartpc): ``log_energy`` log10(voxel
    energy / MeV), floored at 1 keV (PoLAr-MAE's energy input, before its scaling)."""
    return {"log_energy": lambda: np.log10(np.maximum(_col(block, p, "voxel_energy"), 1e-3))}


#: Derived-feature tables per modality; other modalities register theirs here.
DERIVED: dict[str, Callable[[EventBlock, list[str], list[str]], dict[str, Callable[[], np.ndarray]]]] = {
    "jets": _jets,
    "icecube": _icecube,
    "lartpc": _lartpc,
}


def available(manifest: dict[str, Any]) -> list[str]:
    """Every feature name this dataset can provide (stored columns and derived ones)."""
    stored = feature_names(manifest, "particle")
    dummy = EventBlock(np.zeros(1, np.int64), np.zeros((0, len(stored))), np.zeros((0, 0)), np.zeros(0), np.zeros(0))
    derived = DERIVED.get(manifest["modality"])
    return stored + (list(derived(dummy, stored, []).keys()) if derived else [])


def compute(block: EventBlock, manifest: dict[str, Any], names: Sequence[str]) -> np.ndarray:
    """``(rows, len(names))`` float32 features for the particles of ``block``."""
    stored = feature_names(manifest, "particle")
    derived_fn = DERIVED.get(manifest["modality"])
    table = derived_fn(block, stored, feature_names(manifest, "event")) if derived_fn else {}
    out = np.empty((len(block.particles), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        if name in stored:
            out[:, j] = block.particles[:, stored.index(name)]
        elif name in table:
            out[:, j] = table[name]()
        else:
            raise KeyError(
                f"unknown feature '{name}' for modality '{manifest['modality']}'; available: "
                + ", ".join(available(manifest))
            )
    return out


# --------------------------------------------------------------------------- label-free event targets
#: A batch of padded raw columns by name: ``(B, L)`` arrays (what pretraining objectives prepare from).
NpBatch = dict[str, np.ndarray]


def _log_mass(raw: NpBatch, mask: np.ndarray) -> np.ndarray:
    w = mask.astype(np.float64)
    e, px, py, pz = (
        np.sum(raw[k].astype(np.float64) * w, axis=1) for k in ("part_energy", "part_px", "part_py", "part_pz")
    )
    m2 = e**2 - px**2 - py**2 - pz**2
    return np.log(np.sqrt(np.maximum(m2, 0.0)) + 1.0)


def _log_pt(raw: NpBatch, mask: np.ndarray) -> np.ndarray:
    w = mask.astype(np.float64)
    px, py = (np.sum(raw[k].astype(np.float64) * w, axis=1) for k in ("part_px", "part_py"))
    return np.log(np.hypot(px, py) + 1.0)


def _log_multiplicity(raw: NpBatch, mask: np.ndarray) -> np.ndarray:
    return np.log(mask.sum(axis=1).astype(np.float64) + 1.0)


@dataclass(frozen=True)
class GlobalTarget:
    """An event quantity computed from the (padded) particles; ``features`` are what it reads."""

    features: tuple[str, ...]
    fn: Callable[[NpBatch, np.ndarray], np.ndarray]
    doc: str


def _log10_qtot(raw: NpBatch, mask: np.ndarray) -> np.ndarray:
    """The event's log10 total charge (over all its pulses, from ``event_log10_qtot``)."""
    v = np.where(mask, raw["event_log10_qtot"].astype(np.float64), -np.inf).max(axis=1)
    return np.where(np.isfinite(v), v, 0.0)


_ICECUBE_TARGETS = dict(
    log10_qtot=GlobalTarget(
        ("event_log10_qtot",), _log10_qtot, "log10 of the event's total charge / pe, over all its pulses (PolarBERT)"
    )
)


#: Label-free event targets for the class token, by name; other modalities add theirs here.
GLOBAL_TARGETS: dict[str, GlobalTarget] = {
    "log_mass": GlobalTarget(
        ("part_energy", "part_px", "part_py", "part_pz"), _log_mass, "log(1 + invariant mass / GeV) of the particles"
    ),
    "log_pt": GlobalTarget(("part_px", "part_py"), _log_pt, "log(1 + summed pT / GeV)"),
    "log_multiplicity": GlobalTarget((), _log_multiplicity, "log(1 + number of particles)"),
    **_ICECUBE_TARGETS,
}


def global_targets(names: list[str], raw: NpBatch, mask: np.ndarray) -> np.ndarray:
    """``(B, len(names))`` float64 raw (unstandardised) global targets."""
    for n in names:
        if n not in GLOBAL_TARGETS:
            raise KeyError(f"unknown global target '{n}'; choose from {sorted(GLOBAL_TARGETS)}")
    return np.stack([GLOBAL_TARGETS[n].fn(raw, mask) for n in names], axis=1) if names else np.zeros((len(mask), 0))
