"""Options and helpers shared by the stage subcommands."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_tracking_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking (MLflow)")
    g.add_argument("--run-name", help="MLflow run name (default: the stage name)")
    g.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra MLflow tag, repeatable (Snakemake passes rule and wildcards this way)",
    )


def parse_tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--tag expects KEY=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        tags[k] = v
    return tags


def parse_mapping(text: str, what: str) -> dict[str, float]:
    """``train=0.8,val=0.1,test=0.1`` -> dict."""
    out: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        if "=" not in part:
            raise ValueError(f"{what}: expected NAME=VALUE pairs separated by commas, got '{text}'")
        k, v = part.split("=", 1)
        out[k.strip()] = float(v)
    return out


def csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def add_config_arg(p: argparse.ArgumentParser, section: str) -> None:
    """``--config``: the stage's settings as one JSON document (what the Snakemake rule passes)."""
    p.add_argument(
        "--config",
        metavar="JSON|FILE",
        help=f"settings: the `{section}` config section as inline JSON or a YAML/JSON file; omitted keys take "
        "their defaults (config/README.md)",
    )


def stage_config(cls: type, text: str | None) -> Any:
    """Build a stage's settings dataclass from ``--config`` (see :mod:`physfm.stage`)."""
    from physfm.stage import build, load_text

    return build(cls, load_text(text))
