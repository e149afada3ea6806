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


def parse_pairs(text: str | None) -> list[tuple[str, str]]:
    """``Tbqq:QCD,Wqq:QCD`` -> ``[("Tbqq", "QCD"), ("Wqq", "QCD")]`` (signal:background class pairs)."""
    out = []
    for item in csv_list(text) or []:
        s, sep, b = item.partition(":")
        if not sep:
            raise ValueError(f"--pairs expects SIGNAL:BACKGROUND items, got '{item}'")
        out.append((s, b))
    return out
