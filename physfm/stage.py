"""The stage contract: one settings dataclass per stage, and the logging callback a stage reports to.

Every stage is a library function ``stage(cfg, <paths>, log=...) -> result`` where

* ``cfg`` is the stage's settings dataclass: the *only* home of its defaults (a test holds them
  equal to the defaults of its section in ``workflow/schemas/config.schema.yaml``);
* ``log`` is any object with the :class:`StageLog` methods. The CLI passes the stage's MLflow run
  (:class:`physfm.tracking.StageRun`); library callers and tests may pass :data:`NO_LOG`.

The Snakemake rule passes the stage's config section (only the slice the job uses) as one JSON
document, ``physfm <stage> --config JSON``; :func:`build` turns it into the dataclass, refusing
unknown keys with the list of known ones. Flags remain only for what a person types by hand:
paths, ``--device``, ``--threads``, and the identity of a grid cell (mode, labels, seed).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class StageLog(Protocol):
    """What a stage may report while it runs (MLflow's run API, reduced to what physfm uses)."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


class _NoLog:
    """A :class:`StageLog` that drops everything."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass


NO_LOG: StageLog = _NoLog()


def load_text(text: str | None) -> dict[str, Any]:
    """Settings from ``--config``: inline JSON (``{...}``), or a YAML/JSON file; ``None`` -> ``{}``."""
    if not text:
        return {}
    if text.lstrip().startswith("{"):
        return json.loads(text)
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"--config {text}: no such file (pass a YAML/JSON file or inline JSON)")
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def _dataclass_type(typ: Any) -> type | None:
    if dataclasses.is_dataclass(typ) and isinstance(typ, type):
        return typ
    if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
        for arg in typing.get_args(typ):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def build(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """``cls`` from a mapping, recursively for nested dataclass fields; unknown keys are refused."""
    data = dict(data or {})
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown := sorted(set(data) - set(names)):
        raise ValueError(
            f"unknown setting(s) {', '.join(where + k for k in unknown)}; known: {', '.join(sorted(names))} "
            "(config/README.md describes each)"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        sub = _dataclass_type(hints[key])
        kwargs[key] = build(sub, value, f"{where}{key}.") if sub is not None and isinstance(value, dict) else value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The settings as plain JSON-able data (what is logged as MLflow params and hashed)."""
    return dataclasses.asdict(cfg)
