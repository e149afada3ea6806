"""Tokenizer quality plots (PNG), written to ``<artefact>/plots/`` and logged to MLflow.

``code_usage.png``   code frequencies sorted by rank, against the uniform expectation
``features.png``     per feature: true vs decoded distributions, and decoded − true
``jet_closure.png``  jet mass and pT from decoded vs true particles, and their ratio
``training.png``     VQ-VAE only: losses, utilisation and perplexity over the training steps
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from physfm.io import atomic_path  # noqa: E402
from physfm.tokenizers.base import Tokenizer  # noqa: E402
from physfm.tokenizers.metrics import Evaluation  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def _title(tok: Tokenizer, ev: Evaluation) -> str:
    return f"{tok.method} K={tok.codebook_size} ({ev.metrics['split']}, {ev.metrics['n_particles']} particles)"


def code_usage_plot(tok: Tokenizer, ev: Evaluation, path: Path) -> Path:
    counts = np.bincount(ev.codes[ev.mask], minlength=tok.codebook_size)
    ranked = np.sort(counts)[::-1]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.step(np.arange(1, len(ranked) + 1), np.maximum(ranked, 0.5), where="mid", label="codes, by frequency")
    ax.axhline(counts.sum() / tok.codebook_size, color="k", ls="--", lw=1, label="uniform use")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5)
    ax.set_xlabel("code rank")
    ax.set_ylabel("particles per code")
    m = ev.metrics
    ax.set_title(
        f"{_title(tok, ev)}\nutilisation {m['utilisation']:.1%}, perplexity {m['perplexity']:.0f} "
        f"({m['perplexity_fraction']:.0%} of K)",
        fontsize=10,
    )
    ax.legend()
    return _save(fig, path)


def _range(*arrays: np.ndarray) -> tuple[float, float]:
    v = np.concatenate([a.ravel() for a in arrays])
    lo, hi = np.percentile(v, [0.5, 99.5]) if len(v) else (0.0, 1.0)
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(hi) + 0.5)


def features_plot(tok: Tokenizer, ev: Evaluation, path: Path) -> Path:
    n = len(tok.features)
    fig, axes = plt.subplots(2, n, figsize=(4 * n, 6.5), squeeze=False)
    true, dec = ev.x[ev.mask], ev.decoded[ev.mask]
    for j, f in enumerate(tok.features):
        lo, hi = _range(true[:, j])
        bins = np.linspace(lo, hi, 61)
        ax = axes[0][j]
        ax.hist(np.clip(true[:, j], lo, hi), bins=bins, histtype="step", label="true", lw=1.5)
        ax.hist(np.clip(dec[:, j], lo, hi), bins=bins, histtype="step", label="decoded", lw=1.2)
        ax.set_xlabel(f)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        r = dec[:, j] - true[:, j]
        rlo, rhi = _range(r)
        ax = axes[1][j]
        ax.hist(np.clip(r, rlo, rhi), bins=61, histtype="stepfilled", alpha=0.7)
        s = ev.metrics["resolution"][f]
        ax.set_xlabel(f"decoded − true  {f}")
        ax.set_title(f"std {s['std']:.3g}, 68% [{s['q16']:.2g}, {s['q84']:.2g}]", fontsize=9)
    fig.suptitle(_title(tok, ev), fontsize=11)
    return _save(fig, path)


def jet_closure_plot(tok: Tokenizer, ev: Evaluation, path: Path) -> Path | None:
    if not ev.jets:
        return None
    fig, axes = plt.subplots(2, len(ev.jets), figsize=(5 * len(ev.jets), 7), squeeze=False)
    labels = {"mass": "jet mass", "pt": "jet pT"}
    unit = " / jet pT" if "log_pt" not in tok.features else " [GeV]"
    for j, (name, (t, d)) in enumerate(ev.jets.items()):
        lo, hi = _range(t, d)
        bins = np.linspace(lo, hi, 51)
        ax = axes[0][j]
        ax.hist(np.clip(t, lo, hi), bins=bins, histtype="step", lw=1.5, label="true particles")
        ax.hist(np.clip(d, lo, hi), bins=bins, histtype="step", lw=1.2, label="decoded particles")
        ax.set_xlabel(labels.get(name, name) + unit)
        ax.legend(fontsize=8)
        ok = t > 0
        r = d[ok] / t[ok]
        rlo, rhi = _range(r)
        ax = axes[1][j]
        ax.hist(np.clip(r, rlo, rhi), bins=51, histtype="stepfilled", alpha=0.7)
        ax.axvline(1.0, color="k", lw=1, ls="--")
        s = ev.metrics["jet"][name]
        ax.set_xlabel(f"{labels.get(name, name)}: decoded / true")
        ax.set_title(f"mean {s['mean']:+.3f}, std {s['std']:.3f}", fontsize=9)
    fig.suptitle(f"jet closure, {_title(tok, ev)}", fontsize=11)
    return _save(fig, path)


def training_plot(tok: Tokenizer, path: Path) -> Path | None:
    hist = tok.fit_info.get("history") or []
    if not hist:
        return None
    step = [h["step"] for h in hist]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(step, [h["recon"] for h in hist], label="reconstruction (MSE)")
    a.plot(step, [h["commit"] for h in hist], label="commitment")
    a.set_yscale("log")
    a.set_xlabel("step")
    a.legend(fontsize=8)
    b.plot(step, [h["utilisation"] for h in hist], label="utilisation (per window)")
    b.plot(step, [h["perplexity"] / tok.codebook_size for h in hist], label="perplexity / K")
    b.set_ylim(0, 1.05)
    b.set_xlabel("step")
    b.legend(fontsize=8)
    fig.suptitle(f"{tok.method} K={tok.codebook_size} training", fontsize=11)
    return _save(fig, path)


def make_plots(tok: Tokenizer, ev: Evaluation, out_dir: str | Path) -> list[Path]:
    """Write every plot that applies into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        code_usage_plot(tok, ev, out_dir / "code_usage.png"),
        features_plot(tok, ev, out_dir / "features.png"),
        jet_closure_plot(tok, ev, out_dir / "jet_closure.png"),
        training_plot(tok, out_dir / "training.png"),
    ]
    return [p for p in paths if p is not None]
