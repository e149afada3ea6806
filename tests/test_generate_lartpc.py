"""The LArTPC toy simulator: its labelling rules, its physics inputs and its determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from physfm.data import lartpc
from physfm.data.convert import convert
from physfm.data.generate_lartpc import (
    MICHEL_EDGE,
    MMU,
    PDG,
    SIDE_CM,
    LArConfig,
    Simulator,
    dedx_heavy,
    generate_lartpc,
    michel_energy,
    simulate,
    voxelize,
)

CENTRE = np.full(3, SIDE_CM / 2)
HEAVY = {13, 211, 2212}


def _sim(seed: int, **kw: object) -> Simulator:
    return Simulator(np.random.default_rng(seed), LArConfig(**kw))


def _finish(sim: Simulator) -> tuple[np.ndarray, ...]:
    """Transport what is left of an event by hand and return its deposits."""
    sim.soft_photons()
    sim.quiet_electrons()
    return sim.dep.arrays()


def test_stopping_mu_plus_gets_a_michel() -> None:
    for seed in range(8):
        sim = _sim(seed)
        sim.track(CENTRE, np.array([1.0, 0.0, 0.0]), 80.0, PDG["mu+"], inter=0)
        pos, energy, _, time, labels = _finish(sim)
        michel = labels[:, 0] == lartpc.MICHEL
        assert michel.any(), f"seed {seed}: no Michel electron at the stopping mu+"
        track = labels[:, 0] == lartpc.TRACK
        end = pos[track][np.argmax(time[track])]  # the muon stops where its last deposit is
        start = pos[michel][np.argmin(time[michel])]
        assert np.linalg.norm(start - end) < 1.0  # the Michel starts at the stopping point...
        assert time[michel].min() > time[track].max()  # ...after the muon stopped
        assert energy[michel].sum() < MICHEL_EDGE


def test_stopping_mu_minus_decays_about_a_quarter_of_the_time() -> None:
    sim = _sim(0, mu_minus_decay=0.26)
    n, decays = 400, 0
    for _ in range(n):
        sim.dep = type(sim.dep)()
        sim._stopped(CENTRE, PDG["mu-"], 0, 0.0)
        decays += bool(any((lab[:, 0] == lartpc.MICHEL).any() for lab in sim.dep.labels))
        sim._soft, sim._quiet = [], []
    assert 0.18 < decays / n < 0.34  # 0.26 +- 4 sigma


def test_small_delta_is_merged_into_its_track_and_large_one_is_not() -> None:
    sim = _sim(1)
    parent_frag, parent_pdg = 7, PDG["mu-"]
    d = np.array([0.0, 0.0, 1.0])
    # rows: position, direction, T, interaction, group, time, rule (1: delta), parent fragment, parent PDG
    small = [*CENTRE, *d, 1.2, 3, -1, 0.0, 1, parent_frag, parent_pdg]
    large = [*(CENTRE + 20), *d, 40.0, 3, -1, 0.0, 1, parent_frag, parent_pdg]
    sim._quiet = [np.array([small, large])]
    pos, _, _, _, labels = _finish(sim)
    near_small = np.linalg.norm(pos - CENTRE, axis=1) < 5
    assert (labels[near_small] == [lartpc.TRACK, parent_frag, parent_frag, 3, parent_pdg]).all()
    big = labels[~near_small]
    assert (big[:, 0] == lartpc.DELTA).all() and len(np.unique(big[:, 1])) == 1
    n_vox = len(np.unique(np.floor(pos[~near_small] / lartpc.VOXEL_CM), axis=0))
    assert n_vox >= sim.cfg.delta_min_voxels


def test_compton_size_rule() -> None:
    sim = _sim(2)
    d = np.array([1.0, 0.0, 0.0])
    small = [*CENTRE, *d, 0.4, 0, 5, 0.0, 0, 0, 0]  # of shower 5
    large = [*(CENTRE + 20), *d, 14.0, 0, 5, 0.0, 0, 0, 0]
    sim._quiet = [np.array([small, large])]
    pos, _, _, _, labels = _finish(sim)
    near_small = np.linalg.norm(pos - CENTRE, axis=1) < 5
    assert (labels[near_small, 0] == lartpc.LOW_ENERGY).all()
    assert (labels[~near_small, 0] == lartpc.SHOWER).all() and (labels[~near_small, 2] == 5).all()


def test_overlap_priority_and_energy_sum() -> None:
    cfg = LArConfig(cluster_columns=6)
    classes = [lartpc.LOW_ENERGY, lartpc.DELTA, lartpc.SHOWER, lartpc.MICHEL, lartpc.TRACK]
    for n in range(1, len(classes) + 1):
        present = classes[:n]  # the best one of these must win
        k = len(present)
        pos = np.tile(CENTRE + 0.01, (k, 1)) + np.linspace(0, 0.1, k)[:, None]  # one voxel
        energy = np.linspace(1.0, 2.0, k)[::-1]  # the winner does not have the most energy
        labels = np.array([[c, 10 + c, 20 + c, 1, 11] for c in present])
        points, clusters = voxelize(pos, energy, np.zeros(k), np.zeros(k), labels, cfg)
        assert len(points) == 1 and points[0, 3] == pytest.approx(energy.sum())
        best = min(present, key=lartpc.OVERLAP_PRIORITY.index)
        sem = np.repeat(clusters[:, 4], clusters[:, 0].astype(int))
        assert sem[0] == best
    assert lartpc.OVERLAP_PRIORITY == (lartpc.TRACK, lartpc.MICHEL, lartpc.SHOWER, lartpc.DELTA, lartpc.LOW_ENERGY)


def test_electrons_are_never_track_and_layout_holds() -> None:
    events = simulate(6, seed=11, config=LArConfig(cluster_columns=6))
    for points, clusters in events:
        assert points.shape[1] == 8 and clusters.shape[1] == 6
        assert clusters[0, 4] == lartpc.LOW_ENERGY  # row 0 is the low-energy cluster
        assert clusters[:, 0].sum() == len(points)
        track = clusters[:, 4] == lartpc.TRACK
        assert set(np.abs(clusters[track, 5]).astype(int)) <= HEAVY  # no electron cluster is track
        em = np.isin(clusters[:, 4], [lartpc.SHOWER, lartpc.MICHEL, lartpc.DELTA])
        assert set(np.abs(clusters[em, 5]).astype(int)) <= {11}
        assert (np.diff(clusters[1:, 1]) > 0).all()  # one cluster per fragment
        xyz = points[:, :3]
        assert (xyz >= 0).all() and (xyz < lartpc.N_VOXELS).all() and (xyz == np.round(xyz)).all()
        assert len(np.unique(xyz, axis=0)) == len(xyz)  # one point per voxel


def test_physics_inputs() -> None:
    rng = np.random.default_rng(0)
    e = np.array([michel_energy(rng) for _ in range(20_000)])
    assert e.max() <= MICHEL_EDGE and e.max() > 0.98 * MICHEL_EDGE
    hist, _ = np.histogram(e, bins=np.linspace(0, MICHEL_EDGE, 11))
    assert np.argmax(hist) >= 7  # the Michel spectrum peaks near its edge
    mip = dedx_heavy(np.geomspace(50, 5000, 400), MMU).min()
    assert mip == pytest.approx(2.12, rel=0.03)  # minimum-ionising muon in liquid argon, MeV/cm


def test_deterministic_from_the_seed(tmp_path: Path) -> None:
    a, b, c = simulate(3, seed=4), simulate(3, seed=4), simulate(3, seed=5)
    for (pa, ca), (pb, cb) in zip(a, b, strict=True):
        assert np.array_equal(pa, pb) and np.array_equal(ca, cb)
    assert not all(np.array_equal(pa, pc) for (pa, _), (pc, _) in zip(a, c, strict=True))
    one = generate_lartpc(tmp_path / "one", 4, 9, events_per_file=2, progress=False)
    two = generate_lartpc(tmp_path / "two", 4, 9, events_per_file=2, workers=2, progress=False)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert [digest(p) for p in one] == [digest(p) for p in two]
    m1, _ = convert("pilarnet", tmp_path / "one", tmp_path / "d1", progress=False)
    m2, _ = convert("pilarnet", tmp_path / "two", tmp_path / "d2", progress=False)
    assert m1["data_version"] == m2["data_version"]
    n_points = sum(int(np.load(p.with_name(p.stem + "_points.npy")).sum()) for p in one)
    assert sum(s["n_rows"] for s in m1["shards"]) == n_points


def test_cli_generate_then_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from physfm.cli import main

    raw = tmp_path / "raw"
    assert main(["generate", "lartpc", "--out", str(raw), "--n-events", "3", "--seed", "2", "--no-progress"]) == 0
    assert (raw / "lartpc_000.h5").is_file() and (raw / "generation.json").is_file()
    assert "points/event" in capsys.readouterr().out
    args = ["convert", "--format", "pilarnet", "--input", str(raw), "--out", str(tmp_path / "data"), "--no-progress"]
    assert main(args) == 0
    assert main(["generate", "lartpc", "--out", str(raw), "--n-events", "0", "--no-progress"]) == 2  # a clear error
