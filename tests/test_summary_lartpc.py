"""The lartpc data summary: validation numbers computed from known points, and its plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from physfm.data import lartpc
from physfm.data.convert import convert
from physfm.data.summary import summarize
from physfm.data.summary_lartpc import mip_peak


def _event(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hand-made: 4 low-energy points, a 10-point track at 0.6 MeV per voxel, a 2-point Michel of 30 MeV."""
    rng = np.random.default_rng(seed)
    points = np.zeros((16, 8), np.float32)
    points[:, :3] = rng.permutation(768)[:48].reshape(16, 3)
    points[:4, 3] = 0.2
    points[4:14, 3] = 0.6 + 0.01 * rng.random(10)
    points[14:, 3] = 15.0
    clusters = np.array([[4, -1, -1, -1, 4], [10, 0, 0, 0, 1], [2, 1, 1, 0, 2]], np.float32)
    return points, clusters


def test_lartpc_summary_numbers(tmp_path: Path) -> None:
    events = [_event(i) for i in range(6)]
    lartpc.write_pilarnet(tmp_path / "raw" / "a.h5", [p for p, _ in events], [c for _, c in events])
    convert("pilarnet", tmp_path / "raw", tmp_path / "data", split_fractions={"train": 1.0}, progress=False)
    summary = summarize(tmp_path / "data", tmp_path / "summary")
    got = summary["lartpc"]
    assert got["point_share"] == pytest.approx(
        {"shower": 0, "track": 10 / 16, "michel": 2 / 16, "delta": 0, "low_energy": 4 / 16}
    )
    assert sum(got["point_share_pilarnet"].values()) == pytest.approx(1.0)
    assert got["points_per_event"]["mean"] == 16
    assert 0.55 <= got["track_voxel_energy_peak_mev"] <= 0.65
    assert got["michel_clusters"] == 6 and got["michel_energy_mev"]["median"] == pytest.approx(30.0)
    for name in ("lartpc_classes.png", "lartpc_energy.png", "lartpc_events.png"):
        assert (tmp_path / "summary" / name).stat().st_size > 1000 and name in summary["plots"]


def test_mip_peak() -> None:
    rng = np.random.default_rng(0)
    e = np.concatenate([rng.normal(0.8, 0.05, 5000), rng.uniform(0.1, 3, 2000)])
    assert mip_peak(e) == pytest.approx(0.8, abs=0.05)


def test_log_energy_feature(tmp_path: Path) -> None:
    from physfm.data.loader import open_split
    from physfm.features import available, compute

    events = [_event(i) for i in range(3)]
    lartpc.write_pilarnet(tmp_path / "raw" / "a.h5", [p for p, _ in events], [c for _, c in events])
    manifest, _ = convert(
        "pilarnet", tmp_path / "raw", tmp_path / "data", split_fractions={"train": 1.0}, progress=False
    )
    assert "log_energy" in available(manifest)
    block = open_split(tmp_path / "data", "train").read()
    got = compute(block, manifest, ["x", "log_energy", "semantic"])
    assert np.allclose(got[:, 1], np.log10(block.particles[:, 3]))
    assert set(got[:, 2].astype(int)) == {1, 2, 4}
