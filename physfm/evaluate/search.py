"""Embedding search: "find events like this" with faiss, and k-NN accuracy as a representation probe.

An embedding directory (written by :func:`write_embeddings`, ``physfm embed``) holds

* ``embeddings.npy`` (N, d) float32 (L2-normalised unless ``normalize=False``, so L2 distance ranks
  like cosine similarity), ``labels.npy`` (N,) int64, ``event_keys.npy`` (N,) uint64;
* ``index.faiss``: a faiss index over the embeddings (faiss's own binary format, no pickle);
* ``manifest.json`` (:mod:`physfm.artifacts`, kind ``embeddings``): input data, backbone and
  tokenizer versions, every file's sha256, and in ``info`` the meta: backbone, split, classes,
  index kind and parameters.

Index kinds: ``flat`` (exact; best below ~100k events), ``hnsw`` (graph, approximate, no training),
``ivf`` (inverted lists over k-means cells, approximate, trained; for many millions), ``auto``
picks flat below 100k events, HNSW below 5M, IVF above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from physfm.artifacts import input_versions, open_artifact, write_artifact
from physfm.io import atomic_dir

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")
EMBEDDINGS, LABELS, EVENT_KEYS, INDEX = "embeddings.npy", "labels.npy", "event_keys.npy", "index.faiss"


def _faiss() -> Any:
    import faiss

    return faiss


def resolve_kind(kind: str, n: int) -> str:
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind '{kind}' is not one of {', '.join(INDEX_KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if n < 100_000 else "hnsw" if n < 5_000_000 else "ivf"


def build_index(
    emb: np.ndarray,
    kind: str = "auto",
    *,
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 128,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """A faiss index holding ``emb`` (N, d) and the parameters used."""
    faiss = _faiss()
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = emb.shape
    kind = resolve_kind(kind, n)
    params: dict[str, Any] = {"kind": kind, "n": int(n), "d": int(d)}
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m)
        index.hnsw.efSearch = ef_search
        params.update(hnsw_m=hnsw_m, ef_search=ef_search)
    else:
        # faiss wants >= 39 training points per cell; 4*sqrt(N) cells is its usual rule of thumb
        nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist)
        index.cp.seed = seed
        index.train(emb)
        index.nprobe = min(nprobe, nlist)
        params.update(nlist=nlist, nprobe=index.nprobe)
    index.add(emb)
    return index, params


def l2_normalize(emb: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return (emb / np.maximum(norm, 1e-12)).astype(np.float32)


def write_embeddings(
    out_dir: str | Path,
    emb: np.ndarray,
    labels: np.ndarray,
    event_keys: np.ndarray,
    meta: dict[str, Any],
    *,
    kind: str = "auto",
    normalize: bool = True,
    seed: int = 0,
    **index_options: Any,
) -> dict[str, Any]:
    """Write an embedding directory (see module doc) atomically and return its meta."""
    faiss = _faiss()
    emb = l2_normalize(emb) if normalize else np.ascontiguousarray(emb, dtype=np.float32)
    index, params = build_index(emb, kind, seed=seed, **index_options)
    arrays = {
        EMBEDDINGS: emb,
        LABELS: np.asarray(labels, dtype=np.int64),
        EVENT_KEYS: np.asarray(event_keys, dtype=np.uint64),
    }
    meta = {**meta, "normalize": normalize, "index": params}
    with atomic_dir(out_dir) as tmp:
        for name, arr in arrays.items():
            with open(tmp / name, "wb") as f:
                np.save(f, arr, allow_pickle=False)
        faiss.write_index(index, str(tmp / INDEX))
        write_artifact(tmp, "embeddings", [*arrays, INDEX], input_versions(meta), info=meta)
    return meta


@dataclass
class EmbeddingIndex:
    """An embedding directory opened for search."""

    path: Path
    embeddings: np.ndarray
    labels: np.ndarray
    event_keys: np.ndarray
    index: Any
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.labels)

    def row_of(self, event_key: int) -> int:
        hits = np.flatnonzero(self.event_keys == np.uint64(event_key))
        if len(hits) == 0:
            raise KeyError(
                f"event {event_key} is not in {self.path} ({self.meta.get('split')} split, {len(self)} events); "
                "pass an event_key from that split, or --row N for the N-th event"
            )
        return int(hits[0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, rows)`` of the ``k`` nearest stored events of each query (L2 distance)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.meta.get("normalize"):
            q = l2_normalize(q)
        d2, rows = self.index.search(q, min(k, len(self)))
        return np.sqrt(np.maximum(d2, 0.0)), rows

    def neighbours(self, row: int, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` nearest events to stored event ``row`` (itself first), with labels and distances."""
        if not 0 <= row < len(self):
            raise ValueError(f"row {row} is out of range: the index holds {len(self)} events")
        dist, rows = self.search(self.embeddings[row : row + 1], k)
        classes = self.meta.get("classes") or []
        out = []
        for rank, (r, dd) in enumerate(zip(rows[0], dist[0], strict=True)):
            if r < 0:
                continue
            lab = int(self.labels[r])
            out.append(
                {
                    "rank": rank,
                    "row": int(r),
                    "event_key": int(self.event_keys[r]),
                    "label": classes[lab] if 0 <= lab < len(classes) else lab,
                    "distance": float(dd),
                }
            )
        return out


def open_index(path: str | Path) -> EmbeddingIndex:
    """Open an embedding directory after verifying it (:func:`physfm.artifacts.open_artifact`)."""
    artifact = open_artifact(path, "embeddings")
    load = lambda name: np.load(artifact.path / name, allow_pickle=False)  # noqa: E731
    index = _faiss().read_index(str(artifact.path / INDEX))
    return EmbeddingIndex(artifact.path, load(EMBEDDINGS), load(LABELS), load(EVENT_KEYS), index, artifact.info)


def knn_predict(
    index: EmbeddingIndex, queries: np.ndarray, k: int, n_classes: int, exclude_self: bool = False
) -> np.ndarray:
    """Majority vote of the ``k`` nearest labelled neighbours (votes weighted 1/(1+rank) break ties)."""
    kk = k + int(exclude_self)
    _, rows = index.search(queries, kk)
    if exclude_self:
        rows = rows[:, 1:]
    labels = np.where(rows >= 0, index.labels[np.maximum(rows, 0)], -1)
    weights = 1.0 / (1.0 + np.arange(labels.shape[1]) * 1e-3)  # nearest wins a tied vote
    votes = np.zeros((len(queries), n_classes))
    for j in range(labels.shape[1]):
        ok = labels[:, j] >= 0
        np.add.at(votes, (np.flatnonzero(ok), labels[ok, j]), weights[j])
    return votes.argmax(1)


def knn_accuracy(reference: EmbeddingIndex, queries: np.ndarray, query_labels: np.ndarray, k: int = 10) -> float:
    """Accuracy of k-NN classification of ``queries`` against the labelled ``reference`` index."""
    n_classes = len(reference.meta.get("classes") or []) or int(max(reference.labels.max(), query_labels.max()) + 1)
    keep = query_labels >= 0
    pred = knn_predict(reference, queries[keep], k, n_classes)
    return float(np.mean(pred == query_labels[keep]))
