"""Evaluating a fine-tuned model (any task) on a held-out split, and embedding a split with a backbone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physfm.data.dataset import Dataset, open_dataset
from physfm.data.loader import BLOCK_EVENTS, iter_arrays, rechunk
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
    index: str = "auto"  # faiss index: auto (flat below approximate_above, else ivf), flat (exact), hnsw, ivf
    approximate_above: int = 100_000  # auto: an approximate (IVF) index from this many events, its recall measured
    max_events: int = 20000  # events embedded per split
    normalize: bool = True  # L2-normalise the embeddings


def predict(
    model_dir: str | Path,
    data_dir: Dataset | str | Path,
    split: str = "test",
    batch_size: int = 256,
    device: str = "auto",
    block_events: int = BLOCK_EVENTS,
    sources: Any = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], Any, dict[str, Any]]:
    """``(outputs, arrays, task, meta)`` of a fine-tuned model of any task on a split: the model's raw
    outputs (logits, directions, values, per-particle logits), the arrays its task's
    :meth:`~physfm.finetune.task.Task.evaluate` reads (``task.eval_keys``), the
    :class:`physfm.finetune.task.Task` and the model's meta. Streamed (:func:`predict_split`). A head with
    side inputs (meta ``head.inputs``) gets them rebuilt for the split, from ``sources``
    (:class:`physfm.finetune.head_inputs.Sources`: caches; default computed from the data)."""
    from physfm.finetune.model import load_model
    from physfm.runtime import device_of

    model, task, meta = load_model(model_dir)
    ds = open_dataset(data_dir, verify=True)
    task.check(ds, meta)
    dev = device_of(device)
    model.to(dev)
    inputs = meta.get("head", {}).get("inputs") or []
    out, kept = predict_split(model, task, ds, split, meta["backbone"], batch_size, dev, block_events, inputs, sources)
    return out, kept, task, meta


def predict_split(
    model: Any,
    task: Any,
    ds: Dataset,
    split: str,
    bmeta: dict[str, Any],
    batch_size: int,
    device: torch.device,
    block_events: int = BLOCK_EVENTS,
    side_inputs: Sequence[str] = (),
    sources: Any = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``model`` on a whole split, read in blocks of at most ``block_events`` events
    (:meth:`~physfm.finetune.task.Task.iter_inputs`): the outputs and the task's ``eval_keys`` arrays,
    equal to running it on ``task.inputs(ds, split, bmeta, None)`` at once (the blocks are regrouped so
    the batches are the same), while memory holds one block's padded inputs plus those per-event arrays.
    ``side_inputs``: the head's side inputs (:mod:`physfm.finetune.head_inputs`), read once for the split
    (from ``sources``) and given to each block's events."""
    from physfm.finetune import head_inputs
    from physfm.finetune.model import batched

    chunk = batch_size * max(1, block_events // batch_size)
    outs: list[np.ndarray] = []
    kept: list[dict[str, np.ndarray]] = []
    side = head_inputs.table(side_inputs, ds, split, None, sources or head_inputs.Sources()) if side_inputs else None
    for inp in rechunk(task.iter_inputs(ds, split, bmeta, block_events), chunk):
        s = None if side is None else head_inputs.lookup(*side, inp["event_key"])
        outs.append(batched(model, inp["x"], inp["mask"], bmeta, batch_size, device, tokens=inp.get("tokens"), side=s))
        kept.append({k: inp[k] for k in task.eval_keys})
        del inp
    if not outs:
        raise ValueError(f"split '{split}' of {ds.path} has no events to evaluate")
    # C order whatever the blocks' layout (a one-event block is both C and F), so the file is the same bytes
    arrays = {k: np.ascontiguousarray(np.concatenate([p[k] for p in kept])) for k in task.eval_keys}
    return np.concatenate(outs), arrays


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
    block_events: int = BLOCK_EVENTS,
    sources: Any = None,
) -> dict[str, Any]:
    """Test metrics of a fine-tuned model of any task on ``split`` with bootstrap errors, plus the cell it
    belongs to: the evaluation record the report reads (``metrics``, ``std``, ``n_events``, ... from the
    task's :meth:`~physfm.finetune.task.Task.evaluate`). ``pairs``/``effs``: classification only. The split is
    read ``block_events`` at a time (:func:`predict_split`): memory is flat in its size but for the
    per-event outputs and targets. ``sources``: where a head's side inputs are cached (:func:`predict`)."""
    from physfm.finetune.task import Scoring

    ds = open_dataset(data_dir, verify=True)
    out, inp, task, meta = predict(model_dir, ds, split, block_events=block_events, sources=sources)
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
        "backbone_data_version": meta["backbone"].get("data_version"),  # the backbone's pretraining corpus
        "test_data_version": ds.data_version,  # the set scored (another set's, for a cross-set evaluation)
        "backbone_source": meta["backbone"].get("source"),  # directory or models:/ URI (backbone_source)
        "input_fill": meta["backbone"].get("input_fill"),  # inputs the data lacks and how they were filled
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
    features = list(bmeta["features"])
    with_dom = uses_dom_tokens(bmeta)  # PolarBERT backbones also embed the sensor ids
    names = features + ([DOM_FEATURE] if with_dom else [])
    ds = open_dataset(data_dir)
    embs, labels, keys = [], [], []
    # in blocks: memory is the block's padded arrays plus the (N, d) embeddings, whatever the split's size
    stop = None if indices is not None else max_events
    for arrays in iter_arrays(ds, split, features=names, max_len=bmeta["max_len"], indices=indices, stop=stop):
        tokens = None
        if with_dom:
            n_doms = int(bmeta["config"]["vocab_size"]) - 1
            tokens = dom_tokens(arrays["x"][..., len(features)], arrays["mask"], n_doms)
        x = arrays["x"][..., : len(features)]
        embs.append(batched(model.embed, x, arrays["mask"], bmeta, batch_size, dev, tokens=tokens))
        labels.append(arrays["label"])
        keys.append(arrays["event_key"])
    if not embs:
        raise ValueError(f"split '{split}' of {ds.path} has no events to embed")
    emb, label, event_key = np.concatenate(embs), np.concatenate(labels), np.concatenate(keys)
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
    return emb, label, event_key, meta
