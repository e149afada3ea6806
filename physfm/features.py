"""Model-ready per-particle features computed from the stored (raw) ones, at load time.

Shards keep the raw inputs losslessly; models and tokenizers ask for named features here.
A name that is a stored column (e.g. ``part_deta``) is passed through; the derived names below
are computed from stored columns. Units: GeV for momenta/energies before the log.

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
from typing import Any

import numpy as np

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


#: Derived-feature tables per modality; other modalities register theirs here.
DERIVED: dict[str, Callable[[EventBlock, list[str], list[str]], dict[str, Callable[[], np.ndarray]]]] = {
    "jets": _jets,
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
