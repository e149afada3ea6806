"""Label subsets of the training split, one draw per seed, and how each subset's labels are spent.

A label-efficiency study trains on 100, 300, 1000, ... labelled events. Two things vary between
repetitions of a cell and both are sampled (issue 18): the initialisation *and the labelled events*.
So every seed draws its own subset:

* each class's labelled train events are permuted with the seed;
* the classes are interleaved round by round (the class order within each round is shuffled too),
  so any prefix of the order is class-balanced to within one event per class, until a rare class is
  exhausted and the others fill the rest (:func:`balanced_order`);
* the subset with ``n`` labels of seed ``s`` is the first ``n`` events of seed ``s``'s order: nested
  across label counts within a seed, different between seeds.

**Budget accounting** (:class:`BudgetProtocol`). Every labelled event a run touches counts in its
``n``: training, early stopping, checkpoint and hyperparameter choice. Under the default protocol
``holdout`` (issue 18, protocol (a)), each subset is split, stratified by class and deterministically
from the seed, into a *train part* and an in-budget *validation part*; no fine-tuning run or baseline
reads the labelled val split of the dataset. The rule, per class with ``c`` events in the subset::

    n_val(c) = min(max(round(val_fraction * c), min_val_per_class), floor(c / 2), max_val_per_class)

(``round`` half up): the declared fraction, at least ``min_val_per_class`` events when ``c`` allows,
never more than half, so a class with a single event keeps it for training, and never more than
``max_val_per_class`` (when set: early stopping on thousands of events costs more than it resolves;
the events above the cap train, and ``n`` is unchanged). Which events are
validation is fixed by their position in the seed's order (the ``j``-th event of a class is
validation when ``n_val(j) > n_val(j - 1)``), so the train and validation parts are nested across
label counts too, and ``n_train + n_val = n`` exactly. Protocol ``fixed`` (protocol (c): a declared
recipe per ``n``, no validation) puts all ``n`` events in the train part. ``refit`` is a declaration
for the training loop: after choosing the step count on the validation part, retrain on all ``n``.

The artefact (:func:`make_subsets`) is a directory with, per seed and label count,
``seed<S>/n<N>.train.npy`` and ``seed<S>/n<N>.val.npy`` (sorted indices into the train split's stored
order) and a ``manifest.json`` recording the data_version, the protocol's name and parameters, and
per (spec, seed) each part's size, counts per class, a digest of its event keys and its file's sha256.
Fine-tuning jobs and baselines read their parts with :func:`load_split` and log :func:`subset_info`.

Label specs: an integer (``"300"``) is a number of events, a number with a point or a percent sign
(``"0.01"``, ``"1%"``) is a fraction of the labelled train split, ``"all"`` is the whole split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from physfm.artifacts import open_artifact, write_artifact
from physfm.data.dataset import Dataset, open_dataset
from physfm.data.shards import DataError
from physfm.io import atomic_dir

PARTS = ("train", "val")
PROTOCOLS = ("holdout", "fixed")
RULE = (
    "n_val(c) = min(max(round(val_fraction * c), min_val_per_class), floor(c / 2), max_val_per_class) per class "
    "with c events"
)


@dataclass(frozen=True)
class BudgetProtocol:
    """How the ``n`` labels of a subset are spent (see the module docstring for the rule).

    ``name``: ``holdout`` (validation carved out of the ``n`` labels, stratified) or ``fixed`` (no
    validation: a declared recipe per ``n``). ``val_fraction`` in (0, 0.5], ``min_val_per_class`` >= 0,
    ``max_val_per_class`` >= 1 or None (no cap).
    ``refit``: the training loop retrains on all ``n`` labels for the chosen number of steps.
    """

    name: str = "holdout"
    val_fraction: float = 0.2
    min_val_per_class: int = 3
    max_val_per_class: int | None = None
    refit: bool = False

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(f"budget protocol must be one of {PROTOCOLS}, got '{self.name}'")
        if not 0 < self.val_fraction <= 0.5:
            raise ValueError(f"val_fraction must lie in (0, 0.5], got {self.val_fraction}")
        if self.min_val_per_class < 0:
            raise ValueError(f"min_val_per_class must be >= 0, got {self.min_val_per_class}")
        if self.max_val_per_class is not None and self.max_val_per_class < max(1, self.min_val_per_class):
            raise ValueError(
                f"max_val_per_class must be >= max(1, min_val_per_class) or null, got {self.max_val_per_class}"
            )

    def n_val(self, count: np.ndarray | int) -> np.ndarray:
        """Validation events of a class with ``count`` events in the subset (vectorised)."""
        c = np.asarray(count, dtype=np.int64)
        if self.name == "fixed":
            return np.zeros_like(c)
        want = np.maximum(np.floor(self.val_fraction * c + 0.5).astype(np.int64), self.min_val_per_class)
        n_val = np.minimum(want, c // 2)
        return n_val if self.max_val_per_class is None else np.minimum(n_val, self.max_val_per_class)

    def params(self) -> dict[str, Any]:
        """Name, parameters and the rule in words: what the manifest, MLflow and the report record."""
        return {**asdict(self), "rule": RULE if self.name == "holdout" else "no validation: all n labels train"}

    @staticmethod
    def from_params(params: dict[str, Any]) -> BudgetProtocol:
        keys = ("name", "val_fraction", "min_val_per_class", "max_val_per_class", "refit")
        return BudgetProtocol(**{k: params[k] for k in keys if k in params})  # older manifests: no cap


@dataclass
class SubsetsConfig:
    """Settings of the ``subsets`` stage: the label counts, the study's seeds and the budget protocol.

    The rule passes ``finetune.labels`` + ``finetune.reference_labels``, ``finetune.seeds`` and
    ``finetune.budget`` (``refit`` is not offered by the workflow: no loop implements it yet).
    """

    labels: list[str | int | float] = field(default_factory=lambda: [100, 300, 1000])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    budget: BudgetProtocol = field(default_factory=BudgetProtocol)


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


def read_labels(data_dir: Dataset | str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
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


def validation_mask(ordered_labels: np.ndarray, protocol: BudgetProtocol) -> np.ndarray:
    """Which positions of a seed's order are validation events (True) under ``protocol``.

    The ``j``-th event of a class (1-based, counted along the order) is validation when
    ``protocol.n_val(j) > protocol.n_val(j - 1)``; so every prefix of ``n`` events holds exactly
    ``n_val(c)`` validation events of a class with ``c`` events in it.
    """
    lab = np.asarray(ordered_labels, dtype=np.int64)
    mask = np.zeros(len(lab), dtype=bool)
    for c in np.unique(lab):
        pos = np.flatnonzero(lab == c)
        j = np.arange(1, len(pos) + 1)
        mask[pos] = protocol.n_val(j) > protocol.n_val(j - 1)
    return mask


def keys_digest(keys: np.ndarray) -> str:
    """Order-independent digest of a set of event keys (sha256 of the sorted uint64 keys, 16 hex)."""
    return hashlib.sha256(np.sort(keys.astype("<u8")).tobytes()).hexdigest()[:16]


def part_file(seed: int, n: int, part: str) -> str:
    """Path of one part's index file inside the subsets directory: ``seed1/n300.train.npy``."""
    return f"seed{int(seed)}/n{int(n)}.{part}.npy"


def make_subsets(
    data_dir: Dataset | str | Path,
    specs: Sequence[str | int | float],
    seed: int | Sequence[int],
    out_dir: str | Path,
    *,
    protocol: BudgetProtocol | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Draw every seed's subsets, split each into train and validation parts, write them; return the manifest.

    ``seed``: one seed or the list of the study's seeds (each draws its own subsets). The directory is
    built under a temporary name and swapped in complete. The dataset is verified against its manifest
    first (``verify=False`` when the caller already did).
    """
    protocol = protocol or BudgetProtocol()
    seeds = [int(seed)] if isinstance(seed, int | np.integer) else [int(s) for s in seed]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"subsets need at least one seed and no seed twice, got {seeds}")
    data_dir = open_dataset(data_dir, verify=verify)  # opened once; the helpers below take the object
    data_manifest = data_dir.manifest
    classes = list(data_manifest["classes"])
    labels, keys = read_labels(data_dir, "train")
    if not classes:  # a regression dataset (IceCube direction): every event is labelled, one pseudo-class
        labels = np.zeros_like(labels)
    n_classes = max(len(classes), 1)
    names = classes or ["all"]
    n_labelled = int((labels >= 0).sum())
    if n_labelled == 0:
        raise DataError(f"{data_dir}: the train split has no labelled events; fine-tuning needs labels")
    counts = {str(spec): resolve_count(spec, n_labelled) for spec in specs}
    subsets: dict[str, Any] = {str(s): {"n": n, "name": spec_name(s), "seeds": {}} for s, n in counts.items()}
    with atomic_dir(out_dir) as tmp:
        for s in seeds:
            order = balanced_order(labels, n_classes, s)
            is_val = validation_mask(labels[order], protocol)
            (tmp / f"seed{s}").mkdir()
            for spec, n in counts.items():
                entry: dict[str, Any] = {}
                for part, sel in (("train", ~is_val[:n]), ("val", is_val[:n])):
                    idx = np.sort(order[:n][sel])
                    path = tmp / part_file(s, n, part)
                    if not path.exists():
                        np.save(path, idx, allow_pickle=False)
                    entry[part] = {
                        "file": part_file(s, n, part),  # its sha256 is in the artefact's file list
                        "n": int(len(idx)),
                        "per_class": {c: int((labels[idx] == i).sum()) for i, c in enumerate(names)},
                        "digest": keys_digest(keys[idx]),
                    }
                entry["digest"] = keys_digest(keys[order[:n]])
                subsets[spec]["seeds"][str(s)] = entry
        info = {"classes": classes, "n_labelled": n_labelled, "seeds": seeds, "protocol": protocol.params()}
        info["subsets"] = subsets
        artifact = write_artifact(tmp, "subsets", None, {"data_version": data_manifest["data_version"]}, info=info)
    return {**info, "data_version": data_manifest["data_version"], "subsets_version": artifact.version}


def _manifest(subsets_dir: Path, data_dir: Dataset | str | Path | None) -> dict[str, Any]:
    """The subsets' record (verified: every part file against its sha256), checked against ``data_dir``."""
    artifact = open_artifact(subsets_dir, "subsets")
    made_for = artifact.inputs["data_version"]
    if data_dir is not None and (version := open_dataset(data_dir).data_version) != made_for:
        raise DataError(
            f"subsets in {subsets_dir} were made for data_version {made_for}, "
            f"but {data_dir} is {version}; re-run the label_subsets step"
        )
    return {**artifact.info, "data_version": made_for, "subsets_version": artifact.version}


def _entry(manifest: dict[str, Any], subsets_dir: Path, spec: str | int | float, seed: int | None) -> dict[str, Any]:
    spec = str(spec)
    if spec not in manifest["subsets"]:
        raise DataError(
            f"label spec '{spec}' is not in {subsets_dir} (it holds {', '.join(manifest['subsets'])}); "
            "add it to finetune.labels and re-run the label_subsets step"
        )
    seed = manifest["seeds"][0] if seed is None else int(seed)
    entry = manifest["subsets"][spec]["seeds"].get(str(seed))
    if entry is None:
        raise DataError(
            f"seed {seed} has no subsets in {subsets_dir} (seeds {', '.join(map(str, manifest['seeds']))}); "
            "add it to the subsets' seeds (finetune.seeds) and re-run the label_subsets step"
        )
    return entry


def load_split(
    subsets_dir: str | Path, spec: str | int | float, seed: int, data_dir: Dataset | str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_part, val_part)``: sorted train-split indices of seed ``seed``'s subset ``spec``.

    The artefact is verified on open (every file against its sha256) and, with ``data_dir``, its data_version.
    """
    subsets_dir = Path(subsets_dir)
    manifest = _manifest(subsets_dir, data_dir)
    entry = _entry(manifest, subsets_dir, spec, seed)
    train, val = (np.load(subsets_dir / entry[part]["file"], allow_pickle=False).astype(np.int64) for part in PARTS)
    return train, val


def load_subset(
    subsets_dir: str | Path,
    spec: str | int | float,
    data_dir: Dataset | str | Path | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """Sorted train-split indices of the whole subset (train part + validation part) of ``seed``.

    ``seed=None`` takes the artefact's first seed. Runs that early-stop must use :func:`load_split`
    and validate on the validation part only.
    """
    train, val = load_split(subsets_dir, spec, _first_seed(subsets_dir) if seed is None else seed, data_dir)
    return np.sort(np.concatenate([train, val]))


def _first_seed(subsets_dir: str | Path) -> int:
    return int(_manifest(Path(subsets_dir), None)["seeds"][0])


def subset_info(subsets_dir: str | Path, spec: str | int | float, seed: int | None = None) -> dict[str, Any]:
    """What a run logs about its labels: spec, seed, budget ``n`` = ``n_train + n_val``, digests, protocol."""
    subsets_dir = Path(subsets_dir)
    manifest = _manifest(subsets_dir, None)
    entry = _entry(manifest, subsets_dir, spec, seed)
    sub = manifest["subsets"][str(spec)]
    return {
        "spec": str(spec),
        "name": sub["name"],
        "seed": manifest["seeds"][0] if seed is None else int(seed),
        "n": sub["n"],
        "n_train": entry["train"]["n"],
        "n_val": entry["val"]["n"],
        "per_class_train": entry["train"]["per_class"],
        "per_class_val": entry["val"]["per_class"],
        "digest": entry["digest"],
        "digest_train": entry["train"]["digest"],
        "digest_val": entry["val"]["digest"],
        "protocol": manifest["protocol"],
    }
