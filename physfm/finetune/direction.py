"""The ``direction`` downstream task (IceCube): predict the unit vector an event comes from.

A head on the backbone's event embedding outputs a 3-vector, normalised to unit length; the loss
and the metric are the angle between predicted and true direction (the Kaggle competition's
metric: mean angular error; the median is reported too). Truth comes from the dataset's event
features ``dir_x, dir_y, dir_z`` (:mod:`physfm.data.icecube` convention: where the particle comes
from). Apart from the head and the loss, a run is exactly a classification cell of the
label-efficiency grid (:mod:`physfm.finetune.train`): the same :class:`FinetuneConfig`, the same
nested label subsets (all events are labelled), modes ``scratch``/``finetune``/``frozen``, warm-up
+ cosine LR, early stopping on the validation loss, best model kept. Backbones pretrained with the
PolarBERT objective also receive the DOM ids as tokens (:func:`physfm.models.polarbert.uses_dom_tokens`).

A saved model is a directory with ``direction.safetensors`` and ``direction.json`` (no pickle).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from physfm.data.dataset import Dataset, open_dataset
from physfm.data.loader import load_arrays
from physfm.data.shards import DataError
from physfm.io import atomic_path
from physfm.models.backbone import Backbone, BackboneConfig, normalize

KIND = "physfm-direction"
TARGET = ("dir_x", "dir_y", "dir_z")
WEIGHTS = "direction.safetensors"
META = "direction.json"
POOLS = ("cls", "mean")


# --------------------------------------------------------------------------- loss and metrics
def angular_error(pred: Tensor, truth: Tensor, eps: float = 1e-7) -> Tensor:
    """Angle (rad) between rows of ``pred`` (any non-zero vectors) and ``truth``; differentiable.

    ``acos`` of the clamped cosine: exact up to ~1e-3 rad at 0 and pi, where the clamp keeps the
    gradient finite.
    """
    cos = F.cosine_similarity(pred.float(), truth.float(), dim=-1, eps=1e-12)
    return torch.acos(cos.clamp(-1.0 + eps, 1.0 - eps))


def angular_loss(pred: Tensor, truth: Tensor) -> Tensor:
    """Mean angular error (rad): the training loss of the direction task."""
    return angular_error(pred, truth).mean()


def angles_deg(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Angular errors in degrees, computed accurately (atan2 of |a x b| and a . b)."""
    from physfm.data.icecube import angular_distance

    return np.degrees(angular_distance(pred, truth))


def direction_metrics(
    pred: np.ndarray, truth: np.ndarray, n_bootstrap: int = 200, seed: int = 0
) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, bootstrap std): mean, median and 68 % quantile of the angular error in degrees.

    Lower is better. A perfect prediction gives 0, a random direction 90 (mean) on average.
    """
    err = angles_deg(pred, truth)
    stats = {
        "mean_angular_error_deg": np.mean,
        "median_angular_error_deg": np.median,
        "q68_angular_error_deg": lambda e: np.quantile(e, 0.68),
    }
    metrics = {k: float(f(err)) for k, f in stats.items()}
    metrics["n_events"] = int(len(err))
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in stats}
    for _ in range(n_bootstrap if len(err) > 1 else 0):
        e = err[rng.integers(0, len(err), len(err))]
        for k, f in stats.items():
            draws[k].append(f(e))
    std = {k: float(np.std(v)) if v else 0.0 for k, v in draws.items()}
    return metrics, std


# --------------------------------------------------------------------------- model
class DirectionModel(nn.Module):
    """Backbone + head: ``forward(x, mask, tokens=None)`` -> ``(B, 3)`` unit vectors."""

    def __init__(self, backbone: Backbone, pool: str = "cls", hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"direction head pool '{pool}' is not one of {POOLS}")
        self.backbone, self.pool = backbone, pool
        d = backbone.config.d_model
        self.head = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 3))

    @property
    def uses_class_token_only(self) -> bool:
        cfg = self.backbone.config
        return self.pool == "cls" and cfg.n_cls > 0 and not cfg.causal

    def pooled(self, h: Tensor, mask: Tensor) -> Tensor:
        if self.uses_class_token_only:
            return h[:, 0]
        n_cls = self.backbone.config.n_cls
        parts = h[:, n_cls:] if h.shape[1] > mask.shape[1] else h
        w = mask.unsqueeze(-1).to(parts.dtype)
        return (parts * w).sum(1) / w.sum(1).clamp(min=1.0)

    def from_states(self, h: Tensor, mask: Tensor) -> Tensor:
        return F.normalize(self.head(self.pooled(h, mask)).float(), dim=-1)

    def forward(self, x: Tensor, mask: Tensor, tokens: Tensor | None = None) -> Tensor:
        return self.from_states(self.backbone(x, mask, tokens=tokens), mask)


def _inputs(data_dir: Dataset, split: str, meta: dict[str, Any], indices: np.ndarray | None) -> dict[str, np.ndarray]:
    """Raw features, mask, DOM tokens (when the backbone embeds them) and unit direction targets."""
    from physfm.models.polarbert import DOM_FEATURE, dom_tokens, uses_dom_tokens

    features = list(meta["features"])
    with_dom = uses_dom_tokens(meta)
    names = features + ([DOM_FEATURE] if with_dom else [])
    arr = load_arrays(data_dir, split, features=names, max_len=int(meta["max_len"]), indices=indices)
    out = {"x": arr["x"][..., : len(features)], "mask": arr["mask"], "event_key": arr["event_key"]}
    out["events"] = arr["events"]
    if with_dom:
        n_doms = int(meta["config"]["vocab_size"]) - 1
        out["tokens"] = dom_tokens(arr["x"][..., len(features)], arr["mask"], n_doms)
    out["truth"] = direction_truth(data_dir, arr["events"])
    return out


def direction_truth(data_dir: Dataset | str | Path, events: np.ndarray) -> np.ndarray:
    """``(N, 3)`` unit direction vectors from a dataset's event features."""
    names = open_dataset(data_dir).feature_names("event")
    missing = [t for t in TARGET if t not in names]
    if missing:
        raise DataError(
            f"{data_dir} has no event features {missing}: the direction task needs an IceCube dataset "
            "(physfm convert --format kaggle|prometheus)"
        )
    d = events[:, [names.index(t) for t in TARGET]].astype(np.float64)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


@torch.no_grad()
def _apply(fn: Any, inp: dict[str, np.ndarray], meta: dict[str, Any], batch_size: int, dev: torch.device) -> Tensor:
    outs = []
    for a in range(0, len(inp["mask"]), batch_size):
        sl = slice(a, a + batch_size)
        x = torch.from_numpy(normalize(inp["x"][sl], inp["mask"][sl], meta)).to(dev)
        m = torch.from_numpy(inp["mask"][sl]).to(dev)
        tok = torch.from_numpy(inp["tokens"][sl]).to(dev) if "tokens" in inp else None
        outs.append(fn(x, m, tok).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0, 3)


# --------------------------------------------------------------------------- fine-tuning
def finetune_direction(
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: Any,
    *,
    backbone_dir: str | Path | None = None,
    subsets_dir: str | Path | None = None,
    arch: dict[str, Any] | None = None,
    run: Any = None,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one direction model (one cell of the grid) and write it to ``out_dir``; return its meta.

    ``cfg`` is a :class:`physfm.finetune.train.FinetuneConfig` (its head ``pool``, ``hidden`` and
    ``dropout`` are used; ``kind`` is always an MLP). Without ``backbone_dir`` (scratch only), ``arch``
    gives the BackboneConfig and ``features`` (default :data:`physfm.features.ICECUBE_DEFAULT`).
    """
    from physfm.finetune.model import param_groups
    from physfm.finetune.subsets import keys_digest, load_subset, make_subsets
    from physfm.finetune.train import lr_lambda, prepare_backbone
    from physfm.runtime import device_of

    t_start = time.perf_counter()
    ds = open_dataset(data_dir, verify=True)  # the one read of manifest.json; shards re-hashed once
    manifest, data_dir = ds.manifest, ds.path
    device = device_of(cfg.device)
    if subsets_dir is None:
        subsets_dir = Path(out_dir).with_name(Path(out_dir).name + ".subsets")
        make_subsets(ds, [cfg.labels], seed=1, out_dir=subsets_dir, verify=False)
    train_idx = load_subset(subsets_dir, cfg.labels, ds)

    if backbone_dir is None or str(backbone_dir) == "none":
        from physfm.features import ICECUBE_DEFAULT

        arch = {"features": list(ICECUBE_DEFAULT), **(arch or {})}
    backbone, bmeta = prepare_backbone(backbone_dir, cfg.mode, ds, arch, cfg.seed)
    bmeta = dict(bmeta)
    train = _inputs(ds, "train", bmeta, train_idx)
    n_val = ds.n_events["val"]
    val = _inputs(ds, "val", bmeta, np.arange(min(n_val, cfg.val_max_events or n_val)))
    digest = keys_digest(train["event_key"])

    torch.manual_seed(cfg.seed)  # the head starts the same in every mode
    head = cfg.head
    if head.pool not in POOLS:
        raise ValueError(f"direction head pool must be one of {POOLS}, got '{head.pool}'")
    model = DirectionModel(backbone, pool=head.pool, hidden=head.hidden, dropout=head.dropout).to(device)
    groups = param_groups(model, cfg.mode, cfg.lr, cfg.backbone_lr_scale, cfg.layer_decay, cfg.weight_decay)
    if cfg.mode == "frozen":
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))

    def tensors(inp: dict[str, np.ndarray]) -> dict[str, Tensor]:
        t = {"x": torch.from_numpy(normalize(inp["x"], inp["mask"], bmeta)), "mask": torch.from_numpy(inp["mask"])}
        t["y"] = torch.from_numpy(inp["truth"].astype(np.float32))
        if "tokens" in inp:
            t["tokens"] = torch.from_numpy(inp["tokens"])
        return t

    tr, va = tensors(train), tensors(val)
    cache_tr = cache_va = None
    if cfg.mode == "frozen":  # the backbone's states, computed once
        model.backbone.eval()
        keep = 1 if model.uses_class_token_only else None

        def states(x: Tensor, m: Tensor, tok: Tensor | None) -> Tensor:
            h = model.backbone(x, m, tokens=tok)
            return h[:, :keep] if keep else h

        cache_tr, cache_va = _apply(states, train, bmeta, 256, device), _apply(states, val, bmeta, 256, device)

    def predict(t: dict[str, Tensor], cache: Tensor | None, idx: Tensor) -> Tensor:
        m = t["mask"][idx].to(device)
        if cache is not None:
            return model.from_states(cache[idx].to(device), m)
        tok = t["tokens"][idx].to(device) if "tokens" in t else None
        return model(t["x"][idx].to(device), m, tok)

    @torch.no_grad()
    def validate() -> tuple[float, float]:
        model.eval()
        n = len(va["y"])
        pred = torch.cat([predict(va, cache_va, torch.arange(a, min(a + 256, n))) for a in range(0, n, 256)])
        err = angular_error(pred.cpu(), va["y"])
        return float(err.mean()), math.degrees(float(err.median()))

    n = len(tr["y"])
    if n == 0:
        raise DataError(f"{data_dir}: the label subset '{cfg.labels}' is empty")
    bs = min(cfg.batch_size, n)
    rng = np.random.default_rng([cfg.seed, 0xF17E])
    order, pos = rng.permutation(n), 0
    best = {"val_loss": float("inf"), "step": 0, "val_median_deg": float("nan")}
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    bad, step, loss_sum, loss_n = 0, 0, 0.0, 0
    desc = f"direction {cfg.mode} labels={cfg.labels} seed={cfg.seed}"
    bar = tqdm(total=cfg.max_steps, desc=desc, disable=not progress)
    while step < cfg.max_steps:
        if pos + bs > n:
            order, pos = rng.permutation(n), 0
        idx = torch.from_numpy(order[pos : pos + bs])
        pos += bs
        model.train()
        if cfg.mode == "frozen":
            model.backbone.eval()
        loss = angular_loss(predict(tr, cache_tr, idx), tr["y"][idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        step += 1
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val_loss, val_med = validate()
            rec = {"step": step, "train_loss": loss_sum / loss_n, "val_loss": val_loss, "val_median_deg": val_med}
            rec["val_mean_deg"] = math.degrees(val_loss)
            rec["lr"] = opt.param_groups[0]["lr"]
            history.append(rec)
            loss_sum, loss_n = 0.0, 0
            if run is not None:
                run.log_metrics({k: v for k, v in rec.items() if k != "step"}, step=step)
            bar.set_postfix(val_deg=f"{math.degrees(val_loss):.1f}")
            if val_loss < best["val_loss"] - 1e-6:
                best = {"val_loss": val_loss, "step": step, "val_median_deg": val_med}
                best_state = copy.deepcopy(model.state_dict())
                bad = 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    bar.close()
    model.load_state_dict(best_state)
    meta = {
        "kind": KIND,
        "task": "direction",
        "mode": cfg.mode,
        "labels": str(cfg.labels),
        "n_labels": int(n),
        "seed": cfg.seed,
        "classes": [],
        "head": {"pool": head.pool, "hidden": head.hidden, "dropout": head.dropout},
        "config": cfg.to_dict(),
        "data_version": manifest["data_version"],
        "backbone": {
            k: bmeta.get(k)
            for k in ("features", "norm", "max_len", "config", "data_version", "tokenizer_version", "objective")
        },
        "backbone_dir": None if backbone_dir is None else str(backbone_dir),
        "subset": {"digest": digest, "per_class": {}},
        "train": {
            "best_step": best["step"],
            "best_val_loss": best["val_loss"],
            "best_val_mean_deg": math.degrees(best["val_loss"]),
            "best_val_median_deg": best["val_median_deg"],
            "steps": step,
            "stopped_early": step < cfg.max_steps,
            "n_val": int(len(va["y"])),
            "wall_seconds": time.perf_counter() - t_start,
            "device": str(device),
        },
        "history": history,
        "run_id": getattr(run, "run_id", None),
        **(extra_meta or {}),
    }
    model.cpu()
    return save_direction(out_dir, model, meta)


# --------------------------------------------------------------------------- saving, loading, evaluating
def save_direction(out_dir: str | Path, model: DirectionModel, meta: dict[str, Any]) -> dict[str, Any]:
    """Write a direction-model directory atomically (safetensors weights + JSON meta)."""
    from physfm.finetune.model import save_model_dir

    return save_model_dir(out_dir, model, meta, WEIGHTS, META)


def is_direction_model(path: str | Path) -> bool:
    return (Path(path) / META).is_file()


def load_direction(path: str | Path, map_location: str = "cpu") -> tuple[DirectionModel, dict[str, Any]]:
    """Load a direction-model directory (no pickle is ever read)."""
    from physfm.finetune.model import read_model_dir

    meta, state = read_model_dir(path, "direction model", WEIGHTS, META, map_location)
    model = DirectionModel(Backbone(BackboneConfig.from_dict(meta["backbone"]["config"])), **meta["head"])
    model.load_state_dict(state)
    return model.eval(), meta


def predict_direction(
    model_dir: str | Path, data_dir: str | Path, split: str = "test", batch_size: int = 256, device: str = "auto"
) -> dict[str, Any]:
    """Predicted and true unit vectors, event keys and event features of a split, and the model's meta."""
    from physfm.runtime import device_of

    model, meta = load_direction(model_dir)
    dev = device_of(device)
    model.to(dev)
    inp = _inputs(open_dataset(data_dir), split, meta["backbone"], None)
    pred = _apply(model, inp, meta["backbone"], batch_size, dev).numpy()
    return {"pred": pred, "truth": inp["truth"], "event_key": inp["event_key"], "events": inp["events"], "meta": meta}


def evaluate_direction(
    model_dir: str | Path,
    data_dir: str | Path,
    split: str = "test",
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
    predictions: str | Path | None = None,
) -> dict[str, Any]:
    """Angular-error metrics (degrees, lower is better) on ``split`` with bootstrap errors, plus the
    cell the model belongs to; also per event type when the data has ``is_track`` (simulator)."""
    data_dir = open_dataset(data_dir)
    p = predict_direction(model_dir, data_dir, split)
    meta = p["meta"]
    metrics, std = direction_metrics(p["pred"], p["truth"], n_bootstrap, seed)
    enames = data_dir.feature_names("event")
    if "is_track" in enames:
        track = p["events"][:, enames.index("is_track")] > 0.5
        for name, sel in (("tracks", track), ("cascades", ~track)):
            if sel.sum() > 1:
                m, s = direction_metrics(p["pred"][sel], p["truth"][sel], n_bootstrap, seed)
                metrics.update({f"{k}_{name}": v for k, v in m.items()})
                std.update({f"{k}_{name}": v for k, v in s.items()})
    if predictions is not None:
        with atomic_path(predictions) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, pred=p["pred"].astype(np.float32), truth=p["truth"], event_key=p["event_key"])
    cell = {k: meta.get(k) for k in ("mode", "labels", "n_labels", "seed", "run_id", "data_version")}
    cell.update(meta.get("cell", {}))
    return {
        **cell,
        "task": "direction",
        "split": split,
        "classes": [],
        "model_dir": str(model_dir),
        "subset_digest": meta["subset"]["digest"],
        "backbone_objective": meta["backbone"].get("objective"),
        "tokenizer_version": meta["backbone"].get("tokenizer_version"),
        "train": meta["train"],
        "history": meta.get("history", []),
        "lower_is_better": True,
        "n_events": metrics["n_events"],
        "lower_bounds": [],
        "metrics": metrics,
        "std": std,
    }
