"""VQ-VAE tokenizer (OmniJet-α style): an encoder, a codebook of K latent vectors, a decoder.

Two variants (``conditional``):

* per-particle (default): MLP encoder -> latent -> nearest code -> MLP decoder; a particle's code
  depends on that particle only.
* set-conditional: a small transformer encoder over the whole jet (no positional encoding: the
  jet is a set) gives each particle a latent that depends on the others; a transformer decoder
  reconstructs the jet from its codes. Encoding and decoding then need the whole event.

Against codebook collapse: the codebook is initialised by k-means (faiss) on the initial encoder's
latents, updated as an exponential moving average of the latents assigned to each code (no
gradient), and every ``dead_code_every`` steps the codes unused in that window are moved onto
random latents of the current batch (until ``dead_code_stop`` of the training). The encoder gets
the commitment loss ``beta * |z - sg(q)|^2`` and the reconstruction gradient through the
straight-through estimator ``q_st = z + sg(q - z)``. Loss: MSE of the normalised features.

Training runs on CUDA when available (``device = auto``), else CPU; the weights are saved as
safetensors. Encoding runs on CPU unless moved with :meth:`VQVAETokenizer.to`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from physfm.data.dataset import Dataset
from physfm.tokenizers.base import LogFn, Tokenizer
from physfm.tokenizers.kmeans import kmeans_centroids
from physfm.tokenizers.normalization import Normalizer
from physfm.tokenizers.options import VQVAEConfig
from physfm.tokenizers.sample import sample_jets, sample_particles


# ---------------------------------------------------------------------- modules
class Quantizer(nn.Module):
    """Nearest-code lookup with EMA codebook updates, usage counting and dead-code replacement."""

    def __init__(self, codebook_size: int, dim: int, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("codebook", torch.randn(codebook_size, dim))
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", self.codebook.clone())
        self.register_buffer("usage", torch.zeros(codebook_size), persistent=False)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        e = self.codebook
        d = z.pow(2).sum(1, keepdim=True) - 2 * z @ e.T + e.pow(2).sum(1)
        return d.argmin(1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z`` (N, D) -> straight-through quantised (N, D), codes (N,), commitment loss."""
        idx = self.nearest(z)
        q = self.codebook[idx]
        if self.training:
            self._ema_update(z.detach(), idx)
        commit = F.mse_loss(z, q.detach())
        return z + (q - z).detach(), idx, commit

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        k = len(self.codebook)
        counts = torch.bincount(idx, minlength=k).to(z.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, z)
        self.usage += counts
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing
        self.codebook.copy_(self.embed_sum / size[:, None])

    @torch.no_grad()
    def set_codebook(self, vectors: torch.Tensor) -> None:
        self.codebook.copy_(vectors)
        self.embed_sum.copy_(vectors)
        self.cluster_size.fill_(1.0)

    @torch.no_grad()
    def replace_dead(self, z: torch.Tensor, generator: torch.Generator) -> int:
        """Move codes unused since the last call onto random rows of ``z``; return how many."""
        dead = torch.nonzero(self.usage == 0).flatten()
        self.usage.zero_()
        if len(dead) == 0 or len(z) == 0:
            return 0
        pick = torch.randint(len(z), (len(dead),), generator=generator).to(z.device)
        self.codebook[dead] = z[pick]
        self.embed_sum[dead] = z[pick]
        self.cluster_size[dead] = 1.0
        return len(dead)


def mlp(n_in: int, hidden: int, n_out: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.GELU()]
    mods.append(nn.Linear(hidden if layers else n_in, n_out))
    return nn.Sequential(*mods)


class Block(nn.Module):
    """Pre-LayerNorm transformer block over a padded set (keys at padding are masked out)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        h = h + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return h + self.ff(self.ln2(h))


class SetNet(nn.Module):
    """Linear in -> transformer blocks -> LayerNorm -> linear out, per particle of a padded set."""

    def __init__(self, n_in: int, d: int, n_out: int, layers: int, heads: int) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"hidden ({d}) must be divisible by heads ({heads})")
        self.inp, self.out, self.ln = nn.Linear(n_in, d), nn.Linear(d, n_out), nn.LayerNorm(d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for blk in self.blocks:
            h = blk(h, mask)
        return self.out(self.ln(h))


class VQVAE(nn.Module):
    """Encoder, quantizer and decoder; works on padded sets ``(B, L, F)`` with a mask in both variants."""

    def __init__(self, n_features: int, codebook_size: int, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.conditional = cfg.conditional
        if cfg.conditional:
            self.encoder: nn.Module = SetNet(n_features, cfg.hidden, cfg.latent_dim, cfg.layers, cfg.heads)
            self.decoder: nn.Module = SetNet(cfg.latent_dim, cfg.hidden, n_features, cfg.layers, cfg.heads)
        else:
            self.encoder = mlp(n_features, cfg.hidden, cfg.latent_dim, cfg.layers)
            self.decoder = mlp(cfg.latent_dim, cfg.hidden, n_features, cfg.layers)
        self.quantizer = Quantizer(codebook_size, cfg.latent_dim, cfg.ema_decay)

    def latents(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Latents of the real particles, (n_real, D)."""
        if self.conditional:
            return self.encoder(x, mask)[mask]
        return self.encoder(x[mask])

    def reconstruct(self, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Quantised latents of the real particles (n_real, D) -> features (n_real, F)."""
        if self.conditional:
            dense = q.new_zeros((*mask.shape, q.shape[1]))
            dense[mask] = q
            return self.decoder(dense, mask)[mask]
        return self.decoder(q)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.latents(x, mask)
        q, idx, commit = self.quantizer(z)
        return self.reconstruct(q, mask), idx, commit, z


# ---------------------------------------------------------------------- tokenizer
def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda; got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch sees no CUDA GPU; use device=auto or cpu")
    return torch.device(device)


class VQVAETokenizer(Tokenizer):
    """Codes from a trained VQ-VAE; decoding runs the decoder on the code vectors."""

    method = "vqvae"
    Config = VQVAEConfig
    encode_chunk = 65536  # particles (per-particle) per forward pass when encoding
    encode_chunk_jets = 512  # jets (conditional) per forward pass

    def __init__(self, features: list[str], norm: Normalizer, model: VQVAE, config: VQVAEConfig, **kw: Any):
        super().__init__(features, norm, len(model.quantizer.codebook), config, **kw)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self._index: faiss.IndexFlatL2 | None = None

    def _nearest(self, z: torch.Tensor) -> np.ndarray:
        """Nearest code of latents ``z``: faiss on CPU (an order of magnitude faster than torch), torch on GPU."""
        if z.device.type != "cpu":
            return self.model.quantizer.nearest(z).cpu().numpy()
        if self._index is None:
            book = self.model.quantizer.codebook.detach().numpy()
            self._index = faiss.IndexFlatL2(book.shape[1])
            self._index.add(np.ascontiguousarray(book, dtype=np.float32))
        if len(z) == 0:
            return np.zeros(0, dtype=np.int64)
        return self._index.search(np.ascontiguousarray(z.numpy(), dtype=np.float32), 1)[1][:, 0].astype(np.int64)

    def to(self, device: str | torch.device) -> VQVAETokenizer:
        """Run encode/decode on ``device`` (e.g. ``"cuda"``)."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self._index = None
        return self

    @classmethod
    def fit(
        cls,
        data_dir: Dataset,
        features: list[str],
        codebook_size: int,
        config: VQVAEConfig,
        *,
        seed: int = 0,
        progress: bool = True,
        log: LogFn | None = None,
    ) -> VQVAETokenizer:
        if codebook_size < 2:
            raise ValueError(f"codebook size must be >= 2, got {codebook_size}")
        device = resolve_device(config.device)
        torch.manual_seed(seed)
        if config.conditional:
            x, mask = sample_jets(data_dir, "train", features, config.sample, config.max_len, seed)
            norm = Normalizer.fit(features, x[mask])
            z, m = torch.from_numpy(norm.transform(x)), torch.from_numpy(mask)
            z[~m] = 0.0
        else:
            x = sample_particles(data_dir, "train", features, config.sample, seed)
            norm = Normalizer.fit(features, x)
            z, m = torch.from_numpy(norm.transform(x))[:, None, :], torch.ones(len(x), 1, dtype=torch.bool)
        model = VQVAE(len(features), codebook_size, config).to(device)
        t0 = time.perf_counter()
        history = train(model, z.to(device), m.to(device), config, seed=seed, progress=progress, log=log)
        info = {
            "train_particles": int(m.sum()),
            "train_jets": len(z) if config.conditional else None,
            "fit_seconds": time.perf_counter() - t0,
            "device": str(device),
            "history": history,
        }
        return cls(features, norm, model.cpu(), config, fit_info=info)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}

    @classmethod
    def from_arrays(
        cls, spec: dict[str, Any], norm: Normalizer, config: VQVAEConfig, arrays: dict[str, np.ndarray]
    ) -> VQVAETokenizer:
        model = VQVAE(len(spec["features"]), spec["codebook_size"], config)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
        return cls(spec["features"], norm, model, config)

    @torch.no_grad()
    def _encode_sets(self, z: np.ndarray, mask: np.ndarray) -> np.ndarray:
        codes = np.full(mask.shape, -1, dtype=np.int64)
        if not self.model.conditional:
            rows = torch.from_numpy(np.ascontiguousarray(z[mask]))
            out = [self._nearest(self.model.encoder(c.to(self.device))) for c in rows.split(self.encode_chunk)]
            codes[mask] = np.concatenate(out) if out else np.zeros(0, np.int64)
            return codes
        for a in range(0, len(z), self.encode_chunk_jets):
            zb, mb = _dense(z[a : a + self.encode_chunk_jets], mask[a : a + self.encode_chunk_jets], self.device)
            codes[a : a + len(zb)][mask[a : a + len(zb)]] = self._nearest(self.model.latents(zb, mb))
        return codes

    @torch.no_grad()
    def _decode_sets(self, codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.zeros((*mask.shape, len(self.features)), dtype=np.float32)
        book = self.model.quantizer.codebook
        if not self.model.conditional:
            rows = torch.from_numpy(codes[mask]).to(self.device)
            parts = [self.model.decoder(book[c]).cpu() for c in rows.split(self.encode_chunk)]
            out[mask] = torch.cat(parts).numpy() if parts else np.zeros((0, len(self.features)), np.float32)
            return out
        for a in range(0, len(codes), self.encode_chunk_jets):
            mb = torch.from_numpy(mask[a : a + self.encode_chunk_jets]).to(self.device)
            cb = torch.from_numpy(codes[a : a + self.encode_chunk_jets]).to(self.device)
            out[a : a + len(mb)][mask[a : a + len(mb)]] = self.model.reconstruct(book[cb[mb]], mb).cpu().numpy()
        return out


def _dense(z: np.ndarray, mask: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    zt = torch.from_numpy(np.ascontiguousarray(z)).to(device)
    mt = torch.from_numpy(np.ascontiguousarray(mask)).to(device)
    return zt.masked_fill(~mt[..., None], 0.0), mt


# ---------------------------------------------------------------------- training
def train(
    model: VQVAE,
    z: torch.Tensor,
    mask: torch.Tensor,
    cfg: VQVAEConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    log: LogFn | None = None,
    log_every: int | None = None,
) -> list[dict[str, float]]:
    """Train on normalised sets ``z`` (N, L, F) with ``mask``; return the history logged every ``log_every`` steps.

    ``log_every`` defaults to 50 steps, or a tenth of the run when that is shorter.
    """
    log_every = log_every or max(1, min(50, cfg.steps // 10))
    gen = torch.Generator().manual_seed(seed)
    k = len(model.quantizer.codebook)
    if cfg.kmeans_init:
        with torch.no_grad():
            sel = torch.randperm(len(z), generator=gen)[: max(1, min(len(z), (64 * k) // z.shape[1] + 1))]
            lat = model.latents(z[sel.to(z.device)], mask[sel.to(z.device)]).cpu().numpy()
        if len(lat) >= k:
            cents = kmeans_centroids(lat, k, niter=20, seed=seed, device="cpu")
            model.quantizer.set_codebook(torch.from_numpy(cents).to(z.device))
    batch = cfg.jet_batch_size if cfg.conditional else cfg.batch_size
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    history: list[dict[str, float]] = []
    window = {"loss": 0.0, "recon": 0.0, "commit": 0.0, "n": 0, "replaced": 0}
    codes_seen = torch.zeros(k, device=z.device)
    model.train()
    bar = tqdm(range(cfg.steps), desc=f"vqvae K={k}", disable=not progress, unit="step")
    for step in bar:
        sel = torch.randint(len(z), (min(batch, len(z)),), generator=gen).to(z.device)
        xb, mb = z[sel], mask[sel]
        recon, idx, commit, lat = model(xb, mb)
        rec = F.mse_loss(recon, xb[mb])
        loss = rec + cfg.beta * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        codes_seen += torch.bincount(idx, minlength=k)
        window["loss"] += loss.item()
        window["recon"] += rec.item()
        window["commit"] += commit.item()
        window["n"] += 1
        if cfg.dead_code_every and (step + 1) % cfg.dead_code_every == 0 and step < cfg.dead_code_stop * cfg.steps:
            window["replaced"] += model.quantizer.replace_dead(lat.detach(), gen)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            p = codes_seen / codes_seen.sum()
            entry = {
                "step": step + 1,
                "loss": window["loss"] / window["n"],
                "recon": window["recon"] / window["n"],
                "commit": window["commit"] / window["n"],
                "utilisation": float((codes_seen > 0).float().mean()),
                "perplexity": float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())),
                "dead_replaced": window["replaced"],
                "lr": sched.get_last_lr()[0],
            }
            history.append(entry)
            if log is not None:
                log({f"train.{key}": v for key, v in entry.items() if key != "step"}, step + 1)
            bar.set_postfix(recon=f"{entry['recon']:.4f}", used=f"{entry['utilisation']:.0%}")
            window = {"loss": 0.0, "recon": 0.0, "commit": 0.0, "n": 0, "replaced": 0}
            codes_seen.zero_()
    model.eval()
    return history
