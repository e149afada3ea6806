"""LineFit, the zero-label direction floor for IceCube, and a supervised refinement of it (issue 18).

**LineFit** (IceCube's classic first guess, Stokstad et al., AMANDA/IceCube "improved LineFit"
without its outlier filter): per event, the least-squares line ``r_i = r0 + v (t_i - t_mean)``
through the positions ``r_i`` of the pulsed DOMs against the pulse times ``t_i``::

    v = sum_i (r_i - r_mean)(t_i - t_mean) / sum_i (t_i - t_mean)^2

A track's light front moves along the track at about ``c``; the particle comes from ``-v``, so the
direction in the Kaggle convention (:mod:`physfm.data.icecube`) is ``-v / |v|``. Only non-auxiliary
pulses enter (auxiliary ones are mostly isolated noise). An event with fewer than ``min_pulses``
non-auxiliary pulses is fitted with all its pulses instead (``used_auxiliary``); one that still has
fewer, or whose pulses all share one time, has no fit (``valid`` False, direction NaN). Scoring a
prediction needs a direction for every event: :func:`predict_linefit` gives those events the fixed
direction ``(0, 0, 1)`` (90 degrees on average against isotropic truth) and counts them. No labels
are used. Vectorised over events with numpy (``bincount`` sums over the ragged pulse rows).

**Refined LineFit** (:class:`RefinedLineFit`): the way IceCube's reconstruction chain starts from
LineFit, a small supervised model maps LineFit's direction plus a few pulse statistics
(:func:`pulse_statistics`: speed, fit residual, pulse count and charge, the principal axes of the
hit pattern, time span) to a correction of the direction. Three scikit-learn
``HistGradientBoostingRegressor`` models predict the components of ``truth - linefit``; the
prediction is the normalised sum, so zero boosting rounds is LineFit itself. The number of rounds is
chosen on the in-budget validation part (:func:`physfm.finetune.subsets.load_split`): every label
used, for training or for that choice, is inside the label budget ``n``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from physfm.data.shards import DataError, feature_names, load_manifest

#: Direction given to events LineFit cannot fit (too few pulses, no time spread).
FALLBACK_DIRECTION = (0.0, 0.0, 1.0)
PULSE_COLUMNS = ("time", "charge", "auxiliary", "x", "y", "z")
TRUTH = ("dir_x", "dir_y", "dir_z")


@dataclass
class LineFitResult:
    """Per-event LineFit output (``N`` events)."""

    direction: np.ndarray  # (N, 3) unit vector the particle comes from (-v/|v|); NaN where not valid
    velocity: np.ndarray  # (N, 3) m/ns
    residual_rms: np.ndarray  # (N,) m: rms distance of the pulses from the fitted line
    n_pulses: np.ndarray  # (N,) pulses the fit used
    used_auxiliary: np.ndarray  # (N,) bool: too few non-auxiliary pulses, all pulses used
    valid: np.ndarray  # (N,) bool


def _per_event(ev: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Sums of ``values`` (rows,) or (rows, k) per event index ``ev``."""
    if values.ndim == 1:
        return np.bincount(ev, weights=values, minlength=n)
    return np.stack([np.bincount(ev, weights=values[:, j], minlength=n) for j in range(values.shape[1])], axis=1)


def _selection(offsets: np.ndarray, auxiliary: np.ndarray, min_pulses: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows each event's fit uses and the events that fell back to all pulses."""
    n = len(offsets) - 1
    ev = np.repeat(np.arange(n), np.diff(offsets))
    nonaux = np.asarray(auxiliary) == 0
    fallback = np.bincount(ev[nonaux], minlength=n) < min_pulses
    return nonaux | fallback[ev], fallback


def linefit(
    offsets: np.ndarray, time: np.ndarray, pos: np.ndarray, auxiliary: np.ndarray, *, min_pulses: int = 2
) -> LineFitResult:
    """LineFit of every event of a ragged pulse table (``offsets`` (N+1,), per-pulse ``time`` (ns),
    ``pos`` (rows, 3) m, ``auxiliary`` flag); see the module docstring."""
    if min_pulses < 2:
        raise ValueError(f"a line needs at least 2 pulses; min_pulses={min_pulses}")
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    time, pos = np.asarray(time, dtype=np.float64), np.asarray(pos, dtype=np.float64)
    if pos.shape != (len(time), 3) or len(auxiliary) != len(time) or offsets[-1] != len(time):
        raise ValueError(f"pulse arrays disagree: {len(time)} times, positions {pos.shape}, offsets end {offsets[-1]}")
    use, fallback = _selection(offsets, auxiliary, min_pulses)
    ev = np.repeat(np.arange(n), np.diff(offsets))[use]
    t, r = time[use], pos[use]
    count = np.bincount(ev, minlength=n).astype(np.float64)
    safe = np.maximum(count, 1.0)
    dt = t - (_per_event(ev, t, n) / safe)[ev]  # centred per event: no cancellation at t ~ 1e4 ns
    dr = r - (_per_event(ev, r, n) / safe[:, None])[ev]
    stt = _per_event(ev, dt * dt, n)
    valid = (count >= 2) & (stt > 0)
    velocity = np.full((n, 3), np.nan)
    velocity[valid] = _per_event(ev, dr * dt[:, None], n)[valid] / stt[valid, None]
    speed = np.linalg.norm(velocity, axis=1)
    valid &= speed > 0
    direction = np.full((n, 3), np.nan)
    direction[valid] = -velocity[valid] / speed[valid, None]
    resid = dr - np.nan_to_num(velocity)[ev] * dt[:, None]
    rms = np.sqrt(_per_event(ev, np.sum(resid * resid, axis=1), n) / safe)
    rms[~valid] = np.nan
    return LineFitResult(direction, velocity, rms, count.astype(np.int64), fallback & (count > 0), valid)


# --------------------------------------------------------------------------- reading a dataset
def read_pulses(data_dir: str | Path, split: str, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Pulses (``offsets``, ``time``, ``charge``, ``auxiliary``, ``pos``), ``truth`` directions, ``is_track``
    (when the data has it) and ``event_key`` of a split of an IceCube-modality dataset (``indices``: sorted)."""
    from physfm.data.loader import open_split

    manifest = load_manifest(data_dir)
    check_pulses(data_dir, manifest)
    return block_pulses(open_split(data_dir, split).read(indices), manifest)


def check_pulses(data_dir: Any, manifest: dict[str, Any]) -> None:
    """Refuse a dataset that is not IceCube-modality with the pulse columns LineFit reads."""
    missing = [c for c in PULSE_COLUMNS if c not in feature_names(manifest, "particle")]
    if manifest.get("modality") != "icecube" or missing:
        raise DataError(f"{data_dir} is not an IceCube-modality dataset with pulse columns {PULSE_COLUMNS}")


def block_pulses(block: Any, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The :func:`read_pulses` arrays of one :class:`physfm.data.shards.EventBlock` of an IceCube dataset."""
    names = feature_names(manifest, "particle")
    col = {c: block.particles[:, names.index(c)].astype(np.float64) for c in PULSE_COLUMNS}
    enames = feature_names(manifest, "event")
    events = np.asarray(block.events, dtype=np.float64)
    out = {
        "offsets": block.offsets.astype(np.int64),
        "time": col["time"],
        "charge": col["charge"],
        "auxiliary": col["auxiliary"],
        "pos": np.column_stack([col["x"], col["y"], col["z"]]),
        "truth": events[:, [enames.index(c) for c in TRUTH]],
        "event_key": block.event_key,
    }
    if "is_track" in enames:
        out["is_track"] = events[:, enames.index("is_track")] > 0.5
    return out


def predict_linefit(pulses: dict[str, np.ndarray], min_pulses: int = 2) -> tuple[np.ndarray, LineFitResult]:
    """LineFit directions for every event (events without a fit get :data:`FALLBACK_DIRECTION`)."""
    fit = linefit(pulses["offsets"], pulses["time"], pulses["pos"], pulses["auxiliary"], min_pulses=min_pulses)
    pred = np.where(fit.valid[:, None], np.nan_to_num(fit.direction), np.asarray(FALLBACK_DIRECTION))
    return pred, fit


# --------------------------------------------------------------------------- supervised refinement
#: Names of the columns of :func:`pulse_statistics`.
STATISTICS = (
    "lf_dir_x",
    "lf_dir_y",
    "lf_dir_z",
    "lf_valid",
    "log10_speed",
    "log10_residual_rms",
    "log10_n_pulses",
    "log10_charge",
    "log10_time_span",
    "log10_axis1",
    "log10_axis2",
    "log10_axis3",
    "axis_x",
    "axis_y",
    "axis_z",
    "cog_x",
    "cog_y",
    "cog_z",
)


def pulse_statistics(pulses: dict[str, np.ndarray], min_pulses: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, len(STATISTICS)), linefit directions (N, 3))`` over the pulses LineFit uses.

    The principal axis of the hit positions (largest eigenvector of their covariance) is oriented
    like LineFit's direction (against the time flow); axis lengths are the covariance's eigenvalues'
    square roots (m); ``cog`` is the charge-weighted centre (km).
    """
    pred, fit = predict_linefit(pulses, min_pulses)
    offsets = pulses["offsets"]
    n = len(offsets) - 1
    use, _ = _selection(offsets, pulses["auxiliary"], min_pulses)
    ev = np.repeat(np.arange(n), np.diff(offsets))[use]
    t, q, r = pulses["time"][use], pulses["charge"][use], pulses["pos"][use]
    count = np.maximum(np.bincount(ev, minlength=n).astype(np.float64), 1.0)
    qsum = _per_event(ev, q, n)
    cog = _per_event(ev, r * q[:, None], n) / np.maximum(qsum, 1e-9)[:, None]
    dr = r - (_per_event(ev, r, n) / count[:, None])[ev]
    cov = _per_event(ev, (dr[:, :, None] * dr[:, None, :]).reshape(-1, 9), n).reshape(n, 3, 3) / count[:, None, None]
    evals, evecs = np.linalg.eigh(cov)  # ascending
    axis = evecs[:, :, 2]
    axis *= np.where(np.sum(axis * pred, axis=1) < 0, -1.0, 1.0)[:, None]
    tmax = np.full(n, -np.inf)
    tmin = np.full(n, np.inf)
    np.maximum.at(tmax, ev, t)
    np.minimum.at(tmin, ev, t)
    span = np.where(np.isfinite(tmax - tmin), tmax - tmin, 0.0)

    def lg(x: np.ndarray) -> np.ndarray:
        return np.log10(np.maximum(np.nan_to_num(x, nan=0.0), 1e-3))

    feats = np.column_stack(
        [
            pred,
            fit.valid.astype(np.float64),
            lg(np.linalg.norm(np.nan_to_num(fit.velocity), axis=1)),
            lg(fit.residual_rms),
            lg(fit.n_pulses.astype(np.float64)),
            lg(qsum),
            lg(span),
            lg(np.sqrt(np.maximum(evals[:, ::-1], 0.0))),
            axis,
            cog / 1000.0,
        ]
    )
    return feats, pred


@dataclass(frozen=True)
class RefineConfig:
    """Hyperparameters of :class:`RefinedLineFit` (fixed; only the number of rounds is chosen on validation)."""

    max_rounds: int = 300
    learning_rate: float = 0.05
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 10
    l2_regularization: float = 1.0
    min_pulses: int = 2


class RefinedLineFit:
    """LineFit + boosted corrections of its direction (see the module docstring)."""

    def __init__(self, config: RefineConfig | None = None, seed: int = 0, threads: int | None = 1) -> None:
        self.config = config or RefineConfig()
        self.seed = seed
        self.threads = threads  # OpenMP threads of the trees; 1 is fastest for a few thousand events
        self.models: list[Any] = []
        self.rounds = 0
        self.history: list[float] = []

    def _raw(self, feats: np.ndarray, base: np.ndarray, rounds: int) -> np.ndarray:
        if rounds == 0 or not self.models:
            return base
        corr = np.column_stack([_staged_at(m, feats, rounds) for m in self.models])
        return base + corr

    def fit(self, train: dict[str, np.ndarray], val: dict[str, np.ndarray] | None = None) -> RefinedLineFit:
        """Fit on the ``train`` pulses; choose the rounds (0..max) by mean angular error on ``val``.

        Without ``val`` (or an empty one) all ``max_rounds`` are kept (a fixed recipe).
        """
        from sklearn.ensemble import HistGradientBoostingRegressor
        from threadpoolctl import threadpool_limits

        with threadpool_limits(self.threads):  # after the import: threadpoolctl limits loaded libraries only
            return self._fit(HistGradientBoostingRegressor, train, val)

    def _fit(self, hgb: Any, train: dict[str, np.ndarray], val: dict[str, np.ndarray] | None) -> RefinedLineFit:
        from physfm.data.icecube import angular_distance

        cfg = self.config
        x, base = pulse_statistics(train, cfg.min_pulses)
        if len(x) < 2:
            raise DataError(f"the refined LineFit needs at least 2 training events, got {len(x)}")
        target = train["truth"] - base
        self.models = []
        for j in range(3):
            m = hgb(
                max_iter=cfg.max_rounds,
                learning_rate=cfg.learning_rate,
                max_leaf_nodes=cfg.max_leaf_nodes,
                min_samples_leaf=min(cfg.min_samples_leaf, max(1, len(x) // 4)),
                l2_regularization=cfg.l2_regularization,
                early_stopping=False,
                random_state=self.seed + j,
            )
            self.models.append(m.fit(x, target[:, j]))
        self.rounds = min(m.n_iter_ for m in self.models)
        self.history = []
        if val is not None and len(val["truth"]) > 0:
            xv, bv = pulse_statistics(val, cfg.min_pulses)
            stages = [np.asarray(list(m.staged_predict(xv)))[: self.rounds] for m in self.models]
            err = [float(np.mean(angular_distance(bv, val["truth"])))]
            for k in range(self.rounds):
                pred = bv + np.column_stack([s[k] for s in stages])
                err.append(float(np.mean(angular_distance(pred, val["truth"]))))
            self.history = [float(np.degrees(e)) for e in err]
            self.rounds = int(np.argmin(err))
        return self

    def predict(self, pulses: dict[str, np.ndarray]) -> np.ndarray:
        """Unit direction vectors (N, 3) of the events of ``pulses``."""
        from threadpoolctl import threadpool_limits

        feats, base = pulse_statistics(pulses, self.config.min_pulses)
        with threadpool_limits(self.threads):
            raw = self._raw(feats, base, self.rounds)
        norm = np.linalg.norm(raw, axis=1, keepdims=True)
        return np.where(norm > 0, raw / np.maximum(norm, 1e-12), np.asarray(FALLBACK_DIRECTION))

    def params(self) -> dict[str, Any]:
        return {**asdict(self.config), "seed": self.seed, "rounds": self.rounds}


def _staged_at(model: Any, x: np.ndarray, rounds: int) -> np.ndarray:
    """Prediction of a boosted model after its first ``rounds`` iterations."""
    if rounds >= model.n_iter_:
        return model.predict(x)
    for k, pred in enumerate(model.staged_predict(x), start=1):
        if k == rounds:
            return pred
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- one baseline run, as a grid cell
#: Modes of the grid this module provides: the zero-label floor and its supervised refinement.
MODES = ("linefit", "linefit_refined")


def direction_scores(pred: np.ndarray, pulses: dict[str, np.ndarray], n_bootstrap: int, seed: int) -> tuple:
    """``(metrics, std)`` of predicted directions, overall and per event type (``_tracks``, ``_cascades``),
    with the same names and bootstrap as :class:`physfm.finetune.direction.DirectionTask`'s ``evaluate``."""
    from physfm.finetune.direction import direction_metrics

    metrics, std = direction_metrics(pred, pulses["truth"], n_bootstrap, seed)
    if "is_track" in pulses:
        for name, sel in (("tracks", pulses["is_track"]), ("cascades", ~pulses["is_track"])):
            if sel.sum() > 1:
                m, s = direction_metrics(pred[sel], pulses["truth"][sel], n_bootstrap, seed)
                metrics.update({f"{k}_{name}": v for k, v in m.items()})
                std.update({f"{k}_{name}": v for k, v in s.items()})
    return metrics, std


def linefit_baseline(
    data_dir: str | Path,
    mode: str,
    *,
    subsets_dir: str | Path | None = None,
    labels: str | None = None,
    seed: int = 1,
    split: str = "test",
    config: RefineConfig | None = None,
    n_bootstrap: int = 200,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Run one baseline cell and score it on ``split``: an evaluation record like a fine-tuning cell's.

    ``linefit`` uses no labels (``n_labels`` 0). ``linefit_refined`` trains on the train part of seed
    ``seed``'s subset ``labels`` and picks its rounds on that subset's validation part
    (:func:`physfm.finetune.subsets.load_split`): ``n_labels`` is the whole budget, train + validation.
    The record holds ``mode, labels, n_labels, seed, task, split, metrics, std, budget, train``.
    """
    from physfm.finetune.subsets import load_split, subset_info

    if mode not in MODES:
        raise ValueError(f"LineFit baseline mode must be one of {MODES}, got '{mode}'")
    cfg = config or RefineConfig()
    manifest = load_manifest(data_dir)
    test = read_pulses(data_dir, split)
    record: dict[str, Any] = {"mode": mode, "seed": int(seed), "task": "direction", "split": split}
    if mode == "linefit":
        pred, fit = predict_linefit(test, cfg.min_pulses)
        record.update(labels="0", n_labels=0, budget={"n": 0, "n_train": 0, "n_val": 0, "protocol": None})
        record["train"] = {"no_fit": int((~fit.valid).sum()), "used_auxiliary": int(fit.used_auxiliary.sum())}
    else:
        if subsets_dir is None or labels is None:
            raise ValueError("linefit_refined needs a subsets directory and a label spec (its label budget)")
        train_idx, val_idx = load_split(subsets_dir, labels, seed, data_dir)
        model = RefinedLineFit(cfg, seed=seed, threads=threads).fit(
            read_pulses(data_dir, "train", train_idx),
            read_pulses(data_dir, "train", val_idx) if len(val_idx) else None,
        )
        pred = model.predict(test)
        info = subset_info(subsets_dir, labels, seed)
        record.update(labels=str(labels), n_labels=int(info["n"]), budget=info)
        record["train"] = {**model.params(), "val_history_deg": model.history}
    metrics, std = direction_scores(pred, test, n_bootstrap, seed)
    record.update(
        data_version=manifest["data_version"],
        classes=[],
        lower_is_better=True,
        n_events=metrics["n_events"],
        metrics=metrics,
        std=std,
        history=[],
    )
    return record
