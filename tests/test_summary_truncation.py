"""The data summary's truncation table: what a backbone's max_len drops, per class (issue 19 lever 2)."""

from __future__ import annotations

import numpy as np
import pytest

from physfm.data.summary import Truncation
from physfm.evaluate.report import truncation_table


def test_truncation_counts_events_particles_and_pt_beyond_each_length() -> None:
    # three events of 5, 2 and 3 particles, pT-descending; px = pT, py = 0
    pt = np.array([5.0, 4, 3, 2, 1, 7, 1, 3, 2, 1])
    particles = np.column_stack([pt, np.zeros_like(pt), np.ones_like(pt)])
    counts = np.array([5, 2, 3])
    t = Truncation((2, 3), 2, ["part_px", "part_py", "part_energy"])
    t.add(particles, counts, np.array([0, 1, 0]))
    table = t.table(["QCD", "Tbqq"])
    assert table["lengths"] == [2, 3]
    qcd = table["by"]["QCD"]  # events 0 and 2: 8 particles, pT 15 + 6
    assert qcd["events_cut"] == [1.0, 0.5]
    assert qcd["particles_dropped"] == [pytest.approx(4 / 8), pytest.approx(2 / 8)]
    assert qcd["pt_dropped"] == [pytest.approx((6 + 1) / 21, abs=1e-4), pytest.approx(3 / 21, abs=1e-4)]
    assert table["by"]["Tbqq"]["events_cut"] == [0.0, 0.0]
    assert table["by"]["all"]["particles_dropped"] == [0.4, 0.2]


def test_unlabelled_events_count_in_all_only_and_no_pt_without_momenta() -> None:
    t = Truncation((1,), 2, ["charge"])
    t.add(np.zeros((4, 1)), np.array([2, 2]), np.array([-1, 1]))
    table = t.table(["a", "b"])
    assert table["by"]["all"] == {"events_cut": [1.0], "particles_dropped": [0.5]}
    assert table["by"]["a"]["events_cut"] == [0.0] and table["by"]["b"]["events_cut"] == [1.0]


def test_the_report_shows_the_table_and_the_backbones_max_len() -> None:
    trunc = {"lengths": [48, 64], "by": {"all": {"events_cut": [0.74, 0.46], "pt_dropped": [0.022, 0.0077]}}}
    text = truncation_table(trunc, {"mpm": 48, "mpm_len64": 64})
    assert "L = 48" in text and "L = 64" in text
    assert "all: events cut" in text and "74.0 %" in text and "0.8 %" in text
    assert "mpm: 48, mpm_len64: 64" in text
