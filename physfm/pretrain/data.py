"""Pretraining batches: shards -> normalised features, tokenizer codes, global targets, objective masks.

Everything here runs on CPU in the data-loader workers, from numpy. The randomness of a batch
(which particles are masked) is a function of each event's key and the epoch only (see
:mod:`physfm.models.objectives`), and the order of batches is ShardDataset's seeded order, so the
stream from any step on can be reproduced exactly: :class:`PretrainShards` takes a number of
batches to ``skip`` and skips them cheaply (no feature, tokenizer or mask work), also with several
loader workers.

**Feature dropout** (OmniLearn): with probability ``feature_dropout`` per jet, a training batch has the
jet's optional inputs (charge, particle ID, impact parameters: :func:`physfm.features.input_group`)
set to zero before normalisation, as in a data set that lacks them, so the backbone learns to live
without them. The choice is a function of the event key and the epoch, like masking; it fires on the
``train`` split only, never on validation (nor in fine-tuning and evaluation, which do not use these
batches). A data set without an input has zeros there too (the converter's convention), so
fine-tuning on it shows the backbone what it saw under dropout.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

from physfm.data.loader import ShardDataset, load_arrays, pad
from physfm.data.shards import EventBlock
from physfm.data.views import ViewMaker
from physfm.features import GLOBAL_TARGETS, global_targets, input_group
from physfm.hashing import hash_uniform
from physfm.models.backbone import normalize
from physfm.models.objectives import Objective, salt_for

_STD_FLOOR = 1e-6
_DROPOUT_SALT = 0x0F1DD209  # feature dropout's own stream of the event hash


def dropout_features(features: Sequence[str]) -> list[str]:
    """The model features feature dropout zeroes: those of an optional input group."""
    return [f for f in features if input_group(f) is not None]


def feature_dropout_meta(p: float, features: Sequence[str]) -> dict[str, Any]:
    """What a backbone's ``backbone.json`` records of its feature dropout: the probability, the
    features it zeroes and their groups, and the fill (a raw zero, before normalisation). Fine-tuning
    reads it (:mod:`physfm.finetune.backbone_source`) to decide whether a data set may lack them."""
    dropped = dropout_features(features)
    return {
        "p": float(p),
        "features": dropped,
        "groups": sorted({str(input_group(f)) for f in dropped}),
        "fill": "zero",
    }


def dropped_events(event_key: np.ndarray, salt: int, p: float) -> np.ndarray:
    """``(B,)`` bool: the events feature dropout drops the optional inputs of (probability ``p`` each)."""
    return hash_uniform(event_key, salt ^ _DROPOUT_SALT, 1)[:, 0] < p


def drop_features(
    x: np.ndarray, mask: np.ndarray, drop: np.ndarray, columns: Sequence[int], norm: dict[str, Any]
) -> None:
    """Set ``columns`` of the *normalised* ``x`` (B, L, F) of the ``drop`` events, in place, to the
    normalised value of a raw zero (what a data set without those inputs gives); padding stays zero."""
    if not drop.any() or not len(columns):
        return
    cols = np.asarray(columns)
    fill = -np.asarray(norm["mean"], np.float32)[cols] / np.asarray(norm["std"], np.float32)[cols]
    rows = np.flatnonzero(drop)
    sub = x[rows]
    sub[..., cols] = fill * mask[rows][..., None]
    x[rows] = sub


def raw_feature_names(model_features: Sequence[str], tokenizer: Any, objective: Objective) -> list[str]:
    """Every per-particle feature a batch needs, each once, model features first."""
    names = list(model_features)
    extra = list(tokenizer.features) if tokenizer is not None else []
    extra += type(objective).raw_features(objective.options.to_dict())
    for g in objective.global_names:
        extra += list(GLOBAL_TARGETS[g].features)
    for n in extra:
        if n not in names:
            names.append(n)
    return names


def fit_stats(
    data_dir: str | Path,
    *,
    features: Sequence[str],
    raw_features: Sequence[str],
    global_names: Sequence[str],
    tokenizer: Any,
    max_len: int,
    n_events: int,
    seed: int,
    corpus_events: int = 0,
) -> dict[str, Any]:
    """Normalisation of model inputs and global targets, fitted on (a seeded sample of) the train split,
    and the unigram entropy of the tokenizer codes (the best loss without context, in nats).

    ``corpus_events`` > 0: the corpus is the split's first ``corpus_events`` events in stored order (what
    :class:`PretrainShards` reads with ``max_events``); the sample is drawn from those. The stats record
    the corpus size as ``corpus_events``."""
    from physfm.data.loader import open_split

    n_split = len(open_split(data_dir, "train"))
    if n_split == 0:
        raise ValueError(f"{data_dir} has no training events")
    if corpus_events < 0 or corpus_events > n_split:
        raise ValueError(
            f"pretrain corpus_events {corpus_events}: the train split holds {n_split} events; "
            "use 0 (all of them) or a count up to that"
        )
    n_train = corpus_events or n_split
    idx = None if n_train == n_split else np.arange(n_train)
    if n_events and n_train > n_events:
        idx = np.sort(np.random.default_rng(seed).choice(n_train, size=n_events, replace=False))
    arr = load_arrays(data_dir, "train", features=list(raw_features), max_len=max_len, indices=idx)
    x, mask = arr["x"], arr["mask"]
    col = {n: j for j, n in enumerate(raw_features)}
    real = x[mask][:, [col[f] for f in features]].astype(np.float64)
    std = real.std(0)
    stats: dict[str, Any] = {
        "features": list(features),
        "norm": {"mean": real.mean(0).tolist(), "std": np.where(std > _STD_FLOOR, std, 1.0).tolist()},
        "n_events": int(len(mask)),
        "corpus_events": int(n_train),
    }
    raw = {n: x[..., j] for n, j in col.items()}
    g = global_targets(list(global_names), raw, mask)
    gstd = g.std(0) if len(g) else np.zeros(0)
    stats["global"] = {
        "names": list(global_names),
        "mean": g.mean(0).tolist() if len(g) else [],
        "std": np.where(gstd > _STD_FLOOR, gstd, 1.0).tolist(),
    }
    if tokenizer is not None:
        codes = tokenizer.encode(x[..., [col[f] for f in tokenizer.features]], mask)
        counts = np.bincount(codes[mask], minlength=tokenizer.codebook_size).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        stats["unigram_entropy"] = float(-(p * np.log(p)).sum())
        stats["codes_used_fraction"] = float((counts > 0).mean())
    return stats


class PretrainShards(ShardDataset):
    """ShardDataset whose batches are ready for an objective: dict of tensors with ``x``, ``mask``,
    ``event_key``, ``n_particles``, ``label``, ``global``, ``tokens`` (with a tokenizer), the views
    ``x_v{i}``/``mask_v{i}`` of an objective that compares views (:mod:`physfm.data.views`) and the
    objective's own entries. ``skip`` batches at the start of the iteration are passed over cheaply."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        *,
        stats: dict[str, Any],
        raw_features: Sequence[str],
        objective: Objective,
        tokenizer: Any,
        max_len: int,
        batch_size: int,
        seed: int,
        shuffle: bool,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        quantized_inputs: bool = False,
        feature_dropout: float = 0.0,
        max_events: int = 0,
    ) -> None:
        if not 0.0 <= feature_dropout <= 1.0:
            raise ValueError(f"pretrain feature_dropout must be a probability in [0, 1], got {feature_dropout}")
        super().__init__(
            data_dir,
            split,
            features=list(raw_features),
            max_len=max_len,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            max_events=max_events,
        )
        self.split_name, self.stats, self.objective, self.tokenizer = split, stats, objective, tokenizer
        col = {n: j for j, n in enumerate(raw_features)}
        self.model_idx = [col[f] for f in stats["features"]]
        self.tok_idx = [col[f] for f in tokenizer.features] if tokenizer is not None else []
        self.col = col
        self.quantized_inputs = quantized_inputs
        # feature dropout: training batches only (validation measures the model on the inputs as they are)
        self.feature_dropout = feature_dropout if split == "train" else 0.0
        dropped = set(dropout_features(stats["features"]))
        self.dropout_idx = [j for j, f in enumerate(stats["features"]) if f in dropped]
        self.skip = 0  # batches to pass over (no loader workers)
        self._worker_skip: list[int] | None = None  # per worker (with loader workers)
        self._skip_left = 0
        spec = objective.view_spec()  # views of each event (contrastive, dino), built in the workers
        self.views = ViewMaker(spec, self.split.manifest, stats, max_len) if spec is not None else None

    # ------------------------------------------------------------------ batch contents
    def _batch(self, block: EventBlock) -> dict[str, torch.Tensor] | None:  # type: ignore[override]
        if self._skip_left > 0:
            self._skip_left -= 1
            return None
        xr, mask = pad(block, self.split.features(block, self.feature_names), self.max_len)
        b: dict[str, Any] = {
            "mask": mask,
            "event_key": block.event_key,
            "n_particles": np.diff(block.offsets),
            "label": block.label.astype(np.int64),
        }
        if self.tokenizer is not None:
            b["tokens"] = self.tokenizer.encode(xr[..., self.tok_idx], mask).astype(np.int64)
        xm = xr[..., self.model_idx]
        if self.quantized_inputs and self.tokenizer is not None:
            xm = self.tokenizer.decode(b["tokens"], mask)
        b["x"] = normalize(xm, mask, self.stats)
        salt = salt_for(self.seed, self.epoch, self.split_name)
        dropped = None
        if self.feature_dropout > 0:
            dropped = dropped_events(block.event_key, salt, self.feature_dropout)
            drop_features(b["x"], mask, dropped, self.dropout_idx, self.stats["norm"])
        raw = {n: xr[..., j] for n, j in self.col.items()}
        g = self.stats["global"]
        b["global"] = (global_targets(g["names"], raw, mask) - np.asarray(g["mean"])) / np.asarray(g["std"])
        b["raw"] = raw
        if self.views is not None:
            b.update(self.views(block, salt))
            if dropped is not None:  # a dropped jet lacks the inputs in every view
                for key in [k for k in b if k.startswith("x_v")]:
                    drop_features(b[key], b[key.replace("x_", "mask_")], dropped, self.dropout_idx, self.stats["norm"])
        b = self.objective.prepare(b, salt=salt)
        del b["raw"]
        out = {}
        for k, v in b.items():
            v = np.asarray(v)
            if v.dtype == np.uint64:
                v = v.view(np.int64)
            elif v.dtype == np.float64:
                v = v.astype(np.float32)
            out[k] = torch.from_numpy(np.ascontiguousarray(v))
        return out

    # ------------------------------------------------------------------ cheap skipping
    def batches_per_worker(self, n_workers: int) -> list[int]:
        """How many batches each loader worker yields this epoch (mirrors ShardDataset's split)."""
        units = list(self.units)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(units))
            units = [units[i] for i in order]
        counts = []
        for w in range(n_workers):
            n = sum(b - a for _, a, b in units[self.rank * n_workers + w :: self.world_size * n_workers])
            counts.append(n // self.batch_size + (0 if self.drop_last or n % self.batch_size == 0 else 1))
        return counts

    def plan_skip(self, skip: int, n_workers: int) -> tuple[list[int], int]:
        """Per-worker batches to skip inside the workers, and how many the main process must drop.

        DataLoader takes batches from its workers round-robin (passing over exhausted ones); the
        workers skip whole rounds and the main process drops the remainder of the last round.
        """
        counts = self.batches_per_worker(max(n_workers, 1))
        if n_workers <= 1:
            return [min(skip, counts[0])], 0
        taken = [0] * n_workers
        at_round_start, g = list(taken), 0
        for w in itertools.cycle(range(n_workers)):
            if g >= skip or all(t >= c for t, c in zip(taken, counts, strict=True)):
                break
            if w == 0:
                at_round_start = list(taken)
                g0 = g
            if taken[w] < counts[w]:
                taken[w] += 1
                g += 1
        if g < skip:  # asked to skip past the end of the epoch
            return counts, 0
        if w == 0:  # stopped exactly at a round boundary
            return taken, 0
        return at_round_start, skip - g0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        if info is None:
            self._skip_left = self.skip
        else:
            self._skip_left = self._worker_skip[info.id] if self._worker_skip else 0
        for b in super().__iter__():
            if b is not None:
                yield b


def make_loader(
    ds: PretrainShards, num_workers: int, skip: int = 0, pin_memory: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Iterate ``ds`` from batch ``skip`` of its current epoch, in exactly the order of a full pass."""
    if num_workers > 0:
        ds._worker_skip, drop = ds.plan_skip(skip, num_workers)
        ds.skip = 0
    else:
        ds._worker_skip, drop, ds.skip = None, 0, skip
    # own generator: creating a loader iterator must not draw from the global torch RNG (dropout)
    gen = torch.Generator().manual_seed(ds.seed)
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers, generator=gen, pin_memory=pin_memory)
    it = iter(loader)
    for _ in range(drop):
        next(it, None)
    return it


def epoch_batches(ds: PretrainShards, num_workers: int) -> int:
    """Batches in the current epoch of ``ds`` for this rank."""
    return sum(ds.batches_per_worker(max(num_workers, 1)))


def batch_stream(
    ds: PretrainShards, num_workers: int, epoch: int, skip: int, pin: bool = False
) -> Iterator[tuple[int, int, dict]]:
    """Endless batches from epoch ``epoch``, batch ``skip`` on; yields (epoch, position after, batch)."""
    while True:
        ds.set_epoch(epoch)
        if epoch_batches(ds, num_workers) == 0:
            raise ValueError(
                f"the train split gives this rank no full batch of {ds.batch_size} events; lower batch_size "
                f"or use more data (world size {ds.world_size})"
            )
        for i, batch in enumerate(make_loader(ds, num_workers, skip, pin_memory=pin), start=skip):
            yield epoch, i + 1, batch
        epoch, skip = epoch + 1, 0
