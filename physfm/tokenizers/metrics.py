"""Tokenizer quality on a held-out split: codebook health, per-feature resolution, jet-level closure.

* ``utilisation``: fraction of the K codes used at least once; ``perplexity``: exp of the entropy
  of the code frequencies (K when all codes are equally used, 1 when one code takes everything).
* ``resolution.<feature>``: statistics of decoded − true in the feature's raw units (mean, std,
  rmse, 5/16/50/84/95 % quantiles); ``mse_normalised``: mean squared error in normalised units,
  averaged over features (one number to compare codebook sizes).
* ``jet.mass`` / ``jet.pt``: jet mass and pT summed from the decoded particles vs from the true
  ones, as relative residuals decoded/true − 1 (mean, std, 16/50/84 % quantiles). Particles are
  taken as massless four-vectors from pT (``log_pt``, or ``log_pt_rel`` in jet-pT units), ``deta``
  and ``dphi``; both sides use the same formula, so this measures the tokenization alone. Needs
  those features; otherwise ``jet`` is null.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from physfm.data.dataset import Dataset
from physfm.data.loader import open_split, pad
from physfm.tokenizers.base import Tokenizer

QUANTILES = {"q05": 5, "q16": 16, "q50": 50, "q84": 84, "q95": 95}


@dataclass
class Evaluation:
    """Arrays behind the metrics (for plots) and the metrics themselves."""

    x: np.ndarray  # (B, L, F) true raw features
    mask: np.ndarray  # (B, L)
    codes: np.ndarray  # (B, L)
    decoded: np.ndarray  # (B, L, F)
    jets: dict[str, tuple[np.ndarray, np.ndarray]] | None  # name -> (true, decoded) per jet
    metrics: dict[str, Any]


def code_usage(codes: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Utilisation and perplexity of a set of codes (padding entries < 0 are ignored)."""
    c = codes[codes >= 0]
    counts = np.bincount(c, minlength=codebook_size)
    p = counts / max(counts.sum(), 1)
    nz = p[p > 0]
    ppl = float(np.exp(-(nz * np.log(nz)).sum())) if len(nz) else 0.0
    return {
        "utilisation": float((counts > 0).mean()),
        "codes_used": int((counts > 0).sum()),
        "perplexity": ppl,
        "perplexity_fraction": ppl / codebook_size,
    }


def jet_kinematics(features: list[str], x: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray] | None:
    """Jet mass and pT (B,) from massless particles, or None if the features do not allow it."""
    pt_name = next((f for f in ("log_pt", "log_pt_rel") if f in features), None)
    if pt_name is None or "deta" not in features or "dphi" not in features:
        return None
    x64 = x.astype(np.float64)
    pt = np.where(mask, np.exp(np.clip(x64[..., features.index(pt_name)], -50, 50)), 0.0)
    eta, phi = x64[..., features.index("deta")], x64[..., features.index("dphi")]
    px, py = (pt * np.cos(phi)).sum(1), (pt * np.sin(phi)).sum(1)
    pz, e = (pt * np.sinh(eta)).sum(1), (pt * np.cosh(eta)).sum(1)
    m2 = e**2 - px**2 - py**2 - pz**2
    return {"mass": np.sqrt(np.maximum(m2, 0.0)), "pt": np.hypot(px, py)}


def _stats(r: np.ndarray) -> dict[str, float]:
    if len(r) == 0:
        return {}
    out = {"mean": float(r.mean()), "std": float(r.std()), "rmse": float(np.sqrt((r**2).mean()))}
    out.update({k: float(v) for k, v in zip(QUANTILES, np.percentile(r, list(QUANTILES.values())), strict=True)})
    return out


def load_events(
    data_dir: Dataset | str | Path, split: str, features: list[str], max_events: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``max_events`` events of ``split``, padded to their longest (no truncation)."""
    s = open_split(data_dir, split)
    n = min(len(s), max_events)
    if n == 0:
        raise ValueError(f"split '{split}' of {data_dir} is empty; evaluate on another split (e.g. --eval-split test)")
    block = s.read(np.arange(n))
    return pad(block, s.features(block, features), int(np.diff(block.offsets).max()))


def evaluate(
    tok: Tokenizer, data_dir: Dataset | str | Path, split: str = "val", max_events: int = 20_000
) -> Evaluation:
    """Encode and decode ``max_events`` events of ``split``; measure code usage, resolution and closure."""
    x, mask = load_events(data_dir, split, tok.features, max_events)
    t0 = time.perf_counter()
    codes = tok.encode(x, mask)
    encode_s = time.perf_counter() - t0
    decoded = tok.decode(codes, mask)
    n_particles = int(mask.sum())
    res = decoded[mask].astype(np.float64) - x[mask].astype(np.float64)
    metrics: dict[str, Any] = {
        "method": tok.method,
        "codebook_size": tok.codebook_size,
        "features": tok.features,
        "tokenizer_version": tok.version,
        "data_version": tok.data_version,
        "split": split,
        "n_events": len(x),
        "n_particles": n_particles,
        **code_usage(codes, tok.codebook_size),
        "mse_normalised": float(((res / tok.norm.std) ** 2).mean()),
        "resolution": {f: _stats(res[:, j]) for j, f in enumerate(tok.features)},
        "encode_particles_per_second": n_particles / max(encode_s, 1e-9),
    }
    true_j, dec_j = jet_kinematics(tok.features, x, mask), jet_kinematics(tok.features, decoded, mask)
    jets = None
    if true_j is not None and dec_j is not None:
        jets = {k: (true_j[k], dec_j[k]) for k in true_j}
        metrics["jet"] = {}
        for k, (t, d) in jets.items():
            ok = t > 0
            metrics["jet"][k] = _stats(d[ok] / t[ok] - 1.0)
    else:
        metrics["jet"] = None
    return Evaluation(x, mask, codes, decoded, jets, metrics)


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as ``a.b.c`` keys (for MLflow)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_metrics(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            out[key] = float(v)
    return out
