"""Building a baseline's settings dataclass from its config section (a JSON/YAML mapping)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def build(cls: type[T], mapping: dict[str, Any] | None, what: str) -> T:
    """``cls(**mapping)`` with a clear error naming unknown keys (``what`` names the section)."""
    mapping = dict(mapping or {})
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ValueError(f"unknown {what} settings {unknown}; known: {sorted(known)} (see config/README.md)")
    return cls(**mapping)


def parse_json(text: str | None) -> dict[str, Any]:
    """A JSON object given inline (``'{"max_iter": 200}'``) or as a path to a JSON file; empty when None."""
    if not text:
        return {}
    raw = Path(text).read_text() if not text.lstrip().startswith("{") and Path(text).is_file() else text
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config is neither a JSON object nor a JSON file: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--config must be a JSON object (a mapping of settings), got {type(value).__name__}")
    return value
