"""The ``regression`` task: one event quantity computed from *all* the event's particles.

The target is a :data:`physfm.features.GLOBAL_TARGETS` quantity (jets: ``log_mass``, ``log_pt``,
``log_multiplicity``; IceCube: ``log10_qtot``), computed from every stored particle, not only the
``max_len`` the backbone reads, so it is a real regression target and not a copy of its inputs.
Task spec ``regression:<target>`` (default ``log_mass``, the log jet mass). The head is
:class:`physfm.finetune.model.Head` with one output; the loss is the mean squared error of the
target standardised with the mean/std of the budget's train part (recorded in the model's meta);
validation score that MSE. Test metrics (target units): RMSE, MAE, bias, the resolution (std of the
residuals) and the 68 % half-width of the residuals, with bootstrap errors; lower is better.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from physfm.data.dataset import Dataset
from physfm.data.loader import BLOCK_EVENTS, iter_arrays, load_arrays, open_split
from physfm.data.shards import DataError
from physfm.features import GLOBAL_TARGETS, JET_DEFAULT
from physfm.finetune.task import Inputs, Scoring, Task, iter_inputs, load_inputs
from physfm.models.backbone import BackboneConfig

DEFAULT_TARGET = "log_mass"
STATS = ("rmse", "mae", "bias", "resolution", "q68")


def residual_stats(residual: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, bias (mean), resolution (std) and half-width of the central 68 % of ``residual``."""
    r = np.asarray(residual, dtype=np.float64)
    lo, hi = np.quantile(r, [0.16, 0.84]) if len(r) else (np.nan, np.nan)
    return {
        "rmse": float(np.sqrt(np.mean(r**2))),
        "mae": float(np.mean(np.abs(r))),
        "bias": float(np.mean(r)),
        "resolution": float(np.std(r)),
        "q68": float((hi - lo) / 2),
    }


class RegressionTask(Task):
    """Regress ``target`` (a name of :data:`physfm.features.GLOBAL_TARGETS`) per event."""

    name = "regression"
    val_keys = ("val_loss", "val_rmse")
    metric_labels: ClassVar[dict[str, str]] = {"rmse": "RMSE of the target", "resolution": "resolution of the target"}
    lower_is_better = ("rmse", "mae", "resolution", "q68")
    headline = "rmse"
    default_features = JET_DEFAULT
    eval_keys = ("truth", "event_key")

    def __init__(self, target: str = DEFAULT_TARGET, mean: float = 0.0, std: float = 1.0) -> None:
        if target not in GLOBAL_TARGETS:
            raise ValueError(f"unknown regression target '{target}'; choose from {sorted(GLOBAL_TARGETS)}")
        self.target, self.mean, self.std = target, float(mean), float(std)

    @classmethod
    def for_dataset(cls, ds: Dataset, option: str | None = None) -> Task:
        task = cls(option or DEFAULT_TARGET)
        stored = set(ds.feature_names("particle")) | {"event_log10_qtot"}
        if missing := [f for f in GLOBAL_TARGETS[task.target].features if f not in stored]:
            raise DataError(f"{ds.path} lacks the particle columns {missing} that target '{task.target}' needs")
        return task

    def to_meta(self) -> dict[str, Any]:
        return {"task": self.name, "classes": [], "target": {"name": self.target, "mean": self.mean, "std": self.std}}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Task:
        t = meta["target"]
        return cls(t["name"], t["mean"], t["std"])

    def truth(self, ds: Dataset, split: str, indices: np.ndarray | None, n_particles: np.ndarray) -> np.ndarray:
        """The target of each event from all its particles (read with ``max_len`` = its longest event)."""
        longest = max(int(n_particles.max()) if len(n_particles) else 1, 1)
        return self.truth_of(load_arrays(ds, split, self.truth_columns(), max_len=longest, indices=indices))

    def truth_columns(self) -> list[str] | None:
        """The particle columns the target reads (None: all stored ones)."""
        return list(GLOBAL_TARGETS[self.target].features) or None

    def truth_of(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        """The target of padded :meth:`truth_columns` arrays (``x``, ``mask``)."""
        spec = GLOBAL_TARGETS[self.target]
        cols = {name: raw["x"][..., i] for i, name in enumerate(spec.features)}
        return spec.fn(cols, raw["mask"])

    def complete(self, ds: Dataset, inp: Inputs, whole: bool) -> Inputs:
        inp["target"] = ((inp["truth"] - self.mean) / self.std).astype(np.float32)
        return inp

    def inputs(
        self, ds: Dataset, split: str, bmeta: dict[str, Any], indices: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        inp = load_inputs(ds, split, bmeta, indices)
        inp["truth"] = self.truth(ds, split, indices, inp["n_particles"])
        return self.complete(ds, inp, indices is None)

    def iter_inputs(
        self, ds: Dataset, split: str, bmeta: dict[str, Any], block_events: int = BLOCK_EVENTS
    ) -> Iterator[Inputs]:
        """Blocks of the split with the target read beside them, padded to the split's longest event as
        :meth:`inputs` pads it (so the sums, and the record, are the same)."""
        longest = max(open_split(ds, split).max_particles(), 1)
        raws = iter_arrays(ds, split, self.truth_columns(), max_len=longest, block_events=block_events)
        for inp, raw in zip(iter_inputs(ds, split, bmeta, (), block_events), raws, strict=True):
            inp["truth"] = self.truth_of(raw)
            yield self.complete(ds, inp, True)

    def fit(self, train: dict[str, np.ndarray]) -> None:
        """Standardise with the train part's mean and std (refitting ``target`` from ``truth``)."""
        y = train["truth"]
        self.mean, self.std = float(y.mean()), float(y.std()) if float(y.std()) > 0 else 1.0
        train["target"] = ((y - self.mean) / self.std).astype(np.float32)

    def head(self, backbone_config: BackboneConfig, head: dict[str, Any]) -> nn.Module:
        from physfm.finetune.model import Head

        return Head.from_meta(backbone_config, 1, head)

    def loss(self, out: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return F.mse_loss(out.float().squeeze(-1), target)

    def validate(self, out: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
        mse = float(F.mse_loss(out.float().squeeze(-1), target))
        return {"val_loss": mse, "val_rmse": self.std * mse**0.5}

    def evaluate(self, out: np.ndarray, inp: Inputs, ds: Dataset, how: Scoring) -> tuple[dict[str, Any], Inputs]:
        pred = out.reshape(-1).astype(np.float64) * self.std + self.mean
        residual = pred - inp["truth"]
        metrics: dict[str, Any] = residual_stats(residual)
        rng = np.random.default_rng([how.seed, 0xB007])
        draws = [
            residual_stats(residual[rng.integers(0, len(residual), len(residual))]) for _ in range(how.n_bootstrap)
        ]
        std = {k: float(np.std([d[k] for d in draws])) if len(draws) > 1 else float("nan") for k in STATS}
        metrics["n_events"] = int(len(residual))
        edges = np.quantile(residual, np.linspace(0, 1, 21)) if len(residual) else np.zeros(0)
        record = {
            "target": self.target,
            "lower_is_better": True,
            "n_events": int(len(residual)),
            "lower_bounds": [],
            "metrics": metrics,
            "std": std,
            "residuals": {"quantiles": edges.tolist()},  # the report's residual distribution
        }
        return record, {"pred": pred, "truth": inp["truth"], "event_key": inp["event_key"]}
