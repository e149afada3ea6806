"""Head inputs: event-level side inputs given to a fine-tuning head beside the backbone's pooled state (issue 19).

Config key ``finetune.head.inputs`` (default ``[]``, none) names the sources, the same for every mode
(scratch, finetune, frozen and the ablations), so the comparison stays symmetric:

* ``observables``: the 11 jet observables the BDT reads (:data:`physfm.data.substructure.NAMES`), from
  the cache of the ``observables`` stage (:func:`physfm.baselines.observables.load_observables`) or,
  without one, computed from the dataset (same definition, same values);
* ``linefit``: IceCube's LineFit direction and the pulse statistics of
  :func:`physfm.baselines.linefit.pulse_statistics` (:data:`physfm.baselines.linefit.STATISTICS`,
  the direction first), computed from every pulse of the event (not only the ``max_len`` the backbone
  reads); events LineFit cannot fit get :data:`~physfm.baselines.linefit.FALLBACK_DIRECTION`, as
  :func:`~physfm.baselines.linefit.predict_linefit` gives them. The direction task then predicts a
  correction to LineFit's direction (:class:`physfm.finetune.model.PooledMLP` ``seed``).

Both need no label. The head standardises them itself (:class:`physfm.finetune.model.SideNorm`, saved
in the model's meta) with the mean and std of the first :data:`N_FIT` events of the **train split in
stored order** (as a backbone-less scratch model fits its feature norm), whatever their labels: no
label, and not the label subset, enters the statistics, so every mode, seed and label count of a
study standardises alike. Missing values (NaN) become 0 after standardising (the mean).

The side inputs reach the model as the batch entry ``side`` (``(B, k)`` raw values): the loop passes
it to ``model(**inputs)`` and to ``decode`` (frozen mode caches backbone states only), evaluation
rebuilds it for the scored split from the meta's ``head.inputs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from physfm.data.dataset import Dataset, open_dataset
from physfm.data.shards import DataError

#: Train-split events (stored order, labels not read) whose mean/std standardise the side inputs.
N_FIT = 5000
#: Events read at a time when a source is computed from the dataset.
UNIT_EVENTS = 2000


def source_columns() -> dict[str, tuple[str, ...]]:
    """``source -> its column names``, for every source ``head.inputs`` may name."""
    from physfm.baselines.linefit import STATISTICS
    from physfm.data.substructure import NAMES

    return {"observables": tuple(NAMES), "linefit": tuple(STATISTICS)}


#: The sources ``finetune.head.inputs`` may name (the schema's enum).
SOURCES = ("observables", "linefit")


def check_inputs(inputs: Sequence[str]) -> list[str]:
    """``inputs`` as a list, refused when a source is unknown or named twice."""
    out = [str(s) for s in inputs]
    if unknown := [s for s in out if s not in SOURCES]:
        raise ValueError(f"head inputs {unknown} are unknown; choose from {list(SOURCES)}")
    if len(set(out)) != len(out):
        raise ValueError(f"head inputs {out} name a source twice")
    return out


def columns(inputs: Sequence[str]) -> list[str]:
    """The side columns of ``inputs``, in order (each source's columns in its order)."""
    known = source_columns()
    return [c for s in check_inputs(inputs) for c in known[s]]


@dataclass(frozen=True)
class Sources:
    """Where cached sources live: the ``observables`` stage's directory for this dataset (None: computed)."""

    observables: Path | None = None


def _observables(ds: Dataset, split: str, indices: np.ndarray | None, where: Sources) -> tuple[np.ndarray, np.ndarray]:
    from physfm.baselines.observables import compute_split, load_observables

    if where.observables is not None:
        return load_observables(where.observables, ds, split, indices)
    return compute_split(ds, split, None if indices is None else np.unique(indices))


def _linefit(ds: Dataset, split: str, indices: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    from physfm.baselines.linefit import STATISTICS, block_pulses, check_pulses, pulse_statistics
    from physfm.data.loader import open_split

    check_pulses(ds.path, ds.manifest)
    s = open_split(ds, split)
    parts = [
        (pulse_statistics(block_pulses(b, ds.manifest))[0], b.event_key.astype(np.uint64))
        for b in (u.read() for u in s.units(UNIT_EVENTS, None if indices is None else np.unique(indices)))
    ]
    if not parts:
        return np.zeros((0, len(STATISTICS))), np.zeros(0, dtype=np.uint64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def table(
    inputs: Sequence[str],
    data: Dataset | str | Path,
    split: str,
    indices: np.ndarray | None = None,
    where: Sources = Sources(),
) -> tuple[np.ndarray, np.ndarray]:
    """``(values (N, len(columns(inputs))) float64, event_key (N,))`` of a split's events (all, or those at
    ``indices``), in stored order; no label is read."""
    ds = open_dataset(data)
    parts = [
        _observables(ds, split, indices, where) if s == "observables" else _linefit(ds, split, indices)
        for s in check_inputs(inputs)
    ]
    if not parts:
        raise ValueError("no head inputs to read")
    keys = parts[0][1]
    for name, (_, k) in zip(inputs, parts, strict=True):
        if not np.array_equal(k, keys):
            raise DataError(f"head input {name} of {ds.path}/{split} lists other events than {inputs[0]}")
    return np.concatenate([np.asarray(v, dtype=np.float64) for v, _ in parts], axis=1), keys


def lookup(values: np.ndarray, keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Rows of ``values`` (keyed by ``keys``) of the events ``wanted`` (event keys), as float32."""
    order = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys[order], wanted)
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    if len(wanted) and (len(keys) == 0 or not np.array_equal(keys[order][pos], wanted)):
        raise DataError("the head inputs lack events of the inputs (an observables cache of another dataset?)")
    return values[order][pos].astype(np.float32)


def attach(
    inputs: Sequence[str],
    inp: dict[str, np.ndarray],
    data: Dataset | str | Path,
    split: str,
    indices: np.ndarray | None,
    where: Sources = Sources(),
) -> dict[str, np.ndarray]:
    """``inp`` (a task's inputs of ``split``, its events at ``indices``) with ``side``: their raw side inputs."""
    if check_inputs(inputs):
        inp["side"] = lookup(*table(inputs, data, split, indices, where), inp["event_key"])
    return inp


def fit_norm(inputs: Sequence[str], data: Dataset | str | Path, where: Sources = Sources()) -> dict[str, list]:
    """``{"columns", "mean", "std"}`` of the side inputs over the first :data:`N_FIT` train events (stored
    order, whatever their labels; NaN ignored; a constant column gets std 1): the head's
    :class:`physfm.finetune.model.SideNorm`."""
    from physfm.data.loader import open_split

    ds = open_dataset(data)
    n = min(len(open_split(ds, "train")), N_FIT)
    values, _ = table(inputs, ds, "train", np.arange(n), where)
    with np.errstate(all="ignore"):
        mean = np.nan_to_num(np.nanmean(values, axis=0)) if len(values) else np.zeros(values.shape[1])
        std = np.nan_to_num(np.nanstd(values, axis=0)) if len(values) else np.ones(values.shape[1])
    std = np.where(std > 1e-12, std, 1.0)
    return {"columns": columns(inputs), "mean": mean.tolist(), "std": std.tolist()}
