"""The cost of PET's parts on the backbone: the local kNN block and ParT-style pairwise attention biases.

Times one training step (forward, backward, AdamW) of the backbone alone on real jets, for

* ``plain``: the transformer (the reference, measured in the same run);
* ``knn``: with the local kNN edge block (``model.local: knn``, physfm/models/pet.py);
* ``pair``: with interaction biases (ln ΔR_ij, ln kT_ij, ln m²_ij of massless particles, an MLP to one
  bias per head, added to every layer's attention logits as ParT / PET v2 do). Not in the library:
  built here from the backbone's own blocks to measure what wiring it in would cost;
* ``knn+pair``: both,

timed round-robin (one step of each variant per round, so all see the same load on shared cores), and
prints each one's median seconds per step, its ratio to ``plain``, and its FLOPs per jet counted by
torch's FlopCounterMode (forward + backward).

    python benchmarks/pet.py --data results/default/data --threads 1
    python benchmarks/pet.py --data DIR --size gpu --device cuda
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from harness import add_machine_args, counted_flops, parse_args, round_robin, write_json
from torch import Tensor, nn

from physfm.data.loader import load_arrays
from physfm.features import JET_DEFAULT
from physfm.models.backbone import Backbone, BackboneConfig, padding_attention_mask

SIZES = {
    "cpu": {"d_model": 128, "n_layers": 4, "n_heads": 8, "max_len": 64, "batch_size": 64},
    "gpu": {"d_model": 512, "n_layers": 8, "n_heads": 8, "max_len": 128, "batch_size": 256},
}


def pair_features(log_pt: Tensor, eta: Tensor, phi: Tensor) -> Tensor:
    """``(B, L, L, 3)``: ln ΔR, ln kT = ln(min(pT_i, pT_j) ΔR), ln m² (massless) of every particle pair."""
    pt = torch.exp(log_pt)
    deta = eta[:, :, None] - eta[:, None, :]
    dphi = torch.remainder(phi[:, :, None] - phi[:, None, :] + torch.pi, 2 * torch.pi) - torch.pi
    dr = torch.sqrt(deta**2 + dphi**2).clamp(min=1e-8)
    kt = torch.minimum(pt[:, :, None], pt[:, None, :]) * dr
    m2 = 2 * pt[:, :, None] * pt[:, None, :] * (torch.cosh(deta) - torch.cos(dphi))
    return torch.stack([torch.log(dr), torch.log(kt.clamp(min=1e-8)), torch.log(m2.clamp(min=1e-8))], dim=-1)


class PairBias(nn.Module):
    """Per-head attention bias from the pair features (ParT's interaction embedding, one MLP per pair)."""

    def __init__(self, n_heads: int, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, n_heads))

    def forward(self, pairs: Tensor, mask: Tensor, n_cls: int) -> Tensor:
        b, length = mask.shape
        bias = self.mlp(pairs).permute(0, 3, 1, 2)  # (B, H, L, L)
        full = bias.new_zeros(b, bias.shape[1], n_cls + length, n_cls + length)
        full[:, :, n_cls:, n_cls:] = bias
        allowed, _ = padding_attention_mask(mask, n_cls, False)
        return full if allowed is None else full.masked_fill(~allowed, float("-inf"))


def forward_with_bias(model: Backbone, bias_net: PairBias, x: Tensor, mask: Tensor, pairs: Tensor) -> Tensor:
    """The backbone's forward with the pair bias as every block's (float) attention mask."""
    h = model.embed_inputs(x, mask)
    n_cls = model.config.n_cls
    h = torch.cat([model.cls.expand(h.shape[0], -1, -1), h], dim=1)
    bias = bias_net(pairs, mask, n_cls)
    for block in model.blocks:
        h = block(h, bias, False)
    return model.ln_f(h)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="converted jet dataset")
    ap.add_argument("--size", default="cpu", choices=sorted(SIZES))
    ap.add_argument("--steps", type=int, default=8, help="timed rounds (one step of every variant each)")
    add_machine_args(ap)
    args = parse_args(ap)
    dev = torch.device(args.device)
    size = SIZES[args.size]
    feats = list(JET_DEFAULT)
    first = np.arange(size["batch_size"])
    arr = load_arrays(args.data, "train", features=feats, max_len=size["max_len"], indices=first)
    raw, mask = torch.from_numpy(arr["x"]).float(), torch.from_numpy(arr["mask"])
    real = raw[mask]
    x = ((raw - real.mean(0)) / real.std(0).clamp(min=1e-6)) * mask.unsqueeze(-1)
    pairs = pair_features(*(raw[..., feats.index(f)] for f in ("log_pt", "deta", "dphi")))
    x, mask, pairs = x.to(dev), mask.to(dev), pairs.to(dev)
    result: dict = {"device": str(dev), "threads": torch.get_num_threads(), "size": size, "variants": {}}
    variants: dict[str, dict] = {}
    for name in ("plain", "knn", "pair", "knn+pair"):
        torch.manual_seed(0)
        cfg = BackboneConfig(
            n_features=len(feats),
            d_model=size["d_model"],
            n_layers=size["n_layers"],
            n_heads=size["n_heads"],
            max_len=size["max_len"],
            local="knn" if "knn" in name else "none",
        )
        model = Backbone(cfg).to(dev)
        bias_net = PairBias(cfg.n_heads).to(dev) if "pair" in name else None
        params = list(model.parameters()) + (list(bias_net.parameters()) if bias_net is not None else [])
        variants[name] = {
            "model": model,
            "bias": bias_net,
            "opt": torch.optim.AdamW(params, lr=1e-4),
            "n_params": sum(p.numel() for p in params),
        }

    def loss_fn(v: dict) -> Tensor:
        h = v["model"](x, mask) if v["bias"] is None else forward_with_bias(v["model"], v["bias"], x, mask, pairs)
        return h.float().pow(2).mean()

    def step(v: dict) -> None:
        loss = loss_fn(v)
        v["opt"].zero_grad(set_to_none=True)
        loss.backward()
        v["opt"].step()

    for v in variants.values():
        v["flops"] = counted_flops(lambda v=v: loss_fn(v), len(mask))
        for _ in range(2):
            step(v)
    steps = {name: (lambda r, v=v: step(v)) for name, v in variants.items()}
    for name, times in round_robin(steps, range(args.steps), dev).items():  # every variant sees the same load
        variants[name]["times"] = times
    ref_sec = statistics.median(variants["plain"]["times"])
    for name, v in variants.items():
        sec = statistics.median(v["times"])
        result["variants"][name] = {
            "seconds_per_step_median": sec,
            "ratio_to_plain": sec / ref_sec,
            "gflops_per_jet": v["flops"] / 1e9,
            "n_params": v["n_params"],
        }
        print(
            f"{name:9s} {sec * 1e3:8.1f} ms/step  ratio to plain {sec / ref_sec:.2f}  "
            f"{v['flops'] / 1e9:.3f} GFLOP/jet (fwd+bwd, counted)  ratio {v['flops'] / variants['plain']['flops']:.2f}"
        )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
