"""The pretraining loss plot written beside every backbone (``loss.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_history(history: list[dict[str, float]], baseline: dict[str, Any], path: Path, title: str) -> bool:
    """Validation losses vs step, with the uniform (log K) and unigram baselines."""
    keys = sorted({k for h in history for k in h if k.startswith("val/loss")})
    if not keys:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys:
        pts = [(h["step"], h[k]) for h in history if k in h]
        ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=k.removeprefix("val/"))
    if baseline.get("log_K"):
        ax.axhline(baseline["log_K"], color="k", ls="--", lw=1, label="uniform (log K)")
    if baseline.get("unigram_entropy"):
        ax.axhline(baseline["unigram_entropy"], color="gray", ls=":", lw=1, label="unigram entropy")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (CE in nats, MSE)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
