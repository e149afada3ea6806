"""The label-efficiency grid as the workflow sees it: cells, wildcard values, run names.

Used by ``workflow/rules/finetune.smk`` (Snakemake's linter wants no functions beside rules).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from physfm.finetune.subsets import parse_spec, spec_name


def label_token(spec: str | int | float) -> str:
    """Path-safe wildcard value of a label spec: ``n300``, ``f0.01`` or ``all``."""
    kind, value = parse_spec(spec)
    if kind == "all":
        return "all"
    return f"n{int(value)}" if kind == "count" else f"f{value:g}"


def label_specs(labels: Sequence[str | int | float]) -> dict[str, str]:
    """``{wildcard token: spec}`` in config order; two specs naming the same subset are an error."""
    out: dict[str, str] = {}
    for spec in labels:
        token = label_token(spec)
        if token in out:
            raise ValueError(f"finetune.labels lists the same subset twice: {out[token]!r} and {spec!r}")
        out[token] = str(spec)
    return out


def grid_cells(
    backbones: Sequence[str],
    tokens: Sequence[str],
    modes: Sequence[str],
    seeds: Sequence[int],
    scratch_per_backbone: bool = False,
    reference_tokens: Sequence[str] = (),
) -> list[tuple[str, str, str, int]]:
    """``(backbone, labels token, mode, seed)`` of every fine-tuning job.

    Scratch models take only an architecture from a backbone: unless ``scratch_per_backbone``, they
    are trained once, with the first backbone's, and serve as every backbone's reference.
    ``reference_tokens`` are label counts trained in scratch mode only (they extend the reference
    curve of the label-efficiency factor).
    """
    cells = [
        (b, t, m, s)
        for b in backbones
        for t in tokens
        for m in modes
        for s in seeds
        if m != "scratch" or scratch_per_backbone or b == backbones[0]
    ]
    extra = [
        (b, t, "scratch", s)
        for b in backbones
        for t in reference_tokens
        for s in seeds
        if scratch_per_backbone or b == backbones[0]
    ]
    return cells + [c for c in extra if c not in cells]


def cell_run_name(backbone: str, spec: str, mode: str, seed: int | str, show_backbone: bool) -> str:
    """Readable MLflow run name: ``finetune n=300 mode=frozen seed=1`` (backbone named when several)."""
    prefix = f"finetune {backbone} " if show_backbone else "finetune "
    return f"{prefix}{spec_name(spec)} mode={mode} seed={seed}"


def backbone_tokenizers(pretrain: dict[str, Any], backbones: Sequence[str]) -> list[str]:
    """Tokenizer artefact names (``<method>-<K>``) behind the given backbones, each once."""
    names: list[str] = []
    for b in backbones:
        tok = (pretrain.get("backbones") or {}).get(b, {}).get("tokenizer")
        if tok and tok not in names:
            names.append(tok)
    return names
