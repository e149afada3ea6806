"""The in-budget validation carve: early stopping (and any choice) uses labels from the n labels only.

A run with a budget of n labelled events splits exactly those n events into a fit part and a
validation part (stratified by class: ``round(fraction * n_c)`` per class, at least
``min_per_class``, and always leaving at least one event of the class to fit on). Nothing else is
labelled: the dataset's val split is never read. The carve is a function of the labels and the seed
alone, so every method given the same subset and seed validates on the same events.
"""

from __future__ import annotations

import numpy as np

from physfm.data.shards import DataError


def inbudget_split(labels: np.ndarray, fraction: float, min_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, val)``: sorted positions into ``labels`` (a partition of ``range(len(labels))``).

    A class with a single event goes to the fit part only. Raises :class:`DataError` when no class
    has two events (nothing can be held out).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0 < fraction < 1:
        raise ValueError(f"in-budget validation fraction must lie in (0, 1), got {fraction}")
    if min_per_class < 1:
        raise ValueError(f"in-budget validation min_per_class must be at least 1, got {min_per_class}")
    rng = np.random.default_rng([seed, 0xB0D6E7])
    val = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(min_per_class, int(round(fraction * len(members)))), len(members) - 1)
        val.append(members[:n_val])
    held = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    if len(held) == 0:
        raise DataError(
            f"cannot hold out in-budget validation events from {len(labels)} labels: every class has a single "
            "event; use more labels"
        )
    fit = np.setdiff1d(np.arange(len(labels)), held)
    return fit, held
