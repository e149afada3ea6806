"""Label-cheap probes of a frozen embedding: collapse numbers and k-NN accuracy at a small label budget.

* :func:`collapse_numbers` (label-free): the effective rank (Roy & Vetterli 2007) and the uniformity
  (Wang & Isola 2020) of the embeddings of held-out events, from :mod:`physfm.models.diagnostics`.
  A collapsed representation has uniformity near 0 (the rank is scale-free: a collapse to one point plus
  tiny jitter keeps a high rank, so read both) and a low-dimensional one a small effective rank; a
  random-init backbone embedded the same way is the reference a pretrained one is read against.
* :func:`knn_at_budget`: the k-NN accuracy of the test events against the *labelled subset* of ``n``
  events that fine-tuning with ``n`` labels reads (:mod:`physfm.finetune.subsets`, same seed, same
  events). The budget is counted like every other label use: the reference holds all ``n`` events
  (train part + validation part; nothing is chosen on them, ``k`` is fixed by the configuration), so
  the record's ``n_labels`` is ``n``, never the size of the train split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physfm.data.dataset import Dataset
from physfm.evaluate.search import EmbeddingIndex, build_index, knn_accuracy, l2_normalize
from physfm.models.diagnostics import effective_rank, uniformity

#: Events the collapse numbers use (uniformity is quadratic in the number of events).
COLLAPSE_EVENTS = 2000


def collapse_numbers(emb: np.ndarray, max_events: int = COLLAPSE_EVENTS) -> dict[str, float]:
    """``effective_rank`` (of the centred embeddings, in [1, min(n, d)]), ``uniformity`` (t = 2, of the
    L2-normalised embeddings, in [-4, 0]), the embedding ``dim`` and the number of events ``n`` used
    (the first ``max_events``: the split's stored order is already a fixed sample)."""
    x = torch.as_tensor(np.asarray(emb[:max_events], dtype=np.float32))
    if len(x) < 2:
        raise ValueError(f"collapse numbers need at least two embedded events, got {len(x)}")
    return {
        "effective_rank": float(effective_rank(x)),
        "uniformity": float(uniformity(x)),
        "dim": int(x.shape[1]),
        "n": int(len(x)),
    }


def memory_index(emb: np.ndarray, labels: np.ndarray, meta: dict[str, Any], normalize: bool) -> EmbeddingIndex:
    """An exact (flat) :class:`EmbeddingIndex` held in memory, for a small labelled reference set."""
    e = l2_normalize(emb) if normalize else np.ascontiguousarray(emb, dtype=np.float32)
    index, params = build_index(e, "flat")
    meta = {**meta, "normalize": normalize, "index": params}
    keys = np.arange(len(labels), dtype=np.uint64)
    return EmbeddingIndex(Path("<memory>"), e, np.asarray(labels, dtype=np.int64), keys, index, meta)


def knn_at_budget(
    model: Any,
    bmeta: dict[str, Any],
    data: Dataset | str | Path,
    subsets_dir: str | Path,
    specs: Sequence[str],
    seeds: Sequence[int],
    queries: EmbeddingIndex,
    *,
    k: int = 10,
    normalize: bool = True,
) -> list[dict[str, Any]]:
    """One record per (label spec, seed): the k-NN accuracy of ``queries`` against that seed's subset.

    Each record holds ``labels`` (the spec), ``n_labels`` (the budget: every event of the subset),
    ``seed``, ``k`` (``min(k, n)``), ``accuracy`` and the subset's ``digest``.
    """
    from physfm.evaluate.evaluate import embed_split
    from physfm.finetune.subsets import load_split, subset_info

    out = []
    for spec in specs:
        for seed in seeds:
            train, val = load_split(subsets_dir, spec, seed, data)
            rows = np.sort(np.concatenate([train, val]))
            emb, labels, _, meta = embed_split(model, bmeta, data, "train", indices=rows)
            reference = memory_index(emb, labels, meta, normalize)
            kk = min(k, len(rows))
            info = subset_info(subsets_dir, spec, seed)
            out.append(
                {
                    "labels": str(spec),
                    "n_labels": int(len(rows)),
                    "seed": int(seed),
                    "k": kk,
                    "accuracy": knn_accuracy(reference, queries.embeddings, queries.labels, k=kk),
                    "digest": info["digest"],
                }
            )
    return out
