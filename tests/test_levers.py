"""config/levers/: every overlay's documented command builds a DAG, and the overlay changes it.

Each overlay's header holds the command that runs it (``snakemake --cores 2 all --configfile BASE OVERLAY``,
possibly continued over lines with a trailing backslash). docs/benchmarks.md quotes these commands, so a renamed
key, a schema change or an overlay that no longer applies fails here rather than in a 30-minute study.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEVERS = sorted((REPO / "config" / "levers").glob("*.yaml"))


def documented_configfiles(path: Path) -> list[str]:
    """The --configfile arguments of the snakemake command in an overlay's header comment."""
    header = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    text = " ".join(header).replace("\\ ", " ")
    m = re.search(r"snakemake (.*?--configfile ((?:\S+\.yaml\s*)+))", text)
    assert m, f"{path.name}: its header has no 'snakemake ... --configfile BASE OVERLAY' command"
    return shlex.split(m.group(2))


@cache
def dry_run(configfiles: tuple[str, ...]) -> frozenset[str]:
    """The shell commands of `snakemake -n -p all` with these config files."""
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "all", "--configfile", *configfiles],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, f"{configfiles}: {out.stderr[-3000:]}"
    prefix = "Shell command: "
    return frozenset(line[len(prefix) :] for line in out.stdout.splitlines() if line.startswith(prefix))


def test_every_overlay_is_covered() -> None:
    assert len(LEVERS) >= 8, [p.name for p in LEVERS]


@pytest.mark.parametrize("path", LEVERS, ids=lambda p: p.stem)
def test_overlay_command_builds_and_changes_the_dag(path: Path) -> None:
    files = documented_configfiles(path)
    rel = str(path.relative_to(REPO))
    assert files[-1] == rel, f"{path.name}: the documented command must end with the overlay itself, got {files}"
    assert all((REPO / f).is_file() for f in files), files
    with_overlay, without = dry_run(tuple(files)), dry_run(tuple(files[:-1]))
    assert any("physfm finetune" in j for j in with_overlay), f"{rel}: no fine-tuning job in the dry run"
    assert with_overlay != without, f"{rel} changes no job of {files[:-1]}"


def test_long_schedule_adds_a_candidate_to_the_default_search() -> None:
    """YAML lists replace, so the overlay restates the default search; it must stay the default's plus one."""
    import yaml

    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["finetune"]["search"]
    overlay = yaml.safe_load((REPO / "config" / "levers" / "long_schedule.yaml").read_text())["finetune"]["search"]
    assert overlay[: len(default)] == default and len(overlay) == len(default) + 1, (default, overlay)
