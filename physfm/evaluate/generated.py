"""Generated versus real jets for the report: the ``physfm sample`` outputs of a study's generative
backbones (``next_token``, ``flow``; ``sample: true``), one row per backbone and observable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from physfm.io import read_json

OBSERVABLES = ("jet_mass", "jet_pt", "multiplicity")


def generated_rows(samples: dict[str, Path]) -> list[dict[str, Any]]:
    """Per backbone: the Wasserstein-1 distance and means of each observable (``comparison.json``), the
    conditions a flow was given, and the histogram (``generation.png``) when it exists."""
    rows = []
    for name, directory in sorted(samples.items()):
        directory = Path(directory)
        path = directory / "comparison.json"
        if not path.is_file():
            raise ValueError(f"{directory}: no comparison.json; run `physfm sample --data ...` for backbone {name}")
        c = read_json(path)
        obs = c.get("observables", {})
        rows.append(
            {
                "backbone": name,
                "n_generated": c.get("n_generated"),
                "conditions": c.get("conditions", []),
                "settings": c.get("settings", {}),
                "observables": {k: obs[k] for k in OBSERVABLES if k in obs},
                "plot": str(directory / "generation.png") if (directory / "generation.png").is_file() else None,
            }
        )
    return rows
