"""The ``segmentation`` task: a class for every particle (LArTPC points: shower, track, Michel, ...).

The per-particle task of the interface: the head maps each real particle's final state to class
logits (:class:`ParticleHead`, an MLP), the loss is :func:`physfm.models.segmentation.segmentation_loss`
over the real particles (``mask``; padding never counts), the validation score that loss (accuracy
and macro F1 logged beside it), and the test metrics are :func:`physfm.evaluate.segmentation.segmentation_metrics`
(macro and per-class F1, accuracy, confusion matrix). Labels are a stored per-particle column
(task spec ``segmentation:<column>``, default ``semantic``), classes the LArTPC semantic classes.

Patch-based backbones (PolarMAE, :mod:`physfm.models.polarmae`) bring their own head
(:class:`physfm.models.segmentation.SegmentationHead`); this task is the same interface on the
per-particle backbone.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from physfm.data.dataset import Dataset
from physfm.data.shards import DataError
from physfm.finetune.task import Inputs, Scoring, Task
from physfm.models.backbone import BackboneConfig
from physfm.models.segmentation import segmentation_loss

DEFAULT_COLUMN = "semantic"


class ParticleHead(nn.Module):
    """Hidden states ``(B, n_cls + L, d)`` + mask -> per-particle logits ``(B, L, n_classes)``."""

    uses_class_token_only = False  # reads every particle's state

    def __init__(self, backbone_config: BackboneConfig, n_classes: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.bcfg = backbone_config
        d = backbone_config.d_model
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        from physfm.finetune.model import particle_states

        return self.mlp(particle_states(h, mask, self.bcfg)[0])


class SegmentationTask(Task):
    """Per-particle classes from the stored column ``column`` (values ``0 .. len(classes) - 1``)."""

    name = "segmentation"
    val_keys = ("val_loss", "val_accuracy", "val_macro_f1")
    metric_labels: ClassVar[dict[str, str]] = {
        "macro_f1": "macro-F1 (per point)",
        "seg_error": "segmentation error (1 - macro-F1)",
    }
    lower_is_better = ("seg_error",)
    headline = "macro_f1"
    default_features = ("x", "y", "z", "log_energy")
    eval_keys = ("mask", "target", "event_key")  # per-particle: (N, L) labels and mask, not the (N, L, F) inputs

    def __init__(self, classes: list[str], column: str = DEFAULT_COLUMN, gamma: float = 0.0) -> None:
        self.classes, self.column, self.gamma = list(classes), column, float(gamma)

    @classmethod
    def for_dataset(cls, ds: Dataset, option: str | None = None) -> Task:
        from physfm.data.lartpc import SEMANTIC_CLASSES

        column = option or DEFAULT_COLUMN
        if column not in ds.feature_names("particle"):
            raise DataError(f"{ds.path} has no per-particle column '{column}' to segment by")
        return cls(list(SEMANTIC_CLASSES), column)

    def to_meta(self) -> dict[str, Any]:
        return {"task": self.name, "classes": [], "particle_classes": self.classes, "column": self.column}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Task:
        return cls(meta["particle_classes"], meta["column"])

    def extra_columns(self) -> tuple[str, ...]:
        return (self.column,)

    def complete(self, ds: Dataset, inp: Inputs, whole: bool) -> Inputs:
        inp["target"] = inp.pop("extra")[..., 0].astype(np.int64)
        return inp

    def head_meta(self, head: Any) -> dict[str, Any]:
        if head.inputs:
            raise ValueError(f"head inputs {head.inputs} are per event; the per-particle segmentation head reads none")
        return {"hidden": head.hidden, "dropout": head.dropout}

    def head(self, backbone_config: BackboneConfig, head: dict[str, Any]) -> nn.Module:
        return ParticleHead(backbone_config, len(self.classes), head["hidden"], head["dropout"])

    def loss(self, out: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return segmentation_loss(out, target, mask, gamma=self.gamma)

    def validate(self, out: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
        from physfm.evaluate.segmentation import segmentation_metrics

        m = segmentation_metrics(target[mask].cpu().numpy(), out.argmax(-1)[mask].cpu().numpy(), self.classes)
        return {
            "val_loss": float(self.loss(out, target, mask)),
            "val_accuracy": m["accuracy"],
            "val_macro_f1": m["macro_f1"],
        }

    def evaluate(self, out: np.ndarray, inp: Inputs, ds: Dataset, how: Scoring) -> tuple[dict[str, Any], Inputs]:
        """Per-particle metrics; bootstrap errors resample events (particles of one event are correlated)."""
        from physfm.evaluate.segmentation import segmentation_metrics

        mask, pred = inp["mask"], out.argmax(-1)
        metrics = segmentation_metrics(inp["target"][mask], pred[mask], self.classes)
        rng = np.random.default_rng([how.seed, 0xB007])
        n = len(mask)
        draws = []
        for _ in range(how.n_bootstrap if n > 1 else 0):
            i = rng.integers(0, n, n)
            draws.append(segmentation_metrics(inp["target"][i][mask[i]], pred[i][mask[i]], self.classes))
        from physfm.evaluate.segmentation import flat_metrics

        scalar = flat_metrics(metrics)  # macro_f1, seg_error, accuracy, f1_<class>
        flat = [flat_metrics(d) for d in draws]
        std = {k: float(np.nanstd([d[k] for d in flat])) if flat else float("nan") for k in scalar}
        record = {
            "n_events": int(n),
            "lower_bounds": [],
            "metrics": {**scalar, "n_points": metrics["n_points"]},
            "std": std,
            "segmentation": {k: metrics[k] for k in ("f1", "confusion", "classes")},
        }
        return record, {
            "pred": pred.astype(np.int16),
            "label": inp["target"],
            "mask": mask,
            "event_key": inp["event_key"],
        }
