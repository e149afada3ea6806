"""Embedding search: "find events like this" with faiss, and k-NN accuracy as a representation probe.

An embedding directory (written by :func:`write_embeddings`, ``physfm embed``) holds

* ``embeddings.npy`` (N, d) float32 (L2-normalised unless ``normalize=False``, so L2 distance ranks
  like cosine similarity), ``labels.npy`` (N,) int64, ``event_keys.npy`` (N,) uint64;
* ``index.faiss``: a faiss index over the embeddings (faiss's own binary format, no pickle);
* ``manifest.json`` (:mod:`physfm.artifacts`, kind ``embeddings``): input data, backbone and
  tokenizer versions, every file's sha256, and in ``info`` the meta: backbone, split, classes,
  index kind and parameters.

Index kinds: ``flat`` (exact; best below ~100k events), ``hnsw`` (graph, approximate, no training),
``ivf`` (inverted lists over k-means cells, approximate, trained on a sample; for many millions),
``auto``: flat below ``approximate_above`` events (config ``evaluate.knn.approximate_above``,
default 100k), IVF from there. Every approximate index has its recall@k against exact search
measured on a sample of its own vectors (:func:`index_recall`), stored in the manifest's
``info.index`` (``recall_at_k``) and logged to MLflow by ``physfm embed``.
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


#: ``auto`` builds an exact index below this many vectors, an IVF index from there.
APPROXIMATE_ABOVE = 100_000
#: IVF cells are trained on at most this many points per cell (faiss's own default is 256).
TRAIN_PER_CELL = 64
#: Queries of the recall measurement, and the blocks :func:`knn_accuracy` searches in.
RECALL_QUERIES, QUERY_BLOCK = 1000, 4096


def resolve_kind(kind: str, n: int, approximate_above: int = APPROXIMATE_ABOVE) -> str:
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind '{kind}' is not one of {', '.join(INDEX_KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if n < approximate_above else "ivf"


def build_index(
    emb: np.ndarray,
    kind: str = "auto",
    *,
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 128,
    seed: int = 0,
    approximate_above: int = APPROXIMATE_ABOVE,
) -> tuple[Any, dict[str, Any]]:
    """A faiss index holding ``emb`` (N, d) and the parameters used."""
    faiss = _faiss()
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = emb.shape
    kind = resolve_kind(kind, n, approximate_above)
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
        n_train = min(n, TRAIN_PER_CELL * nlist)
        train = emb if n_train == n else emb[np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))]
        index.train(train)
        index.nprobe = min(nprobe, nlist)
        params.update(nlist=nlist, nprobe=index.nprobe, n_train=int(n_train))
    index.add(emb)
    return index, params


def index_recall(
    index: Any, emb: np.ndarray, k: int = 10, n_queries: int = RECALL_QUERIES, seed: int = 0
) -> dict[str, Any]:
    """Recall@k of ``index`` against exact search over the same ``emb``: the fraction of each sampled
    query's true ``k`` nearest vectors (queries drawn from ``emb`` itself) that the index returns."""
    faiss = _faiss()
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n = len(emb)
    k = min(k, n)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n_queries, n), replace=False))
    queries = emb[rows]
    exact = faiss.IndexFlatL2(emb.shape[1])
    exact.add(emb)
    _, truth = exact.search(queries, k)
    _, found = index.search(queries, k)
    hits = [len(set(t.tolist()) & set(f.tolist())) for t, f in zip(truth, found, strict=True)]
    return {"recall_at_k": float(np.mean(hits) / k), "recall_k": int(k), "recall_queries": int(len(rows))}


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
    recall_k: int = 10,
    **index_options: Any,
) -> dict[str, Any]:
    """Write an embedding directory (see module doc) atomically and return its meta.

    An approximate index gets its recall@``recall_k`` against exact search in ``meta["index"]``.
    """
    faiss = _faiss()
    emb = l2_normalize(emb) if normalize else np.ascontiguousarray(emb, dtype=np.float32)
    index, params = build_index(emb, kind, seed=seed, **index_options)
    if params["kind"] != "flat":
        params.update(index_recall(index, emb, k=recall_k, seed=seed))
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
    # the vectors are mapped, not read: queries read only the rows they use (the index has its own copy)
    emb = np.load(artifact.path / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    return EmbeddingIndex(artifact.path, emb, load(LABELS), load(EVENT_KEYS), index, artifact.info)


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
    right = total = 0
    for a in range(0, len(query_labels), QUERY_BLOCK):  # in blocks: memory flat in the number of queries
        labels = np.asarray(query_labels[a : a + QUERY_BLOCK])
        keep = labels >= 0
        if keep.any():
            pred = knn_predict(reference, np.asarray(queries[a : a + QUERY_BLOCK])[keep], k, n_classes)
            right += int(np.sum(pred == labels[keep]))
            total += int(keep.sum())
    return right / total if total else float("nan")
