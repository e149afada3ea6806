"""LineFit (the zero-label IceCube direction floor) and its supervised refinement (issue 18)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_study import simulated_icecube

from physfm.baselines.linefit import (
    FALLBACK_DIRECTION,
    STATISTICS,
    RefineConfig,
    RefinedLineFit,
    linefit,
    predict_linefit,
    pulse_statistics,
    read_pulses,
)
from physfm.data.icecube import angular_distance, direction

C = 0.299792458  # m/ns


@pytest.fixture(scope="module")
def icecube_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """800 simulated IceCube-86 events (``physfm generate icecube``), converted to shards."""
    return simulated_icecube(tmp_path_factory.mktemp("linefit"), 800, seed=11, shard_events=400)


def track_event(rng: np.random.Generator, d: np.ndarray, n: int = 12, n_aux: int = 0) -> dict[str, np.ndarray]:
    """Pulses exactly on a straight line travelled at c along -d, plus auxiliary pulses far off it."""
    t = np.sort(rng.uniform(9000, 11000, n))
    r0 = rng.uniform(-300, 300, 3)
    pos = r0 + np.outer(t - 10000, -d * C)
    aux_t = rng.uniform(6000, 17000, n_aux)
    aux_pos = rng.uniform(-500, 500, (n_aux, 3))
    return {
        "time": np.r_[t, aux_t],
        "pos": np.vstack([pos, aux_pos]),
        "auxiliary": np.r_[np.zeros(n), np.ones(n_aux)],
    }


def ragged(events: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    offsets = np.r_[0, np.cumsum([len(e["time"]) for e in events])]
    out = {k: np.concatenate([e[k] for e in events]) for k in ("time", "pos", "auxiliary")}
    out["charge"] = np.ones(len(out["time"]))
    return {"offsets": offsets, **out}


def test_exact_track_is_recovered_and_auxiliary_pulses_are_ignored() -> None:
    rng = np.random.default_rng(1)
    truth = direction(rng.uniform(0, 2 * np.pi, 50), np.arccos(rng.uniform(-1, 1, 50)))
    events = [track_event(rng, d, n=int(rng.integers(2, 30)), n_aux=int(rng.integers(0, 40))) for d in truth]
    p = ragged(events)
    fit = linefit(p["offsets"], p["time"], p["pos"], p["auxiliary"])
    assert fit.valid.all() and not fit.used_auxiliary.any()
    assert np.degrees(angular_distance(fit.direction, truth)).max() < 1e-6
    assert np.allclose(np.linalg.norm(fit.velocity, axis=1), C) and np.allclose(fit.residual_rms, 0, atol=1e-6)
    assert np.array_equal(fit.n_pulses, [np.sum(e["auxiliary"] == 0) for e in events])
    # the same events with the auxiliary flags cleared: the off-line pulses now spoil the fit
    spoiled = linefit(p["offsets"], p["time"], p["pos"], np.zeros_like(p["auxiliary"]))
    has_aux = np.array([e["auxiliary"].sum() > 5 for e in events])
    assert np.degrees(angular_distance(spoiled.direction[has_aux], truth[has_aux])).mean() > 5


def test_too_few_pulses_are_handled_explicitly() -> None:
    rng = np.random.default_rng(2)
    d = np.array([0.0, 0.6, 0.8])
    one_nonaux = track_event(rng, d, n=1, n_aux=0)
    one_nonaux_plus_aux = track_event(rng, d, n=1, n_aux=3)
    same_time = {"time": np.full(4, 1e4), "pos": rng.normal(size=(4, 3)), "auxiliary": np.zeros(4)}
    empty = {"time": np.zeros(0), "pos": np.zeros((0, 3)), "auxiliary": np.zeros(0)}
    good = track_event(rng, d, n=5)
    p = ragged([one_nonaux, one_nonaux_plus_aux, same_time, empty, good])
    fit = linefit(p["offsets"], p["time"], p["pos"], p["auxiliary"])
    assert fit.valid.tolist() == [False, True, False, False, True]
    assert fit.used_auxiliary.tolist() == [True, True, False, False, False]  # fell back to all pulses
    assert fit.n_pulses.tolist() == [1, 4, 4, 0, 5]
    assert np.isnan(fit.direction[[0, 2, 3]]).all() and np.isfinite(fit.direction[[1, 4]]).all()
    pred, _ = predict_linefit(p)
    assert np.array_equal(pred[[0, 2, 3]], np.tile(FALLBACK_DIRECTION, (3, 1)))
    stats, _ = pulse_statistics(p)
    assert stats.shape == (5, len(STATISTICS)) and np.isfinite(stats).all()
    with pytest.raises(ValueError, match="at least 2"):
        linefit(p["offsets"], p["time"], p["pos"], p["auxiliary"], min_pulses=1)
    with pytest.raises(ValueError, match="disagree"):
        linefit(p["offsets"], p["time"][:-1], p["pos"], p["auxiliary"])


def test_simulated_events_and_refinement(icecube_dataset: Path) -> None:
    train, test = read_pulses(icecube_dataset, "train"), read_pulses(icecube_dataset, "test")
    pred, fit = predict_linefit(train)
    err = np.degrees(angular_distance(pred, train["truth"]))
    tracks = train["is_track"]
    assert fit.valid.all()
    assert np.median(err[tracks]) < 10 < np.median(err[~tracks])  # LineFit is a track reconstruction
    half = len(train["truth"]) // 2
    take = lambda p, sel: {k: v[sel] for k, v in p.items() if k != "offsets"} | _rows(p, sel)  # noqa: E731
    model = RefinedLineFit(RefineConfig(max_rounds=20), seed=0).fit(take(train, np.arange(half)))
    assert model.rounds == 20 and not model.history
    again = RefinedLineFit(RefineConfig(max_rounds=20), seed=0).fit(take(train, np.arange(half)))
    assert np.array_equal(model.predict(test), again.predict(test))  # deterministic
    chosen = RefinedLineFit(RefineConfig(max_rounds=20)).fit(
        take(train, np.arange(half)), take(train, np.arange(half, len(train["truth"])))
    )
    assert len(chosen.history) == 21 and chosen.rounds == int(np.argmin(chosen.history))
    assert chosen.history[chosen.rounds] <= chosen.history[0]  # never worse than LineFit on validation
    out = chosen.predict(test)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0)


def _rows(p: dict[str, np.ndarray], sel: np.ndarray) -> dict[str, np.ndarray]:
    """Pulse arrays of the selected events of a ragged table."""
    counts = np.diff(p["offsets"])
    ev = np.repeat(np.arange(len(counts)), counts)
    keep = np.isin(ev, sel)
    out = {k: p[k][keep] for k in ("time", "charge", "auxiliary", "pos")}
    return {"offsets": np.r_[0, np.cumsum(counts[sel])], **out}


def test_cli_scores_both_baselines_within_the_budget(
    icecube_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from physfm.cli import main
    from physfm.io import read_json

    monkeypatch.setenv("PHYSFM_TRACKING", "0")
    assert (
        main(
            [
                "subsets",
                "--data",
                str(icecube_dataset),
                "--labels",
                "100",
                "--seeds",
                "1,2",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    assert main(["linefit", "--data", str(icecube_dataset), "--out", str(tmp_path / "lf.json"), "--threads", "1"]) == 0
    args = ["--mode", "linefit_refined", "--subsets", str(tmp_path / "s"), "--labels", "100", "--seed", "2"]
    out = tmp_path / "refined.json"
    assert (
        main(
            [
                "linefit",
                "--data",
                str(icecube_dataset),
                *args,
                "--config",
                '{"max_rounds": 10}',
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    lf, refined = read_json(tmp_path / "lf.json"), read_json(out)
    assert lf["n_labels"] == 0 and lf["mode"] == "linefit" and lf["lower_is_better"]
    assert refined["n_labels"] == 100 and refined["budget"]["n_train"] + refined["budget"]["n_val"] == 100
    assert refined["budget"]["n_val"] == 20 and refined["budget"]["protocol"]["name"] == "holdout"
    for r in (lf, refined):
        assert {"mean_angular_error_deg", "median_angular_error_deg_tracks", "mean_angular_error_deg_cascades"} <= set(
            r["metrics"]
        )
    assert main(["linefit", "--data", str(icecube_dataset), "--mode", "linefit_refined", "--out", str(out)]) == 2
