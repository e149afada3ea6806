"""Every runtime dependency declared in pyproject.toml is imported by physfm or its workflow (issue 20)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Distribution name -> module name, where they differ.
MODULE = {"pyyaml": "yaml", "faiss-cpu": "faiss", "scikit-learn": "sklearn", "pythia8mc": "pythia8"}
#: Used without an import: Snakemake loads its executor plugins itself (`executor: slurm` in slurm/), and
#: its `validate` checks the config against workflow/schemas/config.schema.yaml with jsonschema.
NOT_IMPORTED = {"snakemake-executor-plugin-slurm", "jsonschema"}


def _sources() -> str:
    files = [*(REPO / "physfm").rglob("*.py"), *(REPO / "workflow").rglob("*.smk"), REPO / "Snakefile"]
    return "\n".join(p.read_text() for p in files)


def test_every_declared_dependency_is_imported() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + list(project["optional-dependencies"].get("generate", []))
    text = _sources()
    unused = []
    for requirement in declared:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        if name in NOT_IMPORTED:
            continue
        module = MODULE.get(name, name.replace("-", "_"))
        if not re.search(rf"^\s*(import|from) {re.escape(module)}\b", text, re.M):
            unused.append(f"{name} (module {module})")
    assert not unused, f"declared in pyproject.toml but imported nowhere: {unused}; use them or remove them"
