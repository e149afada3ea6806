"""Options of each tokenizer method: one dataclass per method, with defaults and descriptions.

This module is light (no faiss/torch) so that ``physfm tokenizer fit --help`` can list the options.
The defaults here are also the defaults of the ``tokenizer.<method>`` sections of
workflow/schemas/config.schema.yaml (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any


def option(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a default and a description (shown by ``--help`` and in the config docs)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class KMeansConfig:
    sample: int = option(1_000_000, "train-split particles sampled for the fit (more = slower, finer centroids)")
    niter: int = option(25, "Lloyd iterations")
    device: str = option("auto", "auto, cpu or cuda: where faiss runs the fit (cuda needs faiss-gpu installed)")


@dataclass
class VQVAEConfig:
    conditional: bool = option(
        False, "set-conditional transformer over the jet (OmniJet-α) instead of per-particle MLPs"
    )
    latent_dim: int = option(4, "dimension of the code vectors")
    hidden: int = option(64, "MLP width, or transformer model width when conditional")
    layers: int = option(2, "hidden layers of each MLP, or transformer blocks of encoder and of decoder")
    heads: int = option(4, "attention heads (conditional)")
    steps: int = option(2000, "optimisation steps")
    batch_size: int = option(1024, "particles per step (per-particle variant)")
    jet_batch_size: int = option(32, "jets per step (conditional variant)")
    lr: float = option(2e-3, "Adam learning rate (cosine-decayed to 10% over the steps)")
    beta: float = option(0.25, "commitment-loss weight")
    ema_decay: float = option(0.99, "decay of the codebook's exponential moving average")
    kmeans_init: bool = option(True, "initialise the codebook by k-means on the initial encoder's latents")
    dead_code_every: int = option(50, "steps between dead-code replacements (0 = never)")
    dead_code_stop: float = option(0.9, "no replacement after this fraction of the steps")
    sample: int = option(1_000_000, "train-split particles held in memory for training")
    max_len: int = option(128, "conditional: particles per jet in training (softest dropped)")
    device: str = option("auto", "auto, cpu or cuda: where the VQ-VAE trains (auto = CUDA when available)")


@dataclass
class BinningConfig:
    scheme: str = option("quantile", "quantile (equal-population bins) or uniform (equal-width bins)")
    sample: int = option(1_000_000, "train-split particles sampled to place the bins")
    clip: float = option(0.001, "uniform: the range spans the [clip, 1 - clip] quantiles of each feature")


#: method name -> its options dataclass
CONFIGS: dict[str, type] = {"kmeans": KMeansConfig, "vqvae": VQVAEConfig, "binning": BinningConfig}


def make_config(method: str, options: dict[str, Any] | None) -> Any:
    """Build the method's options from a mapping whose values may be strings (from the command line)."""
    if method not in CONFIGS:
        raise ValueError(f"unknown tokenizer method '{method}'; choose one of {', '.join(CONFIGS)}")
    cls = CONFIGS[method]
    options = dict(options or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method '{method}'; valid: {', '.join(sorted(fields))} "
            "(see `physfm tokenizer fit --help`)"
        )
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in options.items()})


def _coerce(name: str, value: Any, typ: Any) -> Any:
    if isinstance(typ, types.UnionType):  # e.g. int | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if not isinstance(value, str):
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ValueError(f"option {name} must be {typ.__name__}, got {value!r}")
        return value
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            f = float(value)
            if not f.is_integer():
                raise ValueError(value)
            return int(f)
        return typ(value)
    except ValueError:
        raise ValueError(f"option {name}={value!r}: expected {typ.__name__}") from None


def options_help(method: str) -> str:
    """One line per option of a method: name, default, description (for --help)."""
    return "\n".join(
        f"    {f.name} (default {f.default!r}): {f.metadata.get('help', '')}"
        for f in dataclasses.fields(CONFIGS[method])
    )
