"""The ``direction`` downstream task (IceCube): predict the unit vector an event comes from.

A head on the backbone's event embedding (:class:`physfm.finetune.model.PooledMLP`, pool ``cls`` or
``mean``) outputs a 3-vector, normalised to unit length; the loss and the validation score are the
angle between predicted and true direction (the Kaggle competition's metric: mean angular error; the
median is logged too). Truth comes from the dataset's event features ``dir_x, dir_y, dir_z``
(:mod:`physfm.data.icecube` convention: where the particle comes from). Everything else (label
subsets, modes, the loop, saving, evaluation) is the shared fine-tuning machinery
(:mod:`physfm.finetune.task`). Backbones pretrained with the PolarBERT objective also receive the DOM
ids as tokens (:func:`physfm.models.polarbert.uses_dom_tokens`).

With ``finetune.head.inputs: [linefit]`` (:mod:`physfm.finetune.head_inputs`) the head also reads
LineFit's direction and pulse statistics and predicts a correction to LineFit's direction
(``normalise(linefit + MLP(state, side inputs))``, the last layer zero at the start: an untrained head
is LineFit).

A saved model is a directory with ``direction.safetensors`` and ``direction.json`` (no pickle).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physfm.data.dataset import Dataset, open_dataset
from physfm.data.shards import DataError
from physfm.features import ICECUBE_DEFAULT
from physfm.finetune.model import PooledMLP, side_norm
from physfm.finetune.task import Inputs, Scoring, Task
from physfm.models.backbone import BackboneConfig

KIND = "physfm-direction"
TARGET = ("dir_x", "dir_y", "dir_z")
WEIGHTS = "direction.safetensors"
META = "direction.json"
POOLS = ("cls", "mean")
#: The side columns (of the ``linefit`` head input) a head seeded by LineFit starts from.
SEED_COLUMNS = ("lf_dir_x", "lf_dir_y", "lf_dir_z")


# --------------------------------------------------------------------------- loss and metrics
def angular_error(pred: Tensor, truth: Tensor, eps: float = 1e-7) -> Tensor:
    """Angle (rad) between rows of ``pred`` (any non-zero vectors) and ``truth``; differentiable.

    ``acos`` of the clamped cosine: exact up to ~1e-3 rad at 0 and pi, where the clamp keeps the
    gradient finite.
    """
    cos = F.cosine_similarity(pred.float(), truth.float(), dim=-1, eps=1e-12)
    return torch.acos(cos.clamp(-1.0 + eps, 1.0 - eps))


def angular_loss(pred: Tensor, truth: Tensor) -> Tensor:
    """Mean angular error (rad): the training loss of the direction task."""
    return angular_error(pred, truth).mean()


def angles_deg(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Angular errors in degrees, computed accurately (atan2 of |a x b| and a . b)."""
    from physfm.data.icecube import angular_distance

    return np.degrees(angular_distance(pred, truth))


def direction_metrics(
    pred: np.ndarray, truth: np.ndarray, n_bootstrap: int = 200, seed: int = 0
) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, bootstrap std): mean, median and 68 % quantile of the angular error in degrees.

    Lower is better. A perfect prediction gives 0, a random direction 90 (mean) on average.
    """
    err = angles_deg(pred, truth)
    stats = {
        "mean_angular_error_deg": np.mean,
        "median_angular_error_deg": np.median,
        "q68_angular_error_deg": lambda e: np.quantile(e, 0.68),
    }
    metrics = {k: float(f(err)) for k, f in stats.items()}
    metrics["n_events"] = int(len(err))
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in stats}
    for _ in range(n_bootstrap if len(err) > 1 else 0):
        e = err[rng.integers(0, len(err), len(err))]
        for k, f in stats.items():
            draws[k].append(f(e))
    std = {k: float(np.std(v)) if v else 0.0 for k, v in draws.items()}
    return metrics, std


def direction_truth(data_dir: Dataset | str | Path, events: np.ndarray) -> np.ndarray:
    """``(N, 3)`` unit direction vectors from a dataset's event features."""
    names = open_dataset(data_dir).feature_names("event")
    missing = [t for t in TARGET if t not in names]
    if missing:
        raise DataError(
            f"{data_dir} has no event features {missing}: the direction task needs an IceCube dataset "
            "(physfm convert --format kaggle|prometheus)"
        )
    d = events[:, [names.index(t) for t in TARGET]].astype(np.float64)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


class DirectionTask(Task):
    """Unit direction vectors from the event features ``dir_x, dir_y, dir_z``; angular errors in degrees."""

    name = "direction"
    kind = KIND
    files = (WEIGHTS, META)
    val_keys = ("val_loss", "val_median_deg", "val_mean_deg")
    metric_labels: ClassVar[dict[str, str]] = {
        "mean_angular_error_deg": "mean angular error (deg)",  # IceCube direction (issue 6)
        "median_angular_error_deg": "median angular error (deg)",
    }
    lower_is_better = ("mean_angular_error_deg", "median_angular_error_deg")
    headline = "mean_angular_error_deg"
    default_features = ICECUBE_DEFAULT
    eval_keys = ("truth", "events", "event_key")

    def complete(self, ds: Dataset, inp: Inputs, whole: bool) -> Inputs:
        inp["truth"] = direction_truth(ds, inp["events"])  # float64, for the test metrics
        inp["target"] = inp["truth"].astype(np.float32)
        return inp

    def head_meta(self, head: Any) -> dict[str, Any]:
        if head.pool not in POOLS:
            raise ValueError(f"direction head pool must be one of {POOLS}, got '{head.pool}'")
        meta = {"pool": head.pool, "hidden": head.hidden, "dropout": head.dropout}  # always an MLP
        return {**meta, "inputs": list(head.inputs)} if head.inputs else meta

    def head(self, backbone_config: BackboneConfig, head: dict[str, Any]) -> nn.Module:
        """The direction MLP; with the ``linefit`` head input, a correction to LineFit's direction."""
        if head["pool"] not in POOLS:
            raise ValueError(f"direction head pool '{head['pool']}' is not one of {POOLS}")
        side = side_norm(head)
        seed = [side.columns.index(c) for c in SEED_COLUMNS] if side and "linefit" in head["inputs"] else []
        return PooledMLP(backbone_config, 3, head["pool"], head["hidden"], head["dropout"], True, side, seed)

    def loss(self, out: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return angular_loss(out, target)

    def validate(self, out: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
        err = angular_error(out.cpu(), target.cpu())
        mean = float(err.mean())
        return {
            "val_loss": mean,
            "val_median_deg": math.degrees(float(err.median())),
            "val_mean_deg": math.degrees(mean),
        }

    def evaluate(self, out: np.ndarray, inp: Inputs, ds: Dataset, how: Scoring) -> tuple[dict[str, Any], Inputs]:
        """Angular-error metrics with bootstrap errors; also per event type when the data has ``is_track``."""
        truth = inp["truth"]
        metrics, std = direction_metrics(out, truth, how.n_bootstrap, how.seed)
        enames = ds.feature_names("event")
        if "is_track" in enames:
            track = inp["events"][:, enames.index("is_track")] > 0.5
            for name, sel in (("tracks", track), ("cascades", ~track)):
                if sel.sum() > 1:
                    m, s = direction_metrics(out[sel], truth[sel], how.n_bootstrap, how.seed)
                    metrics.update({f"{k}_{name}": v for k, v in m.items()})
                    std.update({f"{k}_{name}": v for k, v in s.items()})
        record = {"lower_is_better": True, "n_events": metrics["n_events"], "lower_bounds": [], "metrics": metrics}
        record["std"] = std
        return record, {"pred": out.astype(np.float32), "truth": truth, "event_key": inp["event_key"]}
