"""Evaluating a fine-tuned model (any task) on a held-out split, and embedding a split with a backbone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physfm.data.dataset import Dataset, open_dataset
from physfm.data.loader import load_arrays
from physfm.evaluate.metrics import DEFAULT_EFFS, DEFAULT_PAIRS
from physfm.io import atomic_path


@dataclass
class EvaluateConfig:
    """Settings of the ``evaluate`` stage (config keys ``evaluate.split``, ``bootstrap``, ``pairs``, ``effs``)."""

    split: str = "test"  # held-out split the models are scored on
    bootstrap: int = 200  # test-set resamples per run
    pairs: list[str] = field(default_factory=lambda: ["Tbqq:QCD"])  # signal:background for AUC and 1/eB
    effs: list[float] = field(default_factory=lambda: [0.5, 0.3])  # signal efficiencies of 1/eB


@dataclass
class EmbedConfig:
    """Settings of the ``embed`` stage (config section ``evaluate.knn``, less ``enabled``)."""

    k: int = 10  # neighbours of the k-NN probe
    index: str = "auto"  # faiss index: auto (by size), flat (exact), hnsw, ivf
    max_events: int = 20000  # events embedded per split
    normalize: bool = True  # L2-normalise the embeddings


def predict(
    model_dir: str | Path,
    data_dir: Dataset | str | Path,
    split: str = "test",
    batch_size: int = 256,
    device: str = "auto",
) -> tuple[np.ndarray, dict[str, np.ndarray], Any, dict[str, Any]]:
    """``(outputs, inputs, task, meta)`` of a fine-tuned model of any task on a split: the model's raw
    outputs (logits, directions, values, per-particle logits), the task's inputs and targets, its
    :class:`physfm.finetune.task.Task` and the model's meta."""
    from physfm.finetune.model import batched, load_model
    from physfm.runtime import device_of

    model, task, meta = load_model(model_dir)
    ds = open_dataset(data_dir, verify=True)
    task.check(ds, meta)
    dev = device_of(device)
    model.to(dev)
    inp = task.inputs(ds, split, meta["backbone"], None)
    out = batched(model, inp["x"], inp["mask"], meta["backbone"], batch_size, dev, tokens=inp.get("tokens"))
    return out, inp, task, meta


def evaluate_model(
    model_dir: str | Path,
    data_dir: Dataset | str | Path,
    split: str = "test",
    *,
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    effs: Sequence[float] = DEFAULT_EFFS,
    n_bootstrap: int = 200,
    seed: int = 0,
    predictions: str | Path | None = None,
) -> dict[str, Any]:
    """Test metrics of a fine-tuned model of any task on ``split`` with bootstrap errors, plus the cell it
    belongs to: the evaluation record the report reads (``metrics``, ``std``, ``n_events``, ... from the
    task's :meth:`~physfm.finetune.task.Task.evaluate`). ``pairs``/``effs``: classification only."""
    from physfm.finetune.task import Scoring

    ds = open_dataset(data_dir, verify=True)
    out, inp, task, meta = predict(model_dir, ds, split)
    how = Scoring(n_bootstrap=n_bootstrap, seed=seed, pairs=tuple(pairs), effs=tuple(effs))
    result, arrays = task.evaluate(out, inp, ds, how)
    if predictions is not None:
        with atomic_path(predictions) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    cell = {k: meta.get(k) for k in ("mode", "labels", "n_labels", "seed", "run_id", "data_version")}
    cell.update(meta.get("cell", {}))
    return {
        **cell,
        "task": task.name,
        "split": split,
        "classes": meta.get("classes", []),
        "model_dir": str(model_dir),
        "subset_digest": meta["subset"]["digest"],
        "backbone_objective": meta["backbone"].get("objective"),
        "tokenizer_version": meta["backbone"].get("tokenizer_version"),
        "backbone_version": meta["backbone"].get("backbone_version"),
        "train": meta["train"],
        "history": meta.get("history", []),
        "search": meta.get("search"),  # the in-budget hyperparameter search (physfm/finetune/search.py)
        **result,
    }


def load_embedder(backbone_dir: str | Path, random_init_seed: int | None = None) -> tuple[Any, dict[str, Any]]:
    """A backbone and its meta for embedding; ``random_init_seed``: same architecture, random weights
    (the baseline a pretrained representation should beat)."""
    from physfm.models.backbone import Backbone, BackboneConfig
    from physfm.pretrain.checkpoints import load_backbone

    model, bmeta = load_backbone(backbone_dir, map_location="cpu")
    if random_init_seed is not None:
        torch.manual_seed(random_init_seed)
        model = Backbone(BackboneConfig.from_dict(bmeta["config"]))
    bmeta = {**bmeta, "backbone_dir": str(backbone_dir), "random_init": random_init_seed is not None}
    return model.eval(), bmeta


def embed_split(
    model: Any,
    bmeta: dict[str, Any],
    data_dir: Dataset | str | Path,
    split: str,
    *,
    batch_size: int = 256,
    device: str = "auto",
    max_events: int | None = None,
    indices: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """``(embeddings, labels, event_keys, meta)`` of a split (the first ``max_events``, or the events at
    ``indices`` of its stored order) from ``model.embed``."""
    from physfm.finetune.model import batched
    from physfm.models.polarbert import DOM_FEATURE, dom_tokens, uses_dom_tokens
    from physfm.runtime import device_of

    dev = device_of(device)
    model.to(dev).eval()
    if indices is None and max_events is not None:
        indices = np.arange(max_events)
    features = list(bmeta["features"])
    with_dom = uses_dom_tokens(bmeta)  # PolarBERT backbones also embed the sensor ids
    names = features + ([DOM_FEATURE] if with_dom else [])
    ds = open_dataset(data_dir)
    arrays = load_arrays(ds, split, features=names, max_len=bmeta["max_len"], indices=indices)
    tokens = None
    if with_dom:
        n_doms = int(bmeta["config"]["vocab_size"]) - 1
        tokens = dom_tokens(arrays["x"][..., len(features)], arrays["mask"], n_doms)
    x = arrays["x"][..., : len(features)]
    emb = batched(model.embed, x, arrays["mask"], bmeta, batch_size, dev, tokens=tokens)
    manifest = ds.manifest
    meta = {
        "backbone_dir": bmeta.get("backbone_dir"),
        "random_init": bool(bmeta.get("random_init")),
        "objective": bmeta.get("objective"),
        "backbone_data_version": bmeta.get("data_version"),
        "backbone_version": bmeta.get("backbone_version"),
        "tokenizer_version": bmeta.get("tokenizer_version"),
        "data_version": manifest["data_version"],
        "split": split,
        "classes": manifest["classes"],
    }
    return emb, arrays["label"], arrays["event_key"], meta
