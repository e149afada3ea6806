"""The ``classification`` task: jet (or event) classes from the dataset's labels.

Head :class:`physfm.finetune.model.Head` (pool ``cls``/``mean``/``sum``, ``linear`` or ``mlp``),
cross-entropy loss, validation score the cross-entropy (accuracy logged beside it), test metrics
from :func:`physfm.evaluate.metrics.evaluate_scores` (accuracy, one-vs-rest AUC, per-pair AUC and
background rejection, ROC curves). A saved model is ``classifier.safetensors`` + ``classifier.json``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physfm.data.dataset import Dataset
from physfm.data.shards import DataError
from physfm.features import JET_DEFAULT
from physfm.finetune.task import Inputs, Scoring, Task
from physfm.models.backbone import BackboneConfig


class ClassificationTask(Task):
    """Classes of the dataset (``classes``); events without a label (``-1``) are not scored."""

    name = "classification"
    kind = "physfm-classifier"
    files = ("classifier.safetensors", "classifier.json")
    val_keys = ("val_loss", "val_accuracy")
    metric_labels: ClassVar[dict[str, str]] = {"accuracy": "accuracy", "auc": "ROC AUC (one-vs-rest mean)"}
    headline = "auc"
    default_features = JET_DEFAULT
    eval_keys = ("label", "event_key")

    def __init__(self, classes: list[str]) -> None:
        if len(classes) < 2:
            raise DataError(f"classification needs at least two classes, got {classes}")
        self.classes = list(classes)

    @classmethod
    def for_dataset(cls, ds: Dataset, option: str | None = None) -> Task:
        if len(ds.classes) < 2:
            raise DataError(f"{ds.path} has {len(ds.classes)} class(es); classification needs at least two")
        return cls(list(ds.classes))

    def to_meta(self) -> dict[str, Any]:
        return {"task": self.name, "classes": self.classes}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Task:
        return cls(list(meta["classes"]))

    def complete(self, ds: Dataset, inp: Inputs, whole: bool) -> Inputs:
        if whole:  # a whole split: score the labelled events only
            keep = inp["label"] >= 0
            inp = {k: v[keep] for k, v in inp.items()}
        inp["target"] = inp["label"].astype(np.int64)
        return inp

    def head(self, backbone_config: BackboneConfig, head: dict[str, Any]) -> nn.Module:
        from physfm.finetune.model import Head

        return Head.from_meta(backbone_config, len(self.classes), head)

    def loss(self, out: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return F.cross_entropy(out, target)

    def validate(self, out: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
        return {
            "val_loss": float(F.cross_entropy(out, target)),
            "val_accuracy": float((out.argmax(1) == target).float().mean()),
        }

    def check(self, ds: Dataset, meta: dict[str, Any]) -> None:
        if list(ds.classes) != self.classes:
            raise DataError(f"{ds.path} has classes {ds.classes}, the classifier was trained on {self.classes}")

    def evaluate(self, out: np.ndarray, inp: Inputs, ds: Dataset, how: Scoring) -> tuple[dict[str, Any], Inputs]:
        from physfm.evaluate.metrics import DEFAULT_EFFS, DEFAULT_PAIRS, evaluate_scores

        probs = torch.softmax(torch.from_numpy(out).float(), dim=1).numpy()
        result = evaluate_scores(
            probs,
            inp["label"],
            self.classes,
            pairs=DEFAULT_PAIRS if how.pairs is None else how.pairs,
            effs=DEFAULT_EFFS if how.effs is None else how.effs,
            n_bootstrap=how.n_bootstrap,
            seed=how.seed,
        )
        return result, {"probs": probs.astype(np.float32), "label": inp["label"], "event_key": inp["event_key"]}
