"""Tests of the Pythia 8 jet generator (real Pythia and FastJet; about 30 s on 2 idle cores)."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from physfm.data.generate_jets import (
    JET_R,
    PYTHIA_SEED_MAX,
    UNIT_JETS,
    derive_seed,
    generate_jets,
    plan_units,
    split_evenly,
    wrap_phi,
)
from physfm.data.jetclass import (
    ALL_LABELS,
    JET_BRANCHES,
    PARTICLE_BRANCHES,
    PROCESS_LABELS,
    TREE_NAME,
)

PROCESSES = ("qcd", "tbqq", "wqq", "zqq")
N_JETS = 160  # 40 per process, 20 per file
N_FILES = 2
SEED = 2024
ALL_BRANCHES = (*PARTICLE_BRANCHES, *JET_BRANCHES, *ALL_LABELS)


def read_all(paths: list[Path]) -> dict[str, np.ndarray | object]:
    """Read every JetClass branch of ``paths``, concatenated in file order."""
    arrays = [uproot.open(path)[TREE_NAME].arrays(list(ALL_BRANCHES)) for path in paths]
    return {name: ak.concatenate([a[name] for a in arrays]) for name in ALL_BRANCHES}


def assert_same_content(a: dict, b: dict) -> None:
    """Exact equality of every branch."""
    for name in ALL_BRANCHES:
        assert ak.array_equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The reference sample: all four processes in two files, made with two workers."""
    out = tmp_path_factory.mktemp("jets")
    return generate_jets(out, N_JETS, SEED, PROCESSES, n_files=N_FILES, workers=2, progress=False)


@pytest.fixture(scope="module")
def arrays(generated: list[Path]) -> dict:
    """All branches of the reference sample."""
    return read_all(generated)


@pytest.fixture(scope="module")
def numpy_arrays(arrays: dict) -> dict[str, np.ndarray]:
    """Flat (particle-level) or per-jet numpy views of the reference sample."""
    return {
        name: ak.to_numpy(ak.flatten(arrays[name]) if name in PARTICLE_BRANCHES else arrays[name])
        for name in ALL_BRANCHES
    }


# --- schema -------------------------------------------------------------------------------------


def test_files_and_tree(generated: list[Path]) -> None:
    assert [p.name for p in generated] == ["jets_000.root", "jets_001.root"]
    directory = generated[0].parent
    assert sorted(p.name for p in directory.iterdir()) == ["jets_000.root", "jets_001.root"]  # no temp left
    for path in generated:
        with uproot.open(path) as file:
            assert file.classname_of(TREE_NAME) == "TTree"
            tree = file[TREE_NAME]
            assert tree.classname == "TTree"
            assert set(ALL_BRANCHES) <= set(tree.keys())
            assert tree.num_entries == N_JETS // N_FILES


def test_dtypes(arrays: dict) -> None:
    for name in (*PARTICLE_BRANCHES, *JET_BRANCHES):
        assert ak.to_numpy(ak.ravel(arrays[name])).dtype == np.float32, name
    for name in ALL_LABELS:
        assert ak.to_numpy(arrays[name]).dtype == np.bool_, name


def test_one_label_per_jet(numpy_arrays: dict[str, np.ndarray], generated: list[Path]) -> None:
    labels = np.stack([numpy_arrays[name] for name in ALL_LABELS], axis=1)
    assert (labels.sum(axis=1) == 1).all()
    generated_labels = {PROCESS_LABELS[p] for p in PROCESSES}
    for name in ALL_LABELS:
        n = labels[:, ALL_LABELS.index(name)].sum()
        assert n == (N_JETS // len(PROCESSES) if name in generated_labels else 0), name
    for path in generated:  # every file mixes all processes
        tree = uproot.open(path)[TREE_NAME]
        for name in generated_labels:
            assert tree[name].array(library="np").sum() == N_JETS // len(PROCESSES) // N_FILES


# --- physics ------------------------------------------------------------------------------------


def test_jet_cuts(numpy_arrays: dict[str, np.ndarray], arrays: dict) -> None:
    pt, eta = numpy_arrays["jet_pt"], numpy_arrays["jet_eta"]
    assert ((pt > 500) & (pt < 1000)).all()
    assert (np.abs(eta) < 2).all()
    assert (numpy_arrays["jet_phi"] >= -np.pi).all() and (numpy_arrays["jet_phi"] <= np.pi).all()
    n_particles = ak.to_numpy(ak.num(arrays["part_px"]))
    assert (numpy_arrays["jet_nparticles"] == n_particles).all()
    assert (n_particles >= 2).all()


def test_particles_sum_to_jet(arrays: dict, numpy_arrays: dict[str, np.ndarray]) -> None:
    px, py, pz, e = (
        ak.to_numpy(ak.sum(arrays[f"part_{c}"], axis=1)).astype(np.float64) for c in ("px", "py", "pz", "energy")
    )
    np.testing.assert_allclose(np.hypot(px, py), numpy_arrays["jet_pt"], rtol=1e-4)
    np.testing.assert_allclose(e, numpy_arrays["jet_energy"], rtol=1e-4)
    np.testing.assert_allclose(np.arcsinh(pz / np.hypot(px, py)), numpy_arrays["jet_eta"], atol=1e-4)


def test_particle_features(arrays: dict, numpy_arrays: dict[str, np.ndarray]) -> None:
    pt = np.hypot(arrays["part_px"], arrays["part_py"])
    assert ak.all(pt[:, :-1] >= pt[:, 1:])  # sorted by decreasing pT
    eta = np.arcsinh(arrays["part_pz"] / pt)
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(eta - arrays["jet_eta"])), numpy_arrays["part_deta"], atol=1e-3)
    phi = np.arctan2(arrays["part_py"], arrays["part_px"])
    dphi = ak.to_numpy(ak.flatten(phi - arrays["jet_phi"]))
    np.testing.assert_allclose(wrap_phi(dphi - numpy_arrays["part_dphi"]), 0, atol=1e-3)

    # constituents lie within about R of the axis in (rapidity, phi), where anti-kt clusters; in
    # pseudorapidity a few soft massive hadrons lie further out
    def rapidity(e: ak.Array, pz: ak.Array) -> ak.Array:
        return 0.5 * np.log((e + pz) / (e - pz))

    jet_y = rapidity(arrays["jet_energy"], ak.sum(arrays["part_pz"], axis=1))
    delta_y = ak.to_numpy(ak.flatten(rapidity(arrays["part_energy"], arrays["part_pz"]) - jet_y))
    delta_r = np.hypot(delta_y, numpy_arrays["part_dphi"])
    assert np.quantile(delta_r, 0.99) < JET_R and delta_r.max() < 1.5 * JET_R

    flags = np.stack(
        [numpy_arrays[f"part_is{k}"] for k in ("ChargedHadron", "NeutralHadron", "Photon", "Electron", "Muon")], axis=1
    )
    assert (flags.sum(axis=1) == 1).all()
    charged = numpy_arrays["part_charge"] != 0
    is_charged_type = (
        numpy_arrays["part_isChargedHadron"] + numpy_arrays["part_isElectron"] + numpy_arrays["part_isMuon"]
    ) == 1
    assert (charged == is_charged_type).all()
    assert set(np.unique(numpy_arrays["part_charge"]).tolist()) <= {-2.0, -1.0, 0.0, 1.0, 2.0}
    for name in ("part_d0val", "part_d0err", "part_dzval", "part_dzerr"):
        assert (numpy_arrays[name] == 0).all()
    e = numpy_arrays["part_energy"]
    p2 = numpy_arrays["part_px"] ** 2 + numpy_arrays["part_py"] ** 2 + numpy_arrays["part_pz"] ** 2
    assert (e > 0).all() and (e**2 >= p2 * (1 - 1e-4)).all()


@pytest.mark.parametrize(
    ("process", "low", "high"),
    [("tbqq", 140, 200), ("wqq", 65, 95), ("zqq", 75, 105), ("qcd", 0, 120)],
)
def test_soft_drop_mass_peaks(numpy_arrays: dict[str, np.ndarray], process: str, low: float, high: float) -> None:
    is_process = numpy_arrays[PROCESS_LABELS[process]]
    median = np.median(numpy_arrays["jet_sdmass"][is_process])
    assert low < median < high, f"{process}: median soft-drop mass {median:.1f} GeV"
    assert (numpy_arrays["jet_sdmass"] >= 0).all()


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_one_worker_identical(arrays: dict, tmp_path: Path) -> None:
    paths = generate_jets(tmp_path, N_JETS, SEED, PROCESSES, n_files=N_FILES, workers=1, progress=False)
    assert_same_content(arrays, read_all(paths))


def test_different_seed_differs(tmp_path: Path) -> None:
    a = read_all(generate_jets(tmp_path / "a", 3, 1, ("zqq",), workers=1, progress=False))
    b = read_all(generate_jets(tmp_path / "b", 3, 2, ("zqq",), workers=1, progress=False))
    assert not np.array_equal(np.asarray(a["jet_pt"]), np.asarray(b["jet_pt"]))


def test_seeds_and_plan() -> None:
    seeds = {derive_seed(1, p, f, c) for p in PROCESSES for f in range(3) for c in range(3)}
    assert len(seeds) == 36 and all(1 <= s <= PYTHIA_SEED_MAX for s in seeds)
    assert derive_seed(1, "qcd", 0, 0) == derive_seed(1, "qcd", 0, 0)
    assert split_evenly(10, 4) == [3, 3, 2, 2]
    units = plan_units(2 * UNIT_JETS * 4 + 3, 7, PROCESSES, 2)
    assert sum(u.n_jets for u in units) == 2 * UNIT_JETS * 4 + 3
    assert all(0 < u.n_jets <= UNIT_JETS for u in units)
    assert [u.file_index for u in units] == sorted(u.file_index for u in units)
    assert len({u.pythia_seed for u in units}) == len(units)


def test_wrap_phi() -> None:
    x = wrap_phi(np.array([-np.pi, np.pi, 3 * np.pi / 2, -3 * np.pi / 2, 0.0]))
    assert (x >= -np.pi).all() and (x < np.pi).all()
    np.testing.assert_allclose(x, [-np.pi, -np.pi, -np.pi / 2, np.pi / 2, 0.0])


# --- argument checks ----------------------------------------------------------------------------


def test_bad_process_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown process 'hbb'.*qcd, tbqq, wqq, zqq"):
        generate_jets(tmp_path, 10, 0, processes=("qcd", "hbb"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_jets": 0}, "n_jets must be >= 1"),
        ({"n_jets": 2.5}, "n_jets must be an integer"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"n_files": 0}, "n_files must be >= 1"),
        ({"n_files": 11}, "must not exceed n_jets"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"processes": "qcd"}, "not the string"),
        ({"processes": ()}, "must not be empty"),
        ({"processes": ("qcd", "qcd")}, "duplicates"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    arguments = {"out_dir": tmp_path, "n_jets": 10, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_jets(**arguments)
    assert not any(tmp_path.iterdir())
