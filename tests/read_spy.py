"""A spy on fine-tuning's event reads, for the tests that every labelled event a run touches is in its
budget (the ``spy_reads`` fixture of conftest.py)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest


class ReadSpy:
    """Every ``load_arrays`` call made through the spied modules, as ``(split, indices)`` (``indices``
    None for a whole split) in :attr:`reads`; the reads still happen."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, modules: tuple[ModuleType, ...]) -> None:
        from physfm.data.loader import load_arrays

        self.reads: list[tuple[str, np.ndarray | None]] = []

        def spy(data, split, *args, indices=None, **kwargs):  # noqa: ANN001, ANN002, ANN003
            self.reads.append((split, None if indices is None else np.asarray(indices)))
            return load_arrays(data, split, *args, indices=indices, **kwargs)

        for module in modules:
            monkeypatch.setattr(module, "load_arrays", spy)

    def splits(self) -> set[str]:
        return {split for split, _ in self.reads}

    def outside(self, train_part: np.ndarray, val_part: np.ndarray, *, norm_fit: bool = False) -> list[np.ndarray]:
        """The reads that touched an event outside the budget (the subset's train and validation parts).
        ``norm_fit``: a whole split, or its first events in order, is scratch's input-norm fit (no labels),
        not counted."""
        budget = set(train_part.tolist()) | set(val_part.tolist())
        out = []
        for _, idx in self.reads:
            if norm_fit and (idx is None or np.array_equal(idx, np.arange(len(idx)))):
                continue
            if idx is None or not set(idx.tolist()) <= budget:
                out.append(idx)
        return out
