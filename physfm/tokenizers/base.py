"""The tokenizer interface, its on-disk artefact, and safe loading.

A tokenizer maps each particle's features (``tok.features``, physfm.features names, raw units) to
one of ``tok.codebook_size`` integer codes and back. Inputs are standardised with a
:class:`~physfm.tokenizers.normalization.Normalizer` fitted on the train split; the method works in
that normalised space.

Artefact directory (written by :meth:`Tokenizer.save`, read by :func:`load_tokenizer`)::

    manifest.json         data_version of the input dataset, tokenizer_version, sha256 of each file
    tokenizer.json        method, features, codebook size, normalisation per feature, method config
    weights.safetensors   the codebook (k-means), bin edges/centres (binning) or network weights (VQ-VAE)
    metrics.json, plots/  quality on the validation split (written by physfm.tokenizers.fit.make_tokenizer)

Nothing is unpickled: arrays are safetensors, everything else JSON. ``tokenizer_version`` is a hash
of the content (method, features, config, normalisation, array bytes, input data_version), so the
same fit on the same data gives the same version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from physfm import __version__
from physfm.data.dataset import Dataset
from physfm.data.shards import DataError
from physfm.io import atomic_path, read_json, sha256_file, sha256_json, write_json
from physfm.tokenizers.normalization import Normalizer
from physfm.tokenizers.options import make_config

FORMAT_VERSION = 1
LogFn = Callable[[dict[str, float], int], None]
WEIGHTS = "weights.safetensors"
SPEC = "tokenizer.json"
MANIFEST = "manifest.json"

#: method name -> "module:Class", imported on first use (so ``import physfm.tokenizers`` stays light).
METHODS: dict[str, str] = {
    "kmeans": "physfm.tokenizers.kmeans:KMeansTokenizer",
    "vqvae": "physfm.tokenizers.vqvae:VQVAETokenizer",
    "binning": "physfm.tokenizers.binning:BinningTokenizer",
}


def tokenizer_class(method: str) -> type[Tokenizer]:
    if method not in METHODS:
        raise ValueError(f"unknown tokenizer method '{method}'; choose one of {', '.join(METHODS)}")
    module, name = METHODS[method].split(":")
    return getattr(importlib.import_module(module), name)


class Tokenizer:
    """Base class: particle features (B, L, F) <-> codes (B, L); subclasses implement the method.

    Per-particle methods implement :meth:`_encode_rows` / :meth:`_decode_rows` on normalised
    ``(N, F)`` rows; a set-conditional method overrides :meth:`_encode_sets` / :meth:`_decode_sets`.
    """

    method: ClassVar[str] = ""
    Config: ClassVar[type] = object  # a dataclass of the method's options (see options_help)

    def __init__(
        self,
        features: list[str],
        norm: Normalizer,
        codebook_size: int,
        config: Any,
        data_version: str = "",
        fit_info: dict[str, Any] | None = None,
    ) -> None:
        self.features = list(features)
        self.norm = norm
        self.codebook_size = int(codebook_size)
        self.config = config
        self.data_version = data_version
        self.fit_info: dict[str, Any] = fit_info or {}

    # ------------------------------------------------------------------ to implement
    @classmethod
    def fit(
        cls,
        data_dir: Dataset,
        features: list[str],
        codebook_size: int,
        config: Any,
        *,
        seed: int = 0,
        progress: bool = True,
        log: LogFn | None = None,
    ) -> Tokenizer:
        """Fit on the train split of ``data_dir`` (normalisation included); ``log(metrics, step)`` gets progress."""
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything the method learned, as named arrays (saved to ``weights.safetensors``)."""
        raise NotImplementedError

    @classmethod
    def from_arrays(cls, spec: dict[str, Any], norm: Normalizer, config: Any, arrays: dict[str, np.ndarray]) -> Any:
        raise NotImplementedError

    def _encode_rows(self, z: np.ndarray) -> np.ndarray:
        """Normalised particles (N, F) -> codes (N,) int64."""
        raise NotImplementedError

    def _decode_rows(self, codes: np.ndarray) -> np.ndarray:
        """Codes (N,) -> normalised particles (N, F) float32."""
        raise NotImplementedError

    def _encode_sets(self, z: np.ndarray, mask: np.ndarray) -> np.ndarray:
        codes = np.full(mask.shape, -1, dtype=np.int64)
        codes[mask] = self._encode_rows(np.ascontiguousarray(z[mask]))
        return codes

    def _decode_sets(self, codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
        z = np.zeros((*mask.shape, len(self.features)), dtype=np.float32)
        z[mask] = self._decode_rows(codes[mask])
        return z

    # ------------------------------------------------------------------ public API
    @property
    def version(self) -> str:
        """Content hash of the tokenizer (16 hex digits); also ``tokenizer_version`` in its manifest."""
        content = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "features": self.features,
            "codebook_size": self.codebook_size,
            "config": dataclasses.asdict(self.config),
            "normalisation": self.norm.to_json(),
            "data_version": self.data_version,
            "arrays": {k: _array_digest(v) for k, v in sorted(self.arrays().items())},
        }
        return sha256_json(content)[:16]

    def encode(self, x: Any, mask: Any) -> np.ndarray:
        """Raw features ``x`` (B, L, F) and ``mask`` (B, L) (True = real) -> codes (B, L) int64, -1 at padding."""
        x, mask = self._check_inputs(x, mask)
        if not np.isfinite(x[mask]).all():
            raise ValueError("x holds NaN or inf at real (unmasked) particles; tokenizers need finite features")
        codes = self._encode_sets(self.norm.transform(x), mask)
        codes[~mask] = -1
        return codes

    def decode(self, codes: Any, mask: Any) -> np.ndarray:
        """Codes (B, L) and ``mask`` (B, L) -> raw-unit features (B, L, F) float32, zeros at padding."""
        codes = np.asarray(codes).astype(np.int64, copy=False)
        mask = np.asarray(mask, dtype=bool)
        if codes.ndim != 2 or mask.shape != codes.shape:
            raise ValueError(f"codes and mask must both be (B, L); got {codes.shape} and {mask.shape}")
        real = codes[mask]
        if len(real) and (real.min() < 0 or real.max() >= self.codebook_size):
            raise ValueError(
                f"codes at real particles must lie in [0, {self.codebook_size}); got [{real.min()}, {real.max()}]"
            )
        x = self.norm.inverse(self._decode_sets(codes, mask))
        x[~mask] = 0.0
        return x

    def encode_particles(self, x: Any) -> np.ndarray:
        """Per-particle convenience: (N, F) raw features -> (N,) codes (the whole array is one set)."""
        x = np.asarray(x, dtype=np.float32)
        return self.encode(x[None], np.ones((1, len(x)), dtype=bool))[0]

    def decode_particles(self, codes: Any) -> np.ndarray:
        codes = np.asarray(codes)
        return self.decode(codes[None], np.ones((1, len(codes)), dtype=bool))[0]

    def _check_inputs(self, x: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        mask = np.asarray(mask, dtype=bool)
        if x.ndim != 3 or x.shape[-1] != len(self.features):
            raise ValueError(
                f"x must be (B, L, {len(self.features)}) with features {self.features} in that order; got {x.shape}"
            )
        if mask.shape != x.shape[:2]:
            raise ValueError(f"mask must be (B, L) = {x.shape[:2]}; got {mask.shape}")
        return x, mask

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(method={self.method!r}, codebook_size={self.codebook_size}, "
            f"features={self.features}, version={self.version!r})"
        )

    # ------------------------------------------------------------------ artefact
    def spec(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "features": self.features,
            "codebook_size": self.codebook_size,
            "config": dataclasses.asdict(self.config),
            "normalisation": self.norm.to_json(),
            "data_version": self.data_version,
            "tokenizer_version": self.version,
            "fit_info": self.fit_info,
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write ``tokenizer.json``, ``weights.safetensors`` and ``manifest.json`` into ``out_dir``."""
        from safetensors.numpy import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.ascontiguousarray(v) for k, v in self.arrays().items()}
        with atomic_path(out_dir / WEIGHTS) as tmp:
            save_file(arrays, str(tmp))
        write_json(out_dir / SPEC, self.spec())
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": "tokenizer",
            "method": self.method,
            "codebook_size": self.codebook_size,
            "features": self.features,
            "data_version": self.data_version,
            "tokenizer_version": self.version,
            "physfm_version": __version__,
            "files": {name: sha256_file(out_dir / name) for name in (SPEC, WEIGHTS)},
        }
        write_json(out_dir / MANIFEST, manifest)
        return out_dir


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer artefact directory safely (JSON + safetensors; never unpickles).

    Checks every file against the sha256 in ``manifest.json`` and the recomputed content hash
    against ``tokenizer_version``; raises :class:`~physfm.data.shards.DataError` on any mismatch.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise DataError(f"{path} is not a tokenizer directory: {MANIFEST} is missing (run `physfm tokenizer fit`)")
    manifest = read_json(path / MANIFEST)
    if manifest.get("kind") != "tokenizer":
        raise DataError(f"{path}/{MANIFEST} does not describe a tokenizer (kind={manifest.get('kind')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: tokenizer format {manifest.get('format_version')} unsupported (expects {FORMAT_VERSION})"
        )
    for name, expected in manifest["files"].items():
        p = path / name
        if not p.is_file():
            raise DataError(f"{path}: {name} is missing")
        if sha256_file(p) != expected:
            raise DataError(
                f"{path}: {name} does not match the sha256 in {MANIFEST} (file modified or corrupt); "
                f"run `physfm verify {path}` and re-fit it with `physfm tokenizer fit`"
            )
    spec = read_json(path / SPEC)
    cls = tokenizer_class(spec["method"])
    config = make_config(spec["method"], spec["config"])
    norm = Normalizer.from_json(spec["features"], spec["normalisation"])
    tok = cls.from_arrays(spec, norm, config, load_file(str(path / WEIGHTS)))
    tok.data_version, tok.fit_info = spec["data_version"], spec.get("fit_info", {})
    if tok.version != manifest["tokenizer_version"]:
        raise DataError(
            f"{path}: content hash {tok.version} differs from tokenizer_version {manifest['tokenizer_version']} "
            "(written by an incompatible physfm version?)"
        )
    return tok


def _array_digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()
