"""Fitting a tokenizer and writing its artefact directory (codebook, metrics, plots) in one go."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from physfm.data.dataset import Dataset, open_dataset
from physfm.features import JET_TOKEN_DEFAULT, available
from physfm.io import atomic_dir, write_json
from physfm.tokenizers.base import LogFn, Tokenizer, tokenizer_class
from physfm.tokenizers.metrics import Evaluation, evaluate
from physfm.tokenizers.options import make_config

DEFAULT_FEATURES = {"jets": JET_TOKEN_DEFAULT}


@dataclass
class EvalSettings:
    split: str = "val"  # split the quality metrics are measured on
    max_events: int = 20000  # events used for metrics and plots


@dataclass
class TokenizerFitConfig:
    """Settings of one ``tokenizer fit`` job: the ``tokenizer:`` config section sliced to one method.

    ``options`` is that method's section (``tokenizer.kmeans``, ...), checked by
    :func:`physfm.tokenizers.options.make_config`; the list of tokenizers and resources stay in the workflow.
    """

    features: list[str] = field(default_factory=lambda: list(JET_TOKEN_DEFAULT))
    seed: int = 0
    eval: EvalSettings = field(default_factory=EvalSettings)
    options: dict[str, Any] = field(default_factory=dict)


def fit_tokenizer(
    data_dir: Dataset | str | Path,
    method: str,
    codebook_size: int,
    *,
    features: Sequence[str] | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    progress: bool = True,
    log: LogFn | None = None,
) -> Tokenizer:
    """Fit a ``method`` tokenizer with ``codebook_size`` codes on the train split of ``data_dir``.

    ``features`` are physfm.features names (default for jets: log_pt, deta, dphi); ``options`` are
    the method's settings (see ``physfm tokenizer fit --help``), values may be strings;
    ``log(metrics, step)`` receives training progress (VQ-VAE). The normalisation is fitted on the
    train split only. Same data, options and seed give the same tokenizer (same ``version``).
    """
    ds = open_dataset(data_dir, verify=True)  # once per fit: refuse shards that changed since convert
    manifest, data_dir = ds.manifest, ds.path
    cls = tokenizer_class(method)
    config = make_config(method, options)
    if features is None:
        if manifest["modality"] not in DEFAULT_FEATURES:
            raise ValueError(f"no default tokenizer features for modality '{manifest['modality']}'; pass features")
        features = DEFAULT_FEATURES[manifest["modality"]]
    features = list(features)
    missing = [f for f in features if f not in available(manifest)]
    if missing:
        raise ValueError(f"features {missing} are not available in {data_dir}; choose from {available(manifest)}")
    if manifest["n_events"].get("train", 0) == 0:
        raise ValueError(f"{data_dir} has no train events; the tokenizer is fitted on the train split")
    t0 = time.perf_counter()
    tok = cls.fit(ds, features, int(codebook_size), config, seed=seed, progress=progress, log=log)
    tok.data_version = manifest["data_version"]
    tok.fit_info = {"seed": seed, "wall_seconds": time.perf_counter() - t0, **tok.fit_info}
    return tok


def write_report(
    tok: Tokenizer, data_dir: Dataset | str | Path, out_dir: str | Path, split: str, max_events: int
) -> Evaluation:
    """Evaluate on ``split`` and write ``metrics.json`` and ``plots/*.png`` into ``out_dir``."""
    from physfm.tokenizers.plots import make_plots

    ev = evaluate(tok, data_dir, split=split, max_events=max_events)
    make_plots(tok, ev, Path(out_dir) / "plots")
    write_json(Path(out_dir) / "metrics.json", {**ev.metrics, "fit": _fit_summary(tok)})
    return ev


def make_tokenizer(
    data_dir: Dataset | str | Path,
    out_dir: str | Path,
    method: str,
    codebook_size: int,
    *,
    features: Sequence[str] | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    eval_split: str = "val",
    eval_events: int = 20_000,
    progress: bool = True,
    log: LogFn | None = None,
) -> tuple[Tokenizer, Evaluation]:
    """Fit, save, evaluate and plot: the complete artefact directory, swapped into place when complete."""
    data_dir = open_dataset(data_dir, verify=True)
    tok = fit_tokenizer(
        data_dir, method, codebook_size, features=features, seed=seed, options=options, progress=progress, log=log
    )
    with atomic_dir(out_dir) as tmp:
        tok.save(tmp)
        ev = write_report(tok, data_dir, tmp, eval_split, eval_events)
    return tok, ev


def _fit_summary(tok: Tokenizer) -> dict[str, Any]:
    return {k: v for k, v in tok.fit_info.items() if k != "history"}
