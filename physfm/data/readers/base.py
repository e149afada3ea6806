"""The interface every input-format reader implements."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from physfm.data.shards import DataError

#: kinds of column :func:`check_column_types` accepts, and how its errors describe them
INTEGER = "integer"  # an integer type, or a float type holding whole numbers (checked by whole_numbers)
NUMBER = "number"  # any integer, float or boolean type
_EXPECTED = {INTEGER: "an integer type", NUMBER: "a numeric type (integer, float or bool)"}


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

    #: True when :meth:`read_range` is implemented: the converter may then read pieces of one file
    #: in parallel worker processes. Readers without it are read sequentially with :meth:`read`.
    splittable: ClassVar[bool] = False

    #: Most events per chunk (``None``: as many as ``step`` asks), for formats whose events are
    #: large (thousands of points each): bounds the converter's memory whatever ``--step`` says.
    max_step: ClassVar[int | None] = None

    def read_range(self, path: Path, start: int, stop: int) -> RawBlock:
        """Entries ``[start, stop)`` of the file as one block (only where ``splittable``)."""
        raise NotImplementedError(f"{type(self).__name__} reads files sequentially only")

    @property
    def input_groups(self) -> dict[str, tuple[str, ...]]:
        """Groups of particle columns a data set of this format may lack (absent or all zero), by name;
        the converter records the missing ones in the manifest's ``missing_inputs``."""
        return {}

    def absent_columns(self) -> dict[str, list[str]]:
        """Column -> names of the checked files that lack it (stored as zeros); see :attr:`input_groups`."""
        return {}

    def extras(self) -> dict[str, Path]:
        """Files stored once per dataset (e.g. detector geometry), by name."""
        return {}


def _accepts(kind: str, arrow_type: Any) -> bool:
    import pyarrow as pa

    numeric = pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
    return numeric or (kind == NUMBER and pa.types.is_boolean(arrow_type))


def check_column_types(path: Path, schema: Any, expected: dict[str, str]) -> None:
    """Raise :class:`DataError` naming the file, column, expected and found type of the first wrong column.

    ``schema`` is a ``pyarrow.Schema``; ``expected`` maps column names to :data:`INTEGER` or
    :data:`NUMBER`. Columns absent from the schema are left to the caller's missing-column check.
    """
    for name, kind in expected.items():
        if name not in schema.names:
            continue
        found = schema.field(name).type
        if not _accepts(kind, found):
            raise DataError(
                f"{path}: column '{name}' has type {found}, expected {_EXPECTED[kind]}; "
                "rewrite the file with numeric columns (e.g. pandas .astype) or drop it from the inputs"
            )


def whole_numbers(path: Path, name: str, values: np.ndarray, first_row: int = 0) -> None:
    """Raise :class:`DataError` if a float column meant to hold integers has NaN, inf or a fraction."""
    if values.dtype.kind != "f":
        return
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column '{name}' has type {values.dtype} with value {float(values[i])!r} at row {first_row + i}, "
            "expected whole numbers; fix or drop the rows with missing ids and convert again"
        )
