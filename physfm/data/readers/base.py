"""The interface every input-format reader implements."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


@dataclass
class RawBlock:
    """Consecutive events of one source file, before keys and splits are assigned."""

    offsets: np.ndarray  # (n+1,) int64 starting at 0
    particles: np.ndarray  # (rows, n_pfeat)
    events: np.ndarray  # (n, n_efeat)
    label: np.ndarray  # (n,) int64, -1 where the event has none of the selected classes
    first_entry: int  # entry number of the first event in the source file

    def __len__(self) -> int:
        return len(self.offsets) - 1


class Reader:
    """Base class: subclasses set the class attributes and implement the three methods."""

    modality: ClassVar[str]
    file_glob: ClassVar[str] = "*"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    @property
    def particle_features(self) -> dict[str, str]:
        raise NotImplementedError

    @property
    def event_features(self) -> dict[str, str]:
        raise NotImplementedError

    @property
    def classes(self) -> list[str]:
        raise NotImplementedError

    def check(self, path: Path) -> int:
        """Validate that ``path`` can be read; return its number of events. Raise DataError."""
        raise NotImplementedError

    def read(self, path: Path, step: int) -> Iterator[RawBlock]:
        """Yield the file's events in order, ``step`` events at a time."""
        raise NotImplementedError

    def extras(self) -> dict[str, Path]:
        """Files stored once per dataset (e.g. detector geometry), by name."""
        return {}
