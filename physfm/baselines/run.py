"""One baseline cell of the label-efficiency grid: (method, labels, seed) -> test metrics.

The result has the shape of a classifier's :func:`physfm.evaluate.evaluate.evaluate_model` record (the same keys,
metrics from :func:`physfm.evaluate.metrics.evaluate_scores`), with ``mode`` the method and
``n_labels_used`` the labelled events the run touched: all of them come from the subset (the fit and
in-budget validation parts are listed in ``train``), none from the val split. The zero-label cut
uses none (``n_labels = 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physfm.baselines.bdt import BDTConfig, fit_bdt, full_probs
from physfm.baselines.cut import CutConfig, cut_probs
from physfm.baselines.observables import block_observables, compute_split, load_observables
from physfm.baselines.pfn import PFNConfig, pfn_probs, train_pfn
from physfm.data.dataset import Dataset, open_dataset
from physfm.data.shards import DataError
from physfm.data.substructure import NAMES
from physfm.evaluate.metrics import DEFAULT_EFFS, DEFAULT_PAIRS, evaluate_scores
from physfm.finetune.subsets import keys_digest, load_split, read_labels
from physfm.io import atomic_path, write_json
from physfm.stage import build

METHODS: tuple[str, ...] = ("bdt", "pfn", "cut")
CONFIGS: dict[str, type] = {"bdt": BDTConfig, "pfn": PFNConfig, "cut": CutConfig}
RESULT = "test.json"
PREDICTIONS = "predictions.npz"


def method_config(method: str, mapping: dict[str, Any] | None = None) -> BDTConfig | PFNConfig | CutConfig:
    """The settings dataclass of ``method`` built from its config section (defaults for missing keys)."""
    if method not in CONFIGS:
        raise ValueError(f"unknown baseline method '{method}'; choose from {', '.join(METHODS)}")
    return build(CONFIGS[method], mapping, f"baselines.{method}.")


def _train_observables(ds: Dataset, block: Any, idx: np.ndarray, obs_dir: Path | None) -> np.ndarray:
    """Observables of the subset's events (``block``, read at ``idx``), from the cache when there is one."""
    if obs_dir is None:
        return block_observables(block, ds.manifest)
    values, keys = load_observables(obs_dir, ds, "train", idx)
    if not np.array_equal(keys, block.event_key):
        raise DataError(
            f"observables in {obs_dir} are not aligned with {ds.path}'s train split; re-run `physfm observables`"
        )
    return values


def _heldout_observables(
    data_dir: Dataset, split: str, obs_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, labels, event_keys)`` of a held-out split."""
    labels, keys = read_labels(data_dir, split)
    if obs_dir is None:
        values, obs_keys = compute_split(data_dir, split)
    else:
        values, obs_keys = load_observables(obs_dir, data_dir, split)
    if not np.array_equal(obs_keys, keys):
        raise DataError(f"observables of {data_dir}'s {split} split are not aligned with its events; recompute them")
    return values, labels, keys


def run_baseline(
    method: str,
    data_dir: Dataset | str | Path,
    out_dir: str | Path,
    cfg: BDTConfig | PFNConfig | CutConfig,
    *,
    subsets_dir: str | Path | None = None,
    labels: str | None = None,
    seed: int = 1,
    observables_dir: str | Path | None = None,
    split: str = "test",
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    effs: Sequence[float] = DEFAULT_EFFS,
    n_bootstrap: int = 200,
    threads: int | None = None,
    device: str = "auto",
    run: Any = None,
    progress: bool = False,
    extra: dict[str, Any] | None = None,
    test_data: Dataset | str | Path | None = None,
    test_observables: str | Path | None = None,
) -> dict[str, Any]:
    """Train (unless ``cut``) on the subset ``labels`` of ``subsets_dir`` and score ``split``; write
    ``out_dir/test.json`` (and ``predictions.npz``, and for the PFN its weights in ``model/``).

    ``test_data`` (and its ``test_observables``): score that set's ``split`` instead, with the same classes
    (a model trained on one set, tested on another: "trained on simulation, tested on data")."""
    from physfm.data.loader import load_arrays, open_split

    if method not in METHODS:
        raise ValueError(f"unknown baseline method '{method}'; choose from {', '.join(METHODS)}")
    ds = open_dataset(data_dir, verify=True)
    data_dir, out_dir = ds.path, Path(out_dir)
    obs_dir = None if observables_dir is None else Path(observables_dir)
    manifest = ds.manifest
    classes = list(manifest["classes"])
    if len(classes) < 2:
        raise DataError(f"{data_dir} has {len(classes)} class(es); the jet baselines classify at least two")
    if split == "train" or split not in manifest["n_events"]:
        raise ValueError(f"--split must be a held-out split of {data_dir} (val or test), got '{split}'")
    out_dir.mkdir(parents=True, exist_ok=True)
    train: dict[str, Any] = {}
    history: list[dict[str, float]] = []
    n_labels, digest, per_class = 0, None, {c: 0 for c in classes}

    if method != "cut":
        if subsets_dir is None or labels is None:
            raise ValueError(f"baseline '{method}' trains on a label subset: pass --subsets DIR and --labels SPEC")
        train_part, val_part = load_split(subsets_dir, labels, seed, ds)  # the budget protocol's two parts
        if len(val_part) == 0:
            raise ValueError(
                f"baseline '{method}' early-stops on the budget's validation part, and subsets {subsets_dir} have "
                "none (protocol fixed): use finetune.budget.name holdout"
            )
        idx = np.sort(np.concatenate([train_part, val_part]))
        parts = (np.searchsorted(idx, train_part), np.searchsorted(idx, val_part))
        if method == "bdt":
            block = open_split(ds, "train").read(idx)
            y, keys = block.label.astype(np.int64), block.event_key
            x = _train_observables(ds, block, idx, obs_dir)
        else:
            assert isinstance(cfg, PFNConfig)
            arrays = load_arrays(ds, "train", features=cfg.features, max_len=cfg.max_len, indices=idx)
            y, keys = arrays["label"].astype(np.int64), arrays["event_key"]
        if np.any(y < 0):
            raise DataError(f"subset {labels} of {subsets_dir} holds unlabelled events; re-run `physfm subsets`")
        n_labels, digest = len(y), keys_digest(keys)
        per_class = {c: int((y == i).sum()) for i, c in enumerate(classes)}
        if method == "bdt":
            assert isinstance(cfg, BDTConfig)
            model, train = fit_bdt(x, y, len(classes), cfg, seed, parts, threads=threads)
        else:
            assert isinstance(cfg, PFNConfig)
            model, norm_meta, train = train_pfn(
                arrays["x"],
                arrays["mask"],
                y,
                len(classes),
                cfg,
                seed,
                parts,
                device=device,
                run=run,
                progress=progress,
            )
            history = train.pop("history")
        train["fit_indices"] = idx[train.pop("fit_positions")].tolist()
        train["val_indices"] = idx[train.pop("val_positions")].tolist()

    scored, scored_obs = ds, obs_dir
    if test_data is not None:
        scored = open_dataset(test_data, verify=True)
        scored_obs = None if test_observables is None else Path(test_observables)
        if list(scored.manifest["classes"]) != classes:
            raise DataError(
                f"{scored.path} has classes {scored.manifest['classes']}, the model {classes}: a baseline is scored "
                "on a set with the classes it was trained on, in the same order"
            )
        if split not in scored.manifest["n_events"]:
            raise ValueError(f"{scored.path} has no '{split}' split")
    if method == "pfn":
        assert isinstance(cfg, PFNConfig)
        test = load_arrays(scored, split, features=cfg.features, max_len=cfg.max_len)
        keep = test["label"] >= 0
        probs = pfn_probs(model, norm_meta, test["x"][keep], test["mask"][keep])
        y_test, k_test = test["label"][keep], test["event_key"][keep]
        from physfm.finetune.model import save_model_dir

        save_model_dir(
            out_dir / "model",
            model,
            {"kind": "physfm-pfn", "classes": classes, "config": cfg.to_dict(), **norm_meta},
            meta_name="pfn.json",
        )
    else:
        values, y_all, k_all = _heldout_observables(scored, split, scored_obs)
        keep = y_all >= 0
        y_test, k_test = y_all[keep], k_all[keep]
        if method == "bdt":
            probs = full_probs(model, values[keep], len(classes))
        else:
            assert isinstance(cfg, CutConfig)
            probs = cut_probs(values[keep, NAMES.index("m_sd")], classes, cfg)
            train = {"n_fit": 0, "n_val": 0, "best_step": 0, "wall_seconds": 0.0}

    result = evaluate_scores(probs, y_test, classes, pairs=pairs, effs=effs, n_bootstrap=n_bootstrap, seed=0)
    with atomic_path(out_dir / PREDICTIONS) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, probs=probs.astype(np.float32), label=y_test, event_key=k_test)
    out = {
        "mode": method,
        "labels": "0" if method == "cut" else str(labels),
        "n_labels": int(n_labels),
        "n_labels_used": int(n_labels),
        "seed": int(seed),
        "run_id": getattr(run, "run_id", None),
        "data_version": manifest["data_version"],
        "test_data_version": scored.data_version,
        "backbone": "none",
        **(extra or {}),
        "split": split,
        "classes": classes,
        "model_dir": str(out_dir),
        "subset_digest": digest,
        "subset_per_class": per_class,
        "backbone_objective": None,
        "tokenizer_version": None,
        "baseline": {
            "method": method,
            "config": cfg.to_dict(),
            "observables": None if obs_dir is None else str(obs_dir),
        },
        "train": train,
        "history": history,
        **result,
    }
    write_json(out_dir / RESULT, out)
    return out
