"""Shared fixtures: real Pythia 8 jets, generated once per test session, and their converted shards.

Tests that do not test tracking run with ``PHYSFM_TRACKING=0`` (set here) so they leave no MLflow
store behind; tracking tests set ``PHYSFM_TRACKING=1`` and their own ``PHYSFM_RESULTS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from read_spy import ReadSpy

os.environ["PHYSFM_TRACKING"] = "0"
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def jet_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """~480 real Pythia 8 jets (qcd, tbqq, wqq, zqq) in two JetClass-schema ROOT files."""
    from physfm.data.generate_jets import generate_jets

    out = tmp_path_factory.mktemp("jets_raw")
    return generate_jets(out, n_jets=480, seed=11, n_files=2, workers=2, progress=False)


@pytest.fixture(scope="session")
def jet_dataset(tmp_path_factory: pytest.TempPathFactory, jet_files: list[Path]) -> Path:
    """The jets of ``jet_files`` converted to shards (80/10/10 split, 100 events per shard)."""
    from physfm.data.convert import convert

    out = tmp_path_factory.mktemp("jets_data") / "data"
    convert(
        "jetclass",
        [str(p) for p in jet_files],
        out,
        shard_events=100,
        reader_options={"labels": ["label_QCD", "label_Tbqq", "label_Wqq", "label_Zqq"]},
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def lartpc_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 simulated LArTPC events (per-point semantic labels) converted to shards of 12 (80/10/10 split by
    event hash)."""
    from physfm.data.convert import convert
    from physfm.data.generate_lartpc import generate_lartpc

    raw = tmp_path_factory.mktemp("lartpc_raw")
    paths = generate_lartpc(raw, 24, seed=5, events_per_file=24, progress=False)
    out = tmp_path_factory.mktemp("lartpc_data") / "data"
    convert("pilarnet", [str(p) for p in paths], out, shard_events=12, progress=False)
    return out


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and lose a lot when the cores are shared."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def spy_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ReadSpy]:
    """``spy_reads(module, ...)``: a :class:`ReadSpy` on those modules' ``load_arrays`` (undone after the test)."""
    return lambda *modules: ReadSpy(monkeypatch, modules)
