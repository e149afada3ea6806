"""Domain-shift settings of the jet generator: another Pythia tune, a simple detector smearing (real Pythia)."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from physfm.data.generate_jets import generate_jets, smear_particles
from physfm.data.jetclass import TREE_NAME

N_JETS, SEED = 16, 7


def _jets(out: Path, **shift: float) -> dict[str, ak.Array]:
    (path,) = generate_jets(out, N_JETS, SEED, ("qcd",), n_files=1, workers=1, progress=False, **shift)
    return uproot.open(path)[TREE_NAME].arrays(["part_energy", "part_deta", "jet_pt", "jet_sdmass"])


def test_tune_and_smearing_shift_the_domain_deterministically(tmp_path: Path) -> None:
    nominal = _jets(tmp_path / "nominal")
    smeared = _jets(tmp_path / "smeared", smear_energy=0.1, smear_angle=0.02)
    again = _jets(tmp_path / "again", smear_energy=0.1, smear_angle=0.02)
    tuned = _jets(tmp_path / "tuned", tune=21)
    for name in nominal.fields:
        assert ak.array_equal(smeared[name], again[name]), f"{name}: same settings, same seed, same jets"
    assert not ak.array_equal(nominal["part_energy"], smeared["part_energy"])
    assert not ak.array_equal(nominal["part_energy"], tuned["part_energy"])
    for a in (smeared, tuned):
        assert len(a["jet_pt"]) == N_JETS and np.all((a["jet_pt"] > 500) & (a["jet_pt"] < 1000))
    with pytest.raises(ValueError, match="smear_energy must be a resolution"):
        generate_jets(tmp_path / "bad", N_JETS, SEED, ("qcd",), smear_energy=-0.1)


def test_smearing_keeps_masses_and_has_the_asked_resolution() -> None:
    from physfm.data.generate_jets import EventRecord

    n = 20000
    rng = np.random.default_rng(0)
    e = rng.uniform(5.0, 50.0, n)
    eta, phi, m = rng.uniform(-2, 2, n), rng.uniform(-np.pi, np.pi, n), np.full(n, 0.13957)
    p = np.sqrt(e**2 - m**2)
    pt = p / np.cosh(eta)
    record = EventRecord(
        offsets=np.array([0, n]), pid=np.full(n, 211), status=np.ones(n, np.int64),
        daughter1=np.zeros(n, np.int64), daughter2=np.zeros(n, np.int64),
        px=pt * np.cos(phi), py=pt * np.sin(phi), pz=pt * np.sinh(eta), energy=e.copy(),
    )  # fmt: skip
    smear_particles(record, np.random.default_rng(1), 0.1, 0.05)
    mass2 = record.energy**2 - record.px**2 - record.py**2 - record.pz**2
    np.testing.assert_allclose(np.sqrt(np.maximum(mass2, 0)), m, atol=1e-3)  # mass kept
    assert np.std(record.energy / e - 1) == pytest.approx(0.1, rel=0.05)
    new_eta = np.arcsinh(record.pz / np.hypot(record.px, record.py))
    assert np.std(new_eta - eta) == pytest.approx(0.05, rel=0.05)
