"""Where config paths may point: under the study's directory unless the config allows otherwise.

A typo like ``results: /`` or ``data.input: ../../..`` should not let a study read or overwrite
files elsewhere; a user with data in ``/data/jetclass`` says so with ``allow_absolute_paths: true``.
"""

from __future__ import annotations

from pathlib import Path


class PathPolicyError(ValueError):
    """A config path points outside the study directory without permission."""


def check_config_path(value: str, key: str, base: str | Path = ".", allow_absolute: bool = False) -> Path:
    """Resolve ``value`` under ``base``; refuse absolute paths or ``..`` escapes unless allowed."""
    path = Path(value)
    if allow_absolute:
        return path if path.is_absolute() else Path(base) / path
    if path.is_absolute():
        raise PathPolicyError(
            f"config {key}: '{value}' is an absolute path; paths are resolved under the study directory "
            f"({Path(base).resolve()}). Use a relative path, or set `allow_absolute_paths: true` in the config."
        )
    resolved = (Path(base) / path).resolve()
    root = Path(base).resolve()
    if root != resolved and root not in resolved.parents:
        raise PathPolicyError(
            f"config {key}: '{value}' points outside the study directory ({root}) via '..'; "
            "set `allow_absolute_paths: true` in the config to allow it."
        )
    return Path(base) / path
