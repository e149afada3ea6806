"""Views of jets (JetCLR augmentations, RINO kT subjets) against hand-computed examples (no data files)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from physfm.data.jetclass import JET_BRANCHES, PARTICLE_BRANCHES
from physfm.data.shards import EventBlock
from physfm.data.views import (
    AugmentParams,
    Constituents,
    JetColumns,
    ViewMaker,
    ViewSpec,
    collinear_split,
    four_momenta,
    kt_subjets,
    make_view,
    parse_view,
    rotate,
    smear,
    translate,
    view_length,
)

MANIFEST = {
    "modality": "jets",
    "particle_features": [{"name": n} for n in PARTICLE_BRANCHES],
    "event_features": [{"name": n} for n in JET_BRANCHES],
}
P = list(PARTICLE_BRANCHES)
E = list(JET_BRANCHES)


def jets(parts: list[list[tuple[float, float, float, float]]], axes: list[tuple[float, float]]) -> EventBlock:
    """An EventBlock of jets given as (pT, Δη, Δφ, mass) per constituent and a (η, φ) axis per jet."""
    rows, events, counts = [], [], []
    for jet, (eta0, phi0) in zip(parts, axes, strict=True):
        sum4 = np.zeros(4)
        for k, (pt, deta, dphi, m) in enumerate(jet):
            eta, phi = eta0 + deta, phi0 + dphi
            px, py, pz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
            e = math.sqrt(m**2 + px**2 + py**2 + pz**2)
            r = np.zeros(len(P))
            r[[P.index(c) for c in ("part_px", "part_py", "part_pz", "part_energy", "part_deta", "part_dphi")]] = (
                px,
                py,
                pz,
                e,
                deta,
                dphi,
            )
            r[P.index("part_charge")] = (-1.0) ** k
            r[P.index("part_isChargedHadron")] = 1.0
            rows.append(r)
            sum4 += (px, py, pz, e)
        ev = np.zeros(len(E))
        ev[[E.index(c) for c in ("jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_nparticles")]] = (
            math.hypot(sum4[0], sum4[1]),
            eta0,
            phi0,
            sum4[3],
            len(jet),
        )
        events.append(ev)
        counts.append(len(jet))
    return EventBlock(
        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        np.array(rows),
        np.array(events),
        np.zeros(len(parts), dtype=np.int64),
        np.arange(1, len(parts) + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15),
    )


def col(block: EventBlock, name: str) -> np.ndarray:
    return block.particles[:, P.index(name)]


def p4(block: EventBlock) -> np.ndarray:
    """(n_jets, 4) summed (px, py, pz, E)."""
    rows = block.particles[:, [P.index(c) for c in ("part_px", "part_py", "part_pz", "part_energy")]]
    return np.add.reduceat(rows, block.offsets[:-1], axis=0)


def cons(pt, deta, dphi, offsets=None) -> Constituents:
    n = len(pt)
    offsets = np.array([0, n]) if offsets is None else np.asarray(offsets)
    return Constituents(
        offsets, np.array(pt, float), np.array(deta, float), np.array(dphi, float), np.zeros(n), np.zeros((n, 1))
    )


JET = [(300.0, 0.0, 0.0, 0.14), (120.0, 0.3, -0.1, 0.0), (40.0, -0.2, 0.25, 0.5), (2.0, 0.5, 0.5, 0.0)]
AXIS = (0.7, 2.9)  # near phi = pi: the wrap is exercised


def test_view_strings_are_checked():
    assert parse_view("rotate+collinear+collinear+smear") == ("rotate", "collinear", "collinear", "smear")
    assert parse_view("kt16") == ("kt16",)
    assert view_length("kt4", 64) == 4 and view_length("kt4+collinear", 64) == 64 and view_length("full", 64) == 64
    with pytest.raises(ValueError, match="unknown view step 'rotat'"):
        parse_view("rotat+smear")
    with pytest.raises(ValueError, match="cannot be combined"):
        parse_view("full+rotate")
    with pytest.raises(ValueError, match="unknown view step 'kt0'"):
        ViewSpec(("kt0",))


def test_rotation_by_a_right_angle_and_its_invariants():
    c = cons([100.0, 50.0], [0.1, -0.3], [0.2, 0.05])
    r = rotate(c, np.array([math.pi / 2]))
    np.testing.assert_allclose(r.deta, [-0.2, -0.05], atol=1e-15)  # (Δη, Δφ) -> (−Δφ, Δη)
    np.testing.assert_allclose(r.dphi, [0.1, -0.3], atol=1e-15)
    # through make_view on stored four-momenta: pT and ΔR to the axis of every constituent unchanged
    block = jets([JET], [AXIS])
    v = make_view(block, "rotate", JetColumns(MANIFEST), AugmentParams(), salt=5, max_len=64)
    pt0, pt1 = np.hypot(col(block, "part_px"), col(block, "part_py")), np.hypot(col(v, "part_px"), col(v, "part_py"))
    np.testing.assert_allclose(pt1, pt0, rtol=1e-12)  # pT order is kept, so row by row
    dr0 = np.hypot(col(block, "part_deta"), col(block, "part_dphi"))
    dr1 = np.hypot(col(v, "part_deta"), col(v, "part_dphi"))
    np.testing.assert_allclose(dr1, dr0, rtol=1e-9)
    assert not np.allclose(col(v, "part_deta"), col(block, "part_deta"))  # it did rotate
    # each constituent keeps its mass
    m = lambda b: np.sqrt(  # noqa: E731
        np.maximum(col(b, "part_energy") ** 2 - sum(col(b, f"part_p{a}") ** 2 for a in "xyz"), 0)
    )
    np.testing.assert_allclose(m(v), m(block), atol=1e-6)


def test_translation_uses_jetclr_ranges():
    c = cons([10.0, 5.0], [-0.1, 0.3], [0.0, 0.2])
    t = translate(c, np.array([0.75]), np.array([0.5]), width=1.0)
    # eta: ptp 0.4, shift U(-0.4, 0.4) at 0.75 -> +0.2; phi: ptp 0.2, range (-0.2, 0.2) at 0.5 -> 0
    np.testing.assert_allclose(t.deta, [0.1, 0.5])
    np.testing.assert_allclose(t.dphi, [0.0, 0.2])
    # near the phi boundary the range is cut: max dphi 3.0 -> shift <= pi - 3.0
    c2 = cons([10.0, 5.0], [0.0, 0.0], [2.5, 3.0])
    t2 = translate(c2, np.array([0.0]), np.array([1.0 - 1e-12]), width=1.0)
    assert t2.dphi.max() == pytest.approx(math.pi, abs=1e-9)


def test_soft_particle_smearing_scales_as_one_over_pt():
    c = cons([0.05, 10.0], [0.0, 0.0], [0.0, 0.0])
    s = smear(c, np.array([1.0, 1.0]), np.array([-2.0, -2.0]), strength=0.1, pt_clip=0.1)
    np.testing.assert_allclose(s.deta, [1.0, 0.01])  # sigma = 0.1 / max(pT, 0.1)
    np.testing.assert_allclose(s.dphi, [-2.0, -0.02])


def test_collinear_split_hand_example_and_jet_four_momentum():
    c = cons([100.0, 30.0], [0.1, -0.2], [0.0, 0.3])
    c.m2[:] = [4.0, 0.0]
    s = collinear_split(c, u_pick=np.array([0.9, 0.1]), r=np.array([0.5, 0.25]), max_len=3)
    # one free slot: the particle with the smaller u_pick (the second) splits into 0.25 and 0.75
    np.testing.assert_allclose(s.pt, [100.0, 7.5, 22.5])
    np.testing.assert_allclose(s.deta, [0.1, -0.2, -0.2])
    np.testing.assert_allclose(s.m2, [4.0, 0.0, 0.0])
    before = np.array(four_momenta(c, np.array([0.3]), np.array([1.0]))).sum(1)
    after = np.array(four_momenta(s, np.array([0.3]), np.array([1.0]))).sum(1)
    np.testing.assert_allclose(after, before, rtol=1e-12)
    # through make_view: the jet's four-momentum is unchanged, multiplicity grows to at most max_len
    block = jets([JET, JET[:2]], [AXIS, (-1.0, 0.0)])
    v = make_view(block, "collinear+collinear", JetColumns(MANIFEST), AugmentParams(), salt=1, max_len=7)
    np.testing.assert_allclose(p4(v), p4(block), rtol=1e-9)
    assert list(np.diff(v.offsets)) == [7, 7]  # 4 -> 7 (3 free slots, full); 2 -> 4 -> 7 (min(n, 7 - n) each)
    pt = np.hypot(col(v, "part_px"), col(v, "part_py"))
    assert all(np.all(np.diff(pt[a:b]) <= 0) for a, b in zip(v.offsets[:-1], v.offsets[1:], strict=True))
    assert v.events[0, E.index("jet_nparticles")] == 7
    np.testing.assert_allclose(v.events[:, E.index("jet_pt")], block.events[:, E.index("jet_pt")], rtol=1e-9)


def test_kt_subjets_hand_example_against_fastjet():
    # A hard, B at Delta R 0.5, C soft next to A: kT merges C into A first (min(kt^2) dR^2 smallest)
    block = jets([[(100.0, 0.0, 0.0, 0.0), (50.0, 0.5, 0.0, 0.0), (1.0, 0.05, 0.0, 0.0)]], [(0.0, 0.0)])
    cols = JetColumns(MANIFEST)
    v = make_view(block, "kt2", cols, AugmentParams(), salt=0, max_len=64)
    rows = block.particles[:, [P.index(c) for c in ("part_px", "part_py", "part_pz", "part_energy")]]
    want = np.stack([rows[0] + rows[2], rows[1]])
    got = v.particles[:, [P.index(c) for c in ("part_px", "part_py", "part_pz", "part_energy")]]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert list(col(v, "part_charge")) == [2.0, -1.0]  # summed charges (+1 + +1, -1)
    assert v.events[0, E.index("jet_nparticles")] == 2


def test_kt_views_with_fewer_constituents_than_n():
    block = jets([JET[:3], JET], [AXIS, (0.0, -3.0)])
    cols = JetColumns(MANIFEST)
    for n in (2, 3, 4, 8, 16):
        v = make_view(block, f"kt{n}", cols, AugmentParams(), salt=0, max_len=64)
        assert list(np.diff(v.offsets)) == [min(n, 3), min(n, 4)], n
        np.testing.assert_allclose(p4(v), p4(block), rtol=1e-9)  # the subjets always sum to the jet
        if n >= 4:  # no clustering needed: the constituents themselves, ghosts dropped
            np.testing.assert_allclose(v.particles, block.particles, rtol=1e-9, atol=1e-9)
    c = cols.constituents(block)
    one = kt_subjets(c, 1, *cols.axis(block), radius=10.0, charge_col=None)
    assert list(one.counts) == [1, 1]
    # a radius smaller than the jet: the soft, distant particle is merged with the beam and leaves the view
    pair = jets([[(100.0, 0.0, 0.0, 0.0), (10.0, 0.5, 0.0, 0.0)]], [(0.0, 0.0)])
    small = make_view(pair, "kt1", cols, AugmentParams(kt_radius=0.1), salt=0, max_len=8)
    np.testing.assert_allclose(small.particles, pair.particles[:1], rtol=1e-9, atol=1e-9)
    assert make_view(pair, "kt1", cols, AugmentParams(), salt=0, max_len=8).events[0, 0] == pytest.approx(110.0)


def test_kt_views_from_one_clustering_equal_separate_ones():
    rng = np.random.default_rng(1)
    parts = [[(float(rng.exponential(30) + 1), *rng.normal(0, 0.3, 2), 0.1) for _ in range(n)] for n in (3, 5, 12, 40)]
    block = jets(parts, [(0.0, 1.0)] * 4)
    stats = {"features": ["log_pt"], "norm": {"mean": [0], "std": [1]}}
    for radius in (10.0, 0.3):  # 0.3: some constituents merge with the beam
        spec = ViewSpec(("kt2", "kt4", "full", "kt8", "kt16"), AugmentParams(kt_radius=radius))
        shared = ViewMaker(spec, MANIFEST, stats, max_len=64).blocks(block, salt=0)
        for v, b in zip(spec.views, shared, strict=True):
            alone = make_view(block, v, JetColumns(MANIFEST), spec.params, salt=0, max_len=64)
            np.testing.assert_array_equal(b.offsets, alone.offsets)
            np.testing.assert_allclose(b.particles, alone.particles, rtol=1e-12, atol=1e-12)
            if radius > 1:
                np.testing.assert_allclose(p4(b), p4(block), rtol=1e-9)


def test_views_do_not_depend_on_batching():
    rng = np.random.default_rng(0)
    many = [[(float(rng.exponential(30) + 1), *rng.normal(0, 0.3, 2), 0.0) for _ in range(rng.integers(1, 30))]]
    many += [[(float(rng.exponential(30) + 1), *rng.normal(0, 0.3, 2), 0.0) for _ in range(n)] for n in (5, 40, 12)]
    block = jets(many, [(0.1 * i, -0.5 * i) for i in range(len(many))])
    spec = ViewSpec(("rotate+collinear+collinear+smear+translate", "kt4", "full"))
    feats = ["log_pt", "deta", "dphi", "log_pt_rel", "dr", "charge"]
    stats = {"features": feats, "norm": {"mean": [0] * 6, "std": [1] * 6}}
    vm = ViewMaker(spec, MANIFEST, stats, max_len=32)
    whole = vm(block, salt=42)
    halves = [vm(block.slice(0, 2), salt=42), vm(block.slice(2, 4), salt=42)]
    for k, v in whole.items():
        np.testing.assert_array_equal(v, np.concatenate([h[k] for h in halves]))
    assert whole["x_v1"].shape == (4, 4, 6) and whole["mask_v2"].shape == (4, 32)
    other = vm(block, salt=43)  # another epoch: other views
    assert not np.array_equal(other["x_v0"], whole["x_v0"]) and np.array_equal(other["x_v1"], whole["x_v1"])


def test_views_refuse_other_modalities():
    with pytest.raises(ValueError, match="modality is 'icecube'"):
        JetColumns({**MANIFEST, "modality": "icecube"})


ICE = {
    "modality": "icecube",
    "particle_features": [{"name": n} for n in ("sensor_id", "time", "charge", "auxiliary", "x", "y", "z")],
    "event_features": [{"name": n} for n in ("event_id", "azimuth", "zenith")],
}


def pulses(counts: list[int]) -> EventBlock:
    rng = np.random.default_rng(3)
    rows = []
    for n in counts:
        t = np.sort(rng.uniform(9000, 12000, n))
        rows += [[rng.integers(0, 5160), ti, rng.exponential(1.0), 0.0, *rng.normal(0, 100, 3)] for ti in t]
    return EventBlock(
        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        np.array(rows),
        np.zeros((len(counts), 3)),
        np.full(len(counts), -1),
        np.arange(7, 7 + len(counts), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15),
    )


def test_pulse_dropout_and_time_jitter():
    from physfm.data.views import PulseColumns

    block = pulses([1, 5, 200])
    cols = PulseColumns(ICE)
    every = make_view(block, "dropout", cols, AugmentParams(dropout_fraction=1.0), salt=0, max_len=64)
    assert list(np.diff(every.offsets)) == [1, 1, 1]  # all dropped but the one with the largest draw
    some = make_view(block, "dropout", cols, AugmentParams(dropout_fraction=0.25), salt=0, max_len=64)
    kept = np.diff(some.offsets)
    assert kept[0] == 1 and 130 <= kept[2] <= 170  # about 75 % of 200
    rows = {tuple(r) for r in block.particles.tolist()}
    assert all(tuple(r) in rows for r in some.particles.tolist())  # a subset of the pulses, unchanged
    none = make_view(block, "jitter", cols, AugmentParams(time_jitter=0.0), salt=0, max_len=64)
    np.testing.assert_array_equal(none.particles, block.particles)
    j = make_view(block, "jitter", cols, AugmentParams(time_jitter=3.0), salt=0, max_len=64)
    dt = j.particles[:, 1] - block.particles[:, 1]
    np.testing.assert_array_equal(np.delete(j.particles, 1, axis=1), np.delete(block.particles, 1, axis=1))
    assert abs(dt.mean()) < 0.6 and 2.5 < dt.std() < 3.5  # N(0, 3^2) ns on 206 pulses
    stats = {"features": ["t_rel", "log_charge"], "norm": {"mean": [0, 0], "std": [1, 1]}}
    vm = ViewMaker(ViewSpec(("dropout+jitter", "full")), ICE, stats, max_len=16)
    whole, halves = vm(block, salt=9), [vm(block.slice(0, 1), salt=9), vm(block.slice(1, 3), salt=9)]
    for k, v in whole.items():
        np.testing.assert_array_equal(v, np.concatenate([h[k] for h in halves]))
    with pytest.raises(ValueError, match=r"steps \['rotate'\] do not apply to this icecube dataset"):
        ViewMaker(ViewSpec(("rotate",)), ICE, stats, max_len=16)
    with pytest.raises(ValueError, match=r"steps \['dropout'\] do not apply to this jets dataset"):
        ViewMaker(ViewSpec(("dropout",)), MANIFEST, stats, max_len=16)
