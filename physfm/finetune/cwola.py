"""Weakly supervised anomaly detection, Classification Without Labels (CWoLa; Metodiev, Nachman, Thaler 2017) on a
dijet sample (physfm/data/generate_jets.py, processes ``dijet`` and ``resonance``): docs/anomaly.md.

A converted dijet dataset holds one record per jet, two per event, with the per-jet event features ``event_id``,
``jet_index`` and ``event_mjj`` and the truth label (``QCD`` background, ``Resonance`` signal). :func:`prepare_cwola`
turns it, for one signal-to-background ratio and one seed, into a dataset the ordinary fine-tuning loop trains on:

* every event is put, once and for all (``partition_seed``, the same for every S/B and seed), into one pool by a
  hash of its (truth, event_id): background into the CWoLa *data* (``data_fraction``) or the *evaluation* pool,
  signal into the *injection* (``inject_fraction``) or the *evaluation* pool. The two signal pools are disjoint by
  construction, and :func:`prepare_cwola` checks it again on the event ids it writes;
* the **train** split is the CWoLa mixture: the data pool's background events with m_jj in the signal region (SR)
  or the sidebands (SB), plus injected signal events drawn from the injection pool in a seeded order until the SR
  holds ``s_over_b`` x (SR background) of them (the signal events drawn that fall in the SB go there too). Its labels
  are **region labels** (class ``SB`` = 0, ``SR`` = 1), never truth; both jets of an event carry their event's;
* the **test** split is the truth-labelled evaluation set: the evaluation pool's events in the SR, background as
  class 0, signal as class 1 (physfm/evaluate/anomaly.py scores it).

The manifest's ``cwola`` record holds the regions, counts, S/B and the event ids of the injected and evaluation
signal events.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from physfm.data.dataset import open_dataset
from physfm.data.loader import read_block
from physfm.data.shards import SPLITS, DataError, EventBlock, ShardWriter, build_manifest, write_manifest
from physfm.hashing import mix64

REGION_CLASSES = ["SB", "SR"]  #: class names of the prepared set: 0 = sideband (or background), 1 = SR (or signal)
SIGNAL_CLASS = "Resonance"  #: the dijet sample's signal class (physfm.data.jetclass.PROCESS_LABELS["resonance"])


@dataclass
class CwolaConfig:
    """Settings of ``physfm cwola-prepare`` (config section ``anomaly``, less its grid keys)."""

    signal_region: list[float] = field(default_factory=lambda: [1350.0, 1650.0])  # m_jj window [lo, hi) GeV
    sidebands: list[float] = field(default_factory=lambda: [1100.0, 2000.0])  # SB = [lo, SR lo) + [SR hi, hi)
    data_fraction: float = 0.7  # background events in the CWoLa data (the rest: evaluation)
    inject_fraction: float = 0.5  # signal events available for injection (the rest: evaluation only)
    partition_seed: int = 0  # the pools; the same for every S/B and seed
    shard_events: int = 5000

    def __post_init__(self) -> None:
        (lo, hi), (sb_lo, sb_hi) = self.signal_region, self.sidebands
        if not sb_lo < lo < hi < sb_hi:
            raise ValueError(f"need sidebands[0] < signal_region[0] < signal_region[1] < sidebands[1], got {self}")
        for name in ("data_fraction", "inject_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")


def region_labels(mjj: np.ndarray, signal_region: Any, sidebands: Any) -> np.ndarray:
    """1 for m_jj in the signal region [lo, hi), 0 in the sidebands [sb_lo, lo) and [hi, sb_hi), -1 outside."""
    mjj = np.asarray(mjj, dtype=np.float64)
    (lo, hi), (sb_lo, sb_hi) = signal_region, sidebands
    sr = (mjj >= lo) & (mjj < hi)
    sb = ((mjj >= sb_lo) & (mjj < lo)) | ((mjj >= hi) & (mjj < sb_hi))
    return np.where(sr, 1, np.where(sb, 0, -1)).astype(np.int64)


def _unit(truth: np.ndarray, event_id: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per event from a hash of (truth, event_id, seed)."""
    key = (event_id.astype(np.uint64) << np.uint64(1)) | truth.astype(np.uint64)
    with np.errstate(over="ignore"):
        h = mix64(mix64(key) ^ mix64(np.full_like(key, np.uint64(seed) + np.uint64(0x5EED))))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def partition(truth: np.ndarray, event_id: np.ndarray, cfg: CwolaConfig) -> dict[str, np.ndarray]:
    """Boolean masks over events: ``data`` and ``eval_bkg`` (background), ``inject`` and ``eval_sig`` (signal)."""
    u = _unit(truth, event_id, cfg.partition_seed)
    sig = truth == 1
    return {
        "data": ~sig & (u < cfg.data_fraction),
        "eval_bkg": ~sig & (u >= cfg.data_fraction),
        "inject": sig & (u < cfg.inject_fraction),
        "eval_sig": sig & (u >= cfg.inject_fraction),
    }


def choose_injected(inject: np.ndarray, region: np.ndarray, n_sr: int, seed: int) -> np.ndarray:
    """Events to inject: the injection pool (mask ``inject``) in a seeded order, its shortest prefix with ``n_sr`` SR
    events (nested: a larger ``n_sr`` with the same seed keeps the smaller's events). Raises if the pool is short."""
    pool = np.flatnonzero(inject & (region >= 0))
    order = pool[np.random.default_rng([seed, 0xC0A]).permutation(len(pool))]
    in_sr = np.cumsum(region[order] == 1)
    if n_sr == 0:
        return np.zeros(0, dtype=np.int64)
    if len(in_sr) == 0 or in_sr[-1] < n_sr:
        have = int(in_sr[-1]) if len(in_sr) else 0
        raise DataError(f"S/B needs {n_sr} injected signal events in the SR, the injection pool has {have}")
    return np.sort(order[: int(np.searchsorted(in_sr, n_sr)) + 1])


def _read_all(ds: Any) -> EventBlock:
    """Every jet of the dataset (all splits), in shard order."""
    return EventBlock.concat([read_block(path) for s in SPLITS if s in ds.n_events for path, _ in ds.shards(s)])


def prepare_cwola(data_dir: str | Path, out_dir: str | Path, s_over_b: float, seed: int, cfg: CwolaConfig) -> dict:
    """Write the CWoLa dataset of one S/B and seed (module docstring) to ``out_dir``; return its manifest."""
    ds = open_dataset(data_dir, verify=True)
    names = ds.feature_names("event")
    missing = [k for k in ("event_id", "jet_index", "event_mjj") if k not in names]
    if missing or SIGNAL_CLASS not in ds.classes:
        raise DataError(
            f"{ds.path}: not a dijet dataset (lacks event features {missing} or class {SIGNAL_CLASS!r}); generate it "
            "with processes [dijet, resonance] and convert with event_branches [event_id, jet_index, event_mjj]"
        )
    jets = _read_all(ds)
    truth_jet = (jets.label == ds.classes.index(SIGNAL_CLASS)).astype(np.int64)
    eid_jet = jets.events[:, names.index("event_id")].astype(np.int64)
    # events: unique (truth, event_id); both jets must be there (a duplicate-dropped jet loses its event)
    key_jet = eid_jet * 2 + truth_jet
    keys, inverse, n_jets = np.unique(key_jet, return_inverse=True, return_counts=True)
    truth, event_id = keys % 2, keys // 2
    mjj = np.zeros(len(keys))
    mjj[inverse] = jets.events[:, names.index("event_mjj")]
    region = np.where(n_jets == 2, region_labels(mjj, cfg.signal_region, cfg.sidebands), -1)
    pools = partition(truth, event_id, cfg)

    data_bkg = pools["data"] & (region >= 0)
    n_bkg_sr = int((pools["data"] & (region == 1)).sum())
    n_target = int(round(s_over_b * n_bkg_sr))
    injected = choose_injected(pools["inject"], region, n_target, seed)
    train_events = data_bkg.copy()
    train_events[injected] = True
    eval_events = (pools["eval_bkg"] | pools["eval_sig"]) & (region == 1)
    inj_ids, eval_ids = set(event_id[injected].tolist()), set(event_id[pools["eval_sig"] & eval_events].tolist())
    if inj_ids & eval_ids:  # by construction never: the pools are disjoint
        raise AssertionError(f"injected and evaluation signal events overlap: {sorted(inj_ids & eval_ids)[:5]}")

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = ShardWriter(tmp, cfg.shard_events, {"modality": ds.modality, "format_version": 1})
    for split, chosen, labels in (("train", train_events, region), ("test", eval_events, truth)):
        mask = chosen[inverse]
        block = jets.select(mask)
        block.label = labels[inverse][mask].astype(np.int64)
        writer.add(split, block)
    n_events = writer.close()
    record = {
        **asdict(cfg),
        "s_over_b": float(s_over_b),
        "seed": int(seed),
        "source_data_version": ds.data_version,
        "n_bkg_sr": n_bkg_sr,
        "n_bkg_sb": int((pools["data"] & (region == 0)).sum()),
        "n_sig_sr": int((region[injected] == 1).sum()),
        "n_sig_sb": int((region[injected] == 0).sum()),
        "n_eval_bkg": int((eval_events & (truth == 0)).sum()),
        "n_eval_sig": int((eval_events & (truth == 1)).sum()),
        "injected_ids": sorted(int(i) for i in inj_ids),
        "eval_signal_ids": sorted(int(i) for i in eval_ids),
        "labels": {"train": "region (SB 0, SR 1)", "test": "truth in the SR (background 0, signal 1)"},
    }
    manifest = build_manifest(
        modality=ds.modality,
        particle_features={f["name"]: f["unit"] for f in ds.manifest["particle_features"]},
        event_features={f["name"]: f["unit"] for f in ds.manifest["event_features"]},
        classes=list(REGION_CLASSES),
        n_events={s: n_events.get(s, 0) for s in SPLITS},
        shards=writer.shards,
        sources=[{"name": "dijet dataset", "sha256": ds.data_version, "path": str(ds.path)}],
        config={"cwola": {k: v for k, v in record.items() if not k.endswith("_ids")}},
    )
    manifest["cwola"] = record
    if "missing_inputs" in ds.manifest:
        manifest["missing_inputs"] = ds.manifest["missing_inputs"]
    write_manifest(tmp, manifest)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest
