"""``generation.json``: the record a simulator writes beside its raw files (``physfm generate ...``).

It names the generator, its parameters (and the simulation constants, for the IceCube and LArTPC
simulators), the sha256 of every file written, and a ``content_version`` hashed from the settings
alone: the same settings and seed give the same events, so the same version.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from physfm.io import sha256_file, sha256_json, write_json

RECORD = "generation.json"


def write_generation_record(
    out_dir: str | Path,
    generator: str,
    params: dict[str, Any],
    files: Sequence[Path],
    sim_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/generation.json`` and return it; ``files`` are named relative to ``out_dir``."""
    out_dir = Path(out_dir)
    info: dict[str, Any] = {"generator": generator, "params": params}
    if sim_config is not None:
        info["sim_config"] = sim_config
    info["files"] = [{"name": Path(p).relative_to(out_dir).as_posix(), "sha256": sha256_file(p)} for p in files]
    hashed = params if sim_config is None else {"params": params, "sim_config": sim_config}
    info["content_version"] = sha256_json(hashed)[:16]
    write_json(out_dir / RECORD, info)
    return info
