"""The zero-label floor: a soft-drop-mass-window tagger (issue 18).

Per class, a score from the jet's soft-drop mass m_SD alone, no label used:

* ``QCD``: ``-m_SD`` (light jets are light);
* a resonance class: ``-|m_SD - m_PDG|``, the resonance chosen by the class name's first letter
  (``T``: top, ``W``, ``Z``, ``H``: Higgs), with the masses of ``CutConfig.masses``.

The scores are handed to the metrics as ``exp(score / SCALE_GEV)``: a per-class monotone map, so
every one-vs-rest AUC is that of the raw score and the pair discriminant ``p_s / (p_s + p_b)`` is a
monotone function of ``score_s - score_b``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Scale of the exp map from GeV scores to positive class scores (any positive value gives the same ROC curves).
SCALE_GEV = 100.0


def _pdg_masses() -> dict[str, float]:
    # PDG 2024 (Review of Particle Physics): top (direct measurements), W, Z, Higgs; GeV
    return {"T": 172.57, "W": 80.369, "Z": 91.188, "H": 125.20}


@dataclass
class CutConfig:
    """Settings of the mass-window tagger (schema: ``baselines.cut``)."""

    masses: dict[str, float] = field(default_factory=_pdg_masses)
    background: str = "QCD"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def class_scores(m_sd: np.ndarray, classes: Sequence[str], cfg: CutConfig) -> np.ndarray:
    """``(n, len(classes))`` scores in GeV (higher = more like the class)."""
    m_sd = np.nan_to_num(np.asarray(m_sd, dtype=np.float64), nan=0.0)
    out = np.empty((len(m_sd), len(classes)))
    for j, name in enumerate(classes):
        if name == cfg.background:
            out[:, j] = -m_sd
        elif name[:1] in cfg.masses:
            out[:, j] = -np.abs(m_sd - cfg.masses[name[:1]])
        else:
            raise ValueError(
                f"the mass-window tagger has no mass for class '{name}': add its first letter to "
                f"baselines.cut.masses (have {sorted(cfg.masses)}) or make it the background class "
                "(baselines.cut.background)"
            )
    return out


def cut_probs(m_sd: np.ndarray, classes: Sequence[str], cfg: CutConfig) -> np.ndarray:
    """Positive per-class scores for the metrics: ``exp(score / SCALE_GEV)`` (see the module doc)."""
    return np.exp(class_scores(m_sd, classes, cfg) / SCALE_GEV)
