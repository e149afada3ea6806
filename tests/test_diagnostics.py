"""Alignment, uniformity and effective rank against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from physfm.models.diagnostics import alignment, effective_rank, koleo, uniformity


def test_alignment_of_identical_and_antipodal_pairs():
    x = torch.randn(8, 5)
    assert float(alignment(x, 3 * x)) == pytest.approx(0.0, abs=1e-6)  # scale does not matter
    assert float(alignment(x, -x)) == pytest.approx(4.0, rel=1e-6)  # |x - (-x)|^2 = 4 on the sphere
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert float(alignment(e1, e2)) == pytest.approx(2.0)  # orthogonal: |e1 - e2|^2 = 2


def test_uniformity_of_collapsed_and_spread_batches():
    same = torch.ones(6, 3)
    assert float(uniformity(same)) == pytest.approx(0.0, abs=1e-6)  # collapse: the maximum, 0
    two = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert float(uniformity(two)) == pytest.approx(-8.0)  # log exp(-2 * 4)
    basis = torch.eye(4)
    assert float(uniformity(basis)) == pytest.approx(-4.0)  # every pair at |.|^2 = 2
    with pytest.raises(ValueError, match="at least two"):
        uniformity(torch.ones(1, 3))


def test_koleo_is_minus_log_nearest_neighbour_distance():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]])  # nearest neighbours all at sqrt(2)
    assert float(koleo(x)) == pytest.approx(-math.log(math.sqrt(2)), rel=1e-5)
    assert float(koleo(torch.tensor([[1.0, 0.0], [-3.0, 0.0]]))) == pytest.approx(-math.log(2.0), rel=1e-5)
    bunched = torch.tensor([[1.0, 0.0], [1.0, 0.01]])
    assert float(koleo(bunched)) > 4  # close neighbours: a large penalty


def test_effective_rank_counts_the_directions_used():
    iso = torch.cat([torch.eye(4), -torch.eye(4)])  # centred, 4 equal singular values
    assert float(effective_rank(iso)) == pytest.approx(4.0, rel=1e-5)
    line = torch.arange(10.0)[:, None] * torch.tensor([[1.0, 2.0, -1.0]])  # rank one
    assert float(effective_rank(line)) == pytest.approx(1.0, rel=1e-4)
    assert float(effective_rank(torch.ones(5, 3))) == 1.0  # all equal: one point
    # two directions with singular values 3:1 -> exp(H(0.75, 0.25))
    x = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(effective_rank(x)) == pytest.approx(math.exp(h), rel=1e-5)
