"""Nested, class-balanced label subsets of the training split.

A label-efficiency study trains on 100, 300, 1000, ... labelled events. Every smaller subset must be
contained in every larger one and every mode (scratch / finetune / frozen) must see exactly the same
events, otherwise the curves compare different data. Here that is built once from one seeded order:

* each class's labelled train events are permuted with the seed;
* the classes are interleaved round by round (the class order within each round is shuffled too),
  so any prefix of the order is class-balanced to within one event per class, until a rare class is
  exhausted and the others fill the rest;
* the subset with ``n`` labels is the first ``n`` events of that order.

The order is written once (``order.npy``, indices into the train split's stored order) beside a
``manifest.json`` recording, per requested label count, the count per class and a digest of the
selected events' keys; fine-tuning jobs read their subset from there and log the digest.

Label specs: an integer (``"300"``) is a number of events, a number with a point or a percent sign
(``"0.01"``, ``"1%"``) is a fraction of the labelled train split, ``"all"`` is the whole split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from physfm.data.dataset import open_dataset
from physfm.data.shards import DataError
from physfm.io import atomic_path, read_json, sha256_file, write_json

ORDER = "order.npy"
MANIFEST = "manifest.json"


def parse_spec(spec: str | int | float) -> tuple[str, float | None]:
    """``"300"`` -> ("count", 300); ``"0.01"``/``"1%"`` -> ("fraction", 0.01); ``"all"`` -> ("all", None)."""
    text = str(spec).strip().lower()
    if text in ("all", "1.0", "100%"):
        return "all", None
    try:
        if text.endswith("%"):
            value, kind = float(text[:-1]) / 100, "fraction"
        elif "." in text or "e" in text:
            value, kind = float(text), "fraction"
        else:
            value, kind = float(int(text)), "count"
    except ValueError:
        raise ValueError(
            f"label spec '{spec}' is not understood: use a count (300), a fraction (0.01 or 1%) or 'all'"
        ) from None
    if kind == "fraction" and not 0 < value <= 1:
        raise ValueError(f"label fraction '{spec}' must lie in (0, 1]")
    if kind == "count" and value < 1:
        raise ValueError(f"label count '{spec}' must be at least 1")
    return kind, value


def resolve_count(spec: str | int | float, n_labelled: int) -> int:
    """Number of labelled events a spec asks for, given the labelled train split's size."""
    kind, value = parse_spec(spec)
    if kind == "all":
        return n_labelled
    if kind == "fraction":
        return max(1, int(round(value * n_labelled)))
    if value > n_labelled:
        raise ValueError(
            f"label count {int(value)} exceeds the {n_labelled} labelled events of the train split; "
            "lower finetune.labels or generate more events (data.generate.n_jets)"
        )
    return int(value)


def spec_name(spec: str | int | float) -> str:
    """Short readable form for run names: ``n=300``, ``frac=0.01``, ``all``."""
    kind, value = parse_spec(spec)
    if kind == "all":
        return "all"
    return f"n={int(value)}" if kind == "count" else f"frac={value:g}"


def read_labels(data_dir: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(label, event_key)`` of a split in stored order, without reading particles."""
    labels, keys = [], []
    for path, _ in open_dataset(data_dir).shards(split):
        with h5py.File(path, "r") as f:
            labels.append(f["label"][:].astype(np.int64))
            keys.append(f["event_key"][:].astype(np.uint64))
    if not labels:
        raise DataError(f"{data_dir} has no '{split}' events")
    return np.concatenate(labels), np.concatenate(keys)


def balanced_order(labels: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """Indices of labelled events (label >= 0) in nested, class-balanced order (see module doc)."""
    rng = np.random.default_rng([seed, 0x5B5E7])
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)]
    rounds = max((len(p) for p in per_class), default=0)
    # rank[r, c]: position of class c within round r (a fresh shuffle of the classes each round)
    rank = np.argsort(rng.random((rounds, n_classes)), axis=1).argsort(axis=1)
    idx, key = [], []
    for c, perm in enumerate(per_class):
        r = np.arange(len(perm))
        idx.append(perm)
        key.append(r * n_classes + rank[r, c])
    if not idx:
        return np.zeros(0, dtype=np.int64)
    idx_all, key_all = np.concatenate(idx), np.concatenate(key)
    return idx_all[np.argsort(key_all, kind="stable")].astype(np.int64)


def keys_digest(keys: np.ndarray) -> str:
    """Order-independent digest of a set of event keys (sha256 of the sorted uint64 keys, 16 hex)."""
    return hashlib.sha256(np.sort(keys.astype("<u8")).tobytes()).hexdigest()[:16]


def make_subsets(
    data_dir: str | Path, specs: list[str | int | float], seed: int, out_dir: str | Path, *, verify: bool = True
) -> dict[str, Any]:
    """Write ``order.npy`` and ``manifest.json`` for the requested label specs; return the manifest.

    The dataset is verified against its manifest first (``verify=False`` when the caller already did).
    """
    data_dir = open_dataset(data_dir, verify=verify)
    data_manifest = data_dir.manifest
    classes = list(data_manifest["classes"])
    labels, keys = read_labels(data_dir, "train")
    if not classes:  # a regression dataset (IceCube direction): every event is labelled, one pseudo-class
        labels = np.zeros_like(labels)
    order = balanced_order(labels, max(len(classes), 1), seed)
    if len(order) == 0:
        raise DataError(f"{data_dir}: the train split has no labelled events; fine-tuning needs labels")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / ORDER) as tmp, open(tmp, "wb") as f:
        np.save(f, order, allow_pickle=False)
    subsets: dict[str, Any] = {}
    for spec in specs:
        n = resolve_count(spec, len(order))
        sel = order[:n]
        subsets[str(spec)] = {
            "n": n,
            "name": spec_name(spec),
            "per_class": {c: int((labels[sel] == i).sum()) for i, c in enumerate(classes)},
            "digest": keys_digest(keys[sel]),
        }
    manifest = {
        "data_version": data_manifest["data_version"],
        "seed": seed,
        "classes": classes,
        "n_labelled": int(len(order)),
        "order_sha256": sha256_file(out_dir / ORDER),
        "subsets": subsets,
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def load_subset(subsets_dir: str | Path, spec: str | int | float, data_dir: str | Path | None = None) -> np.ndarray:
    """Sorted train-split indices of a subset; checks the order file and (optionally) the data_version."""
    subsets_dir = Path(subsets_dir)
    manifest = read_json(subsets_dir / MANIFEST)
    if sha256_file(subsets_dir / ORDER) != manifest["order_sha256"]:
        raise DataError(f"{subsets_dir / ORDER} does not match its manifest; re-run the label_subsets step")
    if data_dir is not None:
        version = open_dataset(data_dir).data_version
        if version != manifest["data_version"]:
            raise DataError(
                f"subsets in {subsets_dir} were made for data_version {manifest['data_version']}, "
                f"but {data_dir} is {version}; re-run the label_subsets step"
            )
    order = np.load(subsets_dir / ORDER, allow_pickle=False)
    n = resolve_count(spec, len(order))
    return np.sort(order[:n])


def subset_info(subsets_dir: str | Path, spec: str | int | float) -> dict[str, Any]:
    """The manifest entry of one spec (computed on the fly when the spec was not pre-registered)."""
    manifest = read_json(Path(subsets_dir) / MANIFEST)
    if str(spec) in manifest["subsets"]:
        return manifest["subsets"][str(spec)]
    n = resolve_count(spec, manifest["n_labelled"])
    return {"n": n, "name": spec_name(spec)}
