"""The label-efficiency factor against the best method without pretraining, on hand-made curves (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest

from physfm.evaluate.efficiency import (
    best_method_factors,
    fit_saturating,
    format_factor,
    labels_needed_best,
    runs_from_records,
    saturating_curve,
)

NS = [10, 100, 1000, 10000]
SEEDS = [1, 2, 3, 4, 5]


def runs_of(mode: str, curve, ns=NS, seeds=SEEDS, noise=None) -> list[dict]:
    out = []
    for n in ns:
        for i, s in enumerate(seeds):
            eps = 0.0 if noise is None else noise[(mode, n)][i]
            out.append({"mode": mode, "n": n, "seed": s, "value": float(curve(n)) + eps})
    return out


def row(rows: list[dict], mode: str, n: float) -> dict:
    return next(r for r in rows if r["mode"] == mode and r["n"] == n)


def test_log10_reference_gives_factor_ten() -> None:
    runs = runs_of("scratch", np.log10) + [{"mode": "finetune", "n": 100, "seed": s, "value": 3.0} for s in SEEDS]
    r = row(best_method_factors(runs, ["scratch"]), "finetune", 100)
    assert r["kind"] == "value" and r["factor"] == pytest.approx(10.0)
    assert r["n_needed"] == pytest.approx(1000.0) and r["best_reference"] == "scratch"
    assert r["reference_metric"] == pytest.approx(2.0) and r["n_seeds"] == 5 and not r["few_seeds"]
    assert r["low"] == pytest.approx(10.0) and r["high"] == pytest.approx(10.0)  # no seed spread, no width
    runs[-1]["value"] = 2.5  # one seed lower
    r = row(best_method_factors(runs, ["scratch"]), "finetune", 100)
    assert r["factor"] == pytest.approx(10**2.9 / 100)  # the seed mean (4 x 3 + 2.5) / 5 = 2.9, read in log n


def test_envelope_over_two_baselines_takes_the_cheaper_one() -> None:
    # bdt = 2 log10 n - 2 is worse below n = 100 and better above; the best method switches there
    runs = runs_of("scratch", np.log10) + runs_of("bdt", lambda n: 2 * np.log10(n) - 2)
    runs += [{"mode": "finetune", "n": 10, "seed": s, "value": 1.5} for s in SEEDS]
    runs += [{"mode": "finetune", "n": 100, "seed": s, "value": 3.5} for s in SEEDS]
    rows = best_method_factors(runs, ["scratch", "bdt"])
    lo, hi = row(rows, "finetune", 10), row(rows, "finetune", 100)
    assert lo["best_reference"] == "scratch" and lo["factor"] == pytest.approx(10**1.5 / 10)
    assert hi["best_reference"] == "bdt" and hi["factor"] == pytest.approx(10**2.75 / 100)
    assert hi["reference_metric"] == pytest.approx(2.0)
    # against same-architecture scratch alone the factor at 100 labels is larger
    alone = row(best_method_factors(runs, ["scratch"]), "finetune", 100)
    assert alone["factor"] == pytest.approx(10**3.5 / 100) and alone["factor"] > hi["factor"]


def test_out_of_range_bounds_and_zero_label_cut() -> None:
    runs = runs_of("scratch", np.log10)
    runs += [{"mode": "finetune", "n": 100, "seed": s, "value": 5.0} for s in SEEDS]  # above every point
    runs += [{"mode": "finetune", "n": 1000, "seed": s, "value": 0.5} for s in SEEDS]  # below every point
    rows = best_method_factors(runs, ["scratch"])
    above, below = row(rows, "finetune", 100), row(rows, "finetune", 1000)
    assert above["kind"] == "lower" and above["factor"] == pytest.approx(100.0) and np.isnan(above["low"])
    assert below["kind"] == "upper" and below["factor"] == pytest.approx(0.01)
    assert format_factor(above) == "≥ 100×" and format_factor(below) == "≤ 0.01×"
    # a zero-label cut at 0.8 is a floor: it matches the weak point with no labels, not the strong one
    cut = [{"mode": "cut", "n": 0, "seed": None, "value": 0.8}]
    rows = best_method_factors(runs + cut, ["scratch", "cut"])
    assert row(rows, "finetune", 1000)["kind"] == "zero" and row(rows, "finetune", 1000)["factor"] == 0
    assert row(rows, "finetune", 100)["kind"] == "lower"
    # a reference with a shorter curve that could still win turns a value into an upper bound
    n, kind, best = labels_needed_best({"a": (NS, np.log10(NS)), "b": ([10, 100], [0.0, 1.0])}, 2.5)
    assert (kind, best) == ("upper", "a") and n == pytest.approx(10**2.5)


def test_lower_is_better_angular_error() -> None:
    err = lambda n: 90 - 20 * np.log10(n)  # noqa: E731  degrees, falls with labels
    runs = runs_of("scratch", err) + [{"mode": "finetune", "n": 100, "seed": s, "value": 30.0} for s in SEEDS]
    r = row(best_method_factors(runs, ["scratch"], higher_is_better=False), "finetune", 100)
    assert r["factor"] == pytest.approx(10.0) and r["metric"] == pytest.approx(30.0)
    assert r["reference_metric"] == pytest.approx(50.0)
    runs[-1]["value"] = 95.0  # worse than scratch with the fewest labels
    r = row(best_method_factors(runs, ["scratch"], higher_is_better=False), "finetune", 100)
    assert r["kind"] == "value"  # mean (4 * 30 + 95) / 5 = 43 still inside the curve
    assert r["factor"] == pytest.approx(10 ** ((90 - 43) / 20) / 100)


def test_saturating_model_recovers_its_curve() -> None:
    true = (0.95, 0.6, 0.4)
    curve = lambda n: saturating_curve(n, *true)  # noqa: E731
    ns = [30, 100, 300, 1000, 3000, 10000]
    assert fit_saturating(ns, curve(np.array(ns))) == pytest.approx(true, rel=1e-4)
    target = float(curve(2000.0))  # between tried points: the piecewise-linear reading is biased, the fit is not
    runs = runs_of("scratch", curve, ns) + [{"mode": "ft", "n": 100, "seed": s, "value": target} for s in SEEDS]
    sat = row(best_method_factors(runs, ["scratch"], model="saturating"), "ft", 100)
    lin = row(best_method_factors(runs, ["scratch"]), "ft", 100)
    assert sat["factor"] == pytest.approx(20.0, rel=1e-3) and sat["model"] == "saturating"
    assert abs(lin["factor"] - 20.0) > 0.1
    with pytest.raises(ValueError, match="at least 3"):
        fit_saturating([10, 100], [0.5, 0.6])


def test_t_interval_covers_the_true_factor_at_its_level() -> None:
    """Seed noise shared by every method of a seed (its label subset): 68 % t-intervals cover ~68 %."""
    rng = np.random.default_rng(0)
    covered, widths_t, widths_b = 0, [], []
    trials = 200
    for trial in range(trials):
        shared = rng.normal(0, 0.05, (len(NS), len(SEEDS)))
        noise = {("scratch", n): 0.1 * rng.normal(size=5) + shared[i] for i, n in enumerate(NS)}
        runs = runs_of("scratch", np.log10, noise=noise)
        runs += [{"mode": "ft", "n": 100, "seed": s, "value": 2.7 + 0.1 * rng.normal()} for s in SEEDS]
        r = row(best_method_factors(runs, ["scratch"]), "ft", 100)
        assert r["kind"] == "value" and r["low"] < r["factor"] < r["high"]
        covered += r["low"] <= 10**0.7 <= r["high"]
        widths_t.append(np.log(r["high"] / r["low"]))
        if trial < 20:
            b = row(best_method_factors(runs, ["scratch"], interval="bootstrap", n_bootstrap=300), "ft", 100)
            widths_b.append(np.log(b["high"] / b["low"]))
    assert 0.58 <= covered / trials <= 0.80, covered / trials
    # with 5 seeds the percentile bootstrap is narrower than the t-interval (the reason t is the default)
    assert np.median(widths_b) < np.median(widths_t[:20])


def test_few_seeds_are_flagged_and_bad_options_refused() -> None:
    runs = runs_of("scratch", np.log10, seeds=[1, 2, 3], noise={("scratch", n): [0, 0.1, -0.1] for n in NS})
    runs += [{"mode": "ft", "n": 100, "seed": s, "value": v} for s, v in zip([1, 2, 3], [2.9, 3.0, 3.1], strict=True)]
    r = row(best_method_factors(runs, ["scratch"]), "ft", 100)
    assert r["few_seeds"] and r["n_seeds"] == 3 and r["low"] < 10 < r["high"]
    assert best_method_factors(runs, ["bdt"]) == []
    with pytest.raises(ValueError, match="interval"):
        best_method_factors(runs, ["scratch"], interval="jackknife")
    with pytest.raises(ValueError, match="model"):
        best_method_factors(runs, ["scratch"], model="spline")


def test_records_become_runs_and_infinite_rejections_are_left_out() -> None:
    rej = {n: float(np.log10(n)) for n in NS}
    recs = [{"mode": "scratch", "n_labels": n, "seed": s, "metrics": {"rej30": rej[n]}} for n in NS for s in SEEDS]
    recs += [{"mode": "finetune", "n_labels": 100, "seed": s, "metrics": {"rej30": 3.0}} for s in SEEDS[:4]]
    recs += [{"mode": "finetune", "n_labels": 100, "seed": 5, "metrics": {"rej30": float("inf")}}]
    runs = runs_from_records(recs, "rej30")
    assert len(runs) == len(recs) - 1 and {"mode", "n", "seed", "value"} == set(runs[0])
    r = row(best_method_factors(runs, ["scratch"]), "finetune", 100)
    assert r["n_seeds"] == 4 and r["factor"] == pytest.approx(10.0)
