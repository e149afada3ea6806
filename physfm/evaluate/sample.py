"""Sampling jets from a next-token (OmniJet-alpha) or flow (OmniLearn) backbone; comparing them with real jets.

The ``sample`` stage (``physfm sample``; settings :class:`SampleConfig`, the ``pretrain.sample``
config section).

:func:`sample` draws code sequences autoregressively: the class token is the start, each step
predicts the next particle's code or stop; in ``features`` input mode the sampled code is decoded
by the tokenizer and fed back as the next particle's features. :func:`compare` computes jet mass,
jet pT and multiplicity of generated, real and tokenized-real jets (the tokenizer's own closure,
the best generation can do) and their Wasserstein distances, and plots the histograms.

A ``flow`` backbone (:mod:`physfm.models.flow`) generates jets conditionally: :func:`sample_flow` takes
the multiplicity and the jet globals of ``n`` real jets of the split and integrates the EMA model's ODE
from noise (``ode_steps`` steps of ``ode_solver``); those real jets are the comparison. The multiplicity
is therefore equal by construction (its distance is 0) and the mass is one of the conditions when
``log_mass`` is among the backbone's ``global_targets``: the mass and pT distances say how well the
generated particles add up to the jet they were asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physfm.models.backbone import Backbone, normalize
from physfm.models.objectives import OBJECTIVES, NextTokenPrediction

KINEMATIC_FEATURES = ("log_pt", "deta", "dphi")


@dataclass
class SampleConfig:
    """Settings of the ``sample`` stage (config section ``pretrain.sample``)."""

    n: int = 1000  # jets to sample
    temperature: float = 1.0  # softmax temperature
    top_k: int = 0  # sample among the k most likely tokens (0 = all)
    seed: int = 0
    split: str = "test"  # real jets compared with
    batch_size: int = 256
    ode_steps: int = 20  # flow: ODE steps from noise to jets
    ode_solver: str = "midpoint"  # flow: "euler" or "midpoint"


def load_objective(directory: str | Path, meta: dict[str, Any], backbone: Backbone | None = None) -> Any:
    """The pretraining objective of a saved backbone, with its trained heads (safetensors); ``backbone``
    is attached first (the objectives whose state holds a copy of it need it)."""
    from physfm.pretrain.checkpoints import load_heads

    cls = OBJECTIVES[meta["objective"]]
    names = meta.get("global_targets", {}).get("names", [])
    obj = cls(
        meta["config"]["d_model"],
        meta.get("objective_options", {}),
        codebook_size=meta.get("codebook_size", 0),
        n_features=len(meta["features"]),
        features=list(meta["features"]),
        global_names=names,
        global_weight=meta.get("pretrain", {}).get("global_weight", 0.0) if names else 0.0,
    )
    if backbone is not None:
        obj.attach(backbone)  # objectives with an EMA copy (flow) or attach-built heads (mpm2)
    obj.load_state_dict(load_heads(directory))
    return obj.eval()


@torch.no_grad()
def sample(
    model: Backbone,
    objective: NextTokenPrediction,
    meta: dict[str, Any],
    tokenizer: Any,
    n: int,
    *,
    batch_size: int = 256,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` generated events: codes ``(n, max_len)`` int64 (-1 after stop) and mask ``(n, max_len)``."""
    if not isinstance(objective, NextTokenPrediction):
        raise ValueError(f"generation needs a next_token backbone; this one was pretrained with '{meta['objective']}'")
    from tqdm.auto import tqdm

    length, k = int(meta["max_len"]), objective.codebook_size
    tokens_mode = objective.options.input == "tokens"
    gen = torch.Generator(device="cpu").manual_seed(seed)
    model, objective = model.to(device).eval(), objective.to(device).eval()
    all_codes, all_mask = [], []
    for start in tqdm(range(0, n, batch_size), desc="generate", disable=not progress):
        b = min(batch_size, n - start)
        codes = np.full((b, length), -1, dtype=np.int64)
        mask = np.zeros((b, length), dtype=bool)
        x = np.zeros((b, length, len(meta["features"])), dtype=np.float32)
        alive = np.ones(b, dtype=bool)
        for t in range(length):
            m = torch.from_numpy(mask[:, :t]).to(device)
            xt = torch.from_numpy(x[:, :t]).to(device)
            tok_in = torch.from_numpy(np.where(mask[:, :t], codes[:, :t], 0)).to(device) if tokens_mode else None
            h = model(None if tokens_mode else xt, m, tokens=tok_in)
            logits = objective.head(h[:, model.config.n_cls - 1 + t]).float().cpu() / max(temperature, 1e-6)
            if t == 0:
                logits[:, objective.stop] = -torch.inf  # an event has at least one particle
            if top_k:
                kth = torch.topk(logits, min(top_k, k + 1), dim=-1).values[:, -1:]
                logits[logits < kth] = -torch.inf
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1).numpy()
            stop = (nxt == objective.stop) | ~alive
            alive &= ~stop
            codes[alive, t] = nxt[alive]
            mask[alive, t] = True
            if not alive.any():
                break
            if not tokens_mode:
                decoded = tokenizer.decode(codes[:, : t + 1], mask[:, : t + 1])
                x[:, t] = normalize(decoded, mask[:, : t + 1], meta)[:, t]
        all_codes.append(codes)
        all_mask.append(mask)
    return np.concatenate(all_codes), np.concatenate(all_mask)


def jet_observables(x: np.ndarray, mask: np.ndarray, features: list[str]) -> dict[str, np.ndarray]:
    """Jet mass and pT (GeV, massless particles) and multiplicity from (log_pt, deta, dphi)."""
    out = {"multiplicity": mask.sum(1).astype(np.float64)}
    if not all(f in features for f in KINEMATIC_FEATURES):
        return out
    log_pt, eta, phi = (x[..., features.index(f)].astype(np.float64) for f in KINEMATIC_FEATURES)
    pt = np.where(mask, np.exp(np.clip(log_pt, -20, 20)), 0.0)
    px, py = (pt * np.cos(phi)).sum(1), (pt * np.sin(phi)).sum(1)
    pz, e = (pt * np.sinh(eta)).sum(1), (pt * np.cosh(eta)).sum(1)
    out["jet_pt"] = np.hypot(px, py)
    out["jet_mass"] = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))
    return out


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """Wasserstein-1 (earth mover's) distance of two 1-D samples: the area between their CDFs."""
    u, v = np.sort(np.asarray(u, np.float64)), np.sort(np.asarray(v, np.float64))
    grid = np.sort(np.concatenate([u, v]))
    cu = np.searchsorted(u, grid[:-1], side="right") / len(u)
    cv = np.searchsorted(v, grid[:-1], side="right") / len(v)
    return float(np.sum(np.abs(cu - cv) * np.diff(grid)))


def compare(
    generated: dict[str, np.ndarray], real: dict[str, np.ndarray], tokenized: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Wasserstein-1 distance and means of each observable: generated vs real (and tokenized vs real)."""
    out: dict[str, Any] = {}
    for name in generated:
        if name not in real:
            continue
        row = {
            "wasserstein_generated": float(wasserstein_1d(generated[name], real[name])),
            "mean_generated": float(np.mean(generated[name])),
            "mean_real": float(np.mean(real[name])),
        }
        if tokenized is not None and name in tokenized:
            row["wasserstein_tokenized"] = float(wasserstein_1d(tokenized[name], real[name]))
        out[name] = row
    return out


def plot_comparison(
    generated: dict[str, np.ndarray],
    real: dict[str, np.ndarray],
    tokenized: dict[str, np.ndarray] | None,
    path: str | Path,
    title: str = "",
) -> None:
    """One histogram per observable: real, tokenized real and generated jets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("jet_mass", "jet_pt", "multiplicity") if n in generated and n in real]
    units = {"jet_mass": "jet mass [GeV]", "jet_pt": "jet $p_T$ [GeV]", "multiplicity": "particles per jet"}
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        lo, hi = np.percentile(np.concatenate([real[name], generated[name]]), [0.5, 99.5])
        hi = hi if hi > lo else lo + 1.0  # one value only (e.g. every jet at max_len): one bin around it
        bins = np.linspace(lo, hi, 40)
        ax.hist(real[name], bins=bins, density=True, histtype="stepfilled", alpha=0.3, color="k", label="real")
        if tokenized is not None and name in tokenized:
            ax.hist(tokenized[name], bins=bins, density=True, histtype="step", ls="--", color="gray", label="tokenized")
        ax.hist(generated[name], bins=bins, density=True, histtype="step", lw=1.5, color="C1", label="generated")
        ax.set_xlabel(units[name])
        ax.set_ylabel("density")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_from_model(
    cfg: SampleConfig,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Sample ``cfg.n`` jets from a next-token backbone into ``out_dir`` (``generated.npz``); with
    ``data_dir``, compare with real jets of ``cfg.split`` (``comparison.json``, ``generation.png``).
    A flow backbone goes to :func:`sample_flow`."""
    n, split = cfg.n, cfg.split
    from physfm.io import write_json
    from physfm.pretrain.checkpoints import load_backbone
    from physfm.tokenizers import load_tokenizer

    model_dir, out = Path(model_dir), Path(out_dir)
    model, meta = load_backbone(model_dir)
    if meta["objective"] == "flow":
        return sample_flow(cfg, model_dir, out, data_dir=data_dir, device=device)
    objective = load_objective(model_dir, meta)
    tok = load_tokenizer(model_dir / "tokenizer")
    codes, mask = sample(
        model,
        objective,
        meta,
        tok,
        n,
        batch_size=cfg.batch_size,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        seed=cfg.seed,
        device=device,
        progress=progress,
    )
    feats = list(tok.features)
    x = tok.decode(codes, mask)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "generated.npz", codes=codes, mask=mask, x=x, features=np.array(feats))
    summary: dict[str, Any] = {
        "n_generated": int(n),
        "mean_multiplicity": float(mask.sum(1).mean()),
        "codes_used": int(len(np.unique(codes[mask]))),
        "settings": {"temperature": cfg.temperature, "top_k": cfg.top_k, "seed": cfg.seed, "split": split},
        "backbone_data_version": meta["data_version"],
        "tokenizer_version": meta["tokenizer_version"],
    }
    if data_dir is not None:
        from physfm.data.loader import load_arrays

        real = load_arrays(data_dir, split, features=feats, max_len=int(meta["max_len"]))
        gen_obs = jet_observables(x, mask, feats)
        real_obs = jet_observables(real["x"], real["mask"], feats)
        rt = tok.decode(tok.encode(real["x"], real["mask"]), real["mask"])
        tok_obs = jet_observables(rt, real["mask"], feats)
        summary["n_real"] = int(len(real["mask"]))
        summary["observables"] = compare(gen_obs, real_obs, tok_obs)
        plot_comparison(gen_obs, real_obs, tok_obs, out / "generation.png", title=f"{n} generated vs real ({split})")
    write_json(out / "comparison.json", summary)
    return summary


def sample_flow(
    cfg: SampleConfig, model_dir: str | Path, out_dir: str | Path, *, data_dir: str | Path | None, device: str = "cpu"
) -> dict[str, Any]:
    """Generate jets from a ``flow`` backbone, conditioned on the multiplicity and globals of the first
    ``cfg.n`` real jets of ``cfg.split``, and compare them with those jets (see the module docstring)."""
    from physfm.data.loader import load_arrays
    from physfm.features import GLOBAL_TARGETS, global_targets
    from physfm.io import write_json
    from physfm.models.backbone import denormalize
    from physfm.pretrain.checkpoints import load_backbone

    if data_dir is None:
        raise ValueError("a flow backbone generates jets conditioned on real ones: pass --data DIR")
    model_dir, out = Path(model_dir), Path(out_dir)
    model, meta = load_backbone(model_dir)
    objective = load_objective(model_dir, meta, backbone=model).to(device)
    feats = list(meta["features"])
    g = meta.get("global_targets", {"names": [], "mean": [], "std": []})
    names = list(feats)
    for gname in g["names"]:
        names += [f for f in GLOBAL_TARGETS[gname].features if f not in names]
    real = load_arrays(data_dir, cfg.split, features=names, max_len=int(meta["max_len"]))
    n = min(cfg.n, len(real["mask"]))
    xr, mask = real["x"][:n], real["mask"][:n]
    raw = {name: xr[..., j] for j, name in enumerate(names)}
    cond = (global_targets(g["names"], raw, mask) - np.asarray(g["mean"])) / np.asarray(g["std"])
    parts = []
    for start in range(0, n, cfg.batch_size):
        m = torch.from_numpy(mask[start : start + cfg.batch_size]).to(device)
        c = torch.from_numpy(np.asarray(cond[start : start + cfg.batch_size], np.float32)).to(device)
        gen = objective.generate(m, c, steps=cfg.ode_steps, solver=cfg.ode_solver, seed=cfg.seed + start)
        parts.append(gen.cpu().numpy())
    x = denormalize(np.concatenate(parts) if parts else np.zeros((0, *mask.shape[1:], len(feats))), mask, meta)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "generated.npz", mask=mask, x=x, features=np.array(feats))
    real_x = xr[..., : len(feats)]
    gen_obs, real_obs = jet_observables(x, mask, feats), jet_observables(real_x, mask, feats)
    summary: dict[str, Any] = {
        "n_generated": int(n),
        "n_real": int(n),
        "mean_multiplicity": float(mask.sum(1).mean()),
        "conditions": list(g["names"]) + ["multiplicity"],
        "settings": {"ode_steps": cfg.ode_steps, "ode_solver": cfg.ode_solver, "seed": cfg.seed, "split": cfg.split},
        "backbone_data_version": meta["data_version"],
        "tokenizer_version": meta.get("tokenizer_version"),
        "observables": compare(gen_obs, real_obs),
    }
    plot_comparison(gen_obs, real_obs, None, out / "generation.png", title=f"{n} flow-generated vs real ({cfg.split})")
    write_json(out / "comparison.json", summary)
    return summary
