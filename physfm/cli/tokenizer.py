"""Tokenizer subcommands: ``physfm tokenizer fit | evaluate | encode | decode | info``."""

from __future__ import annotations

import argparse
from pathlib import Path

from physfm.cli.common import add_config_arg, add_tracking_args, open_stage_run, print_json, stage_config

FIT_DESCRIPTION = """\
Fit a particle tokenizer on the train split of a converted dataset and write one artefact directory:
manifest.json (input data_version, tokenizer_version, sha256s), tokenizer.json (features, per-feature
normalisation fitted on the train split, method options), weights.safetensors, metrics.json and plots/
(code usage, per-feature true vs decoded, jet mass/pT closure; VQ-VAE training curves), all measured on
--eval-split. The directory is replaced only when complete. One MLflow run (stage "tokenizer") records
the options, metrics, plots and the input dataset.

methods:
  kmeans   nearest of K centroids fitted with faiss k-means (GPU faiss when installed)
  vqvae    VQ-VAE (torch; CUDA when available): per-particle MLPs, or set-conditional transformer
  binning  per-feature quantile/uniform bins (baseline); K is rounded down to n^F

Tokens are not stored: pretraining encodes each batch on the fly with physfm.tokenizers.load_tokenizer.
"""


def _options_epilog() -> str:
    from physfm.tokenizers.options import CONFIGS, options_help

    parts = ["method options (--option KEY=VALUE, repeatable; config: tokenizer.<method>.<key>):"]
    for m in CONFIGS:
        parts.append(f"  {m}:\n{options_help(m)}")
    return "\n".join(parts)


def register(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser(
        "tokenizer",
        help="fit particle tokenizers (k-means, VQ-VAE, binning); encode/decode/evaluate with them",
        description="Particle tokenizers: fit one, measure its quality, encode and decode datasets.",
    )
    tsub = tok.add_subparsers(dest="action", metavar="ACTION", required=True)

    # ---------------------------------------------------------------- fit
    fit = tsub.add_parser(
        "fit",
        help="fit a tokenizer and write its artefact directory with metrics and plots",
        description=FIT_DESCRIPTION,
        epilog=_options_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("--method", required=True, choices=["kmeans", "vqvae", "binning"])
    fit.add_argument("--data", required=True, type=Path, help="dataset directory (from `physfm convert`)")
    fit.add_argument("--out", required=True, type=Path, help="artefact directory to write (replaced if present)")
    fit.add_argument("--codebook-size", "-k", type=int, default=512, help="number of codes K (default 512)")
    add_config_arg(fit, "tokenizer (features, seed, eval, and the method's options under `options`)")
    fit.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option (see below), repeatable; overrides --config's `options`",
    )
    fit.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_tracking_args(fit)
    fit.set_defaults(func=run_fit)

    # ---------------------------------------------------------------- evaluate
    ev = tsub.add_parser(
        "evaluate",
        help="quality metrics and plots of a fitted tokenizer on any dataset split",
        description="Encode and decode a split with a fitted tokenizer; write metrics.json and plots/ to --out.",
    )
    ev.add_argument("--tokenizer", required=True, type=Path, help="tokenizer artefact directory")
    ev.add_argument("--data", required=True, type=Path, help="dataset directory")
    ev.add_argument("--split", default="test", help="split to evaluate (default test)")
    ev.add_argument("--out", required=True, type=Path, help="output directory for metrics.json and plots/")
    ev.add_argument("--max-events", type=int, default=20_000, help="events used (default 20000)")
    add_tracking_args(ev)
    ev.set_defaults(func=run_evaluate)

    # ---------------------------------------------------------------- encode / decode
    enc = tsub.add_parser(
        "encode",
        help="write the codes of a dataset split to an HDF5 file (for inspection; pretraining encodes on the fly)",
        description="Encode every event of a split. Output HDF5: codes (n_particles,) int32 flat per particle, "
        "offsets (n_events+1,), event_key, label; attributes tokenizer_version and data_version.",
    )
    enc.add_argument("--tokenizer", required=True, type=Path)
    enc.add_argument("--data", required=True, type=Path)
    enc.add_argument("--split", default="val")
    enc.add_argument("--out", required=True, type=Path, help="output .h5 file")
    enc.add_argument("--max-events", type=int, default=None, help="first N events only")
    enc.set_defaults(func=run_encode)

    dec = tsub.add_parser(
        "decode",
        help="decode a codes file (from `encode`) back to particle features",
        description="Output HDF5: features (n_particles, F) float32 in raw units, offsets, event_key; "
        "attribute features (names).",
    )
    dec.add_argument("--tokenizer", required=True, type=Path)
    dec.add_argument("--codes", required=True, type=Path, help="HDF5 file written by `physfm tokenizer encode`")
    dec.add_argument("--out", required=True, type=Path, help="output .h5 file")
    dec.set_defaults(func=run_decode)

    info = tsub.add_parser(
        "info",
        help="print a tokenizer's manifest and headline metrics",
        description="Print a fitted tokenizer's manifest (method, codebook size, features, input data_version, "
        "tokenizer_version) and its quality metrics (utilisation, perplexity, resolution) as JSON.",
    )
    info.add_argument("tokenizer", type=Path, help="tokenizer artefact directory (from `physfm tokenizer fit`)")
    info.set_defaults(func=run_info)


def _options(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--option expects KEY=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _headline(m: dict) -> str:
    s = (
        f"{m['method']} K={m['codebook_size']} on {m['split']} ({m['n_particles']} particles): "
        f"utilisation {m['utilisation']:.1%}, perplexity {m['perplexity']:.1f}, "
        f"mse(normalised) {m['mse_normalised']:.4f}"
    )
    if m.get("jet"):
        s += f", jet mass resolution {m['jet']['mass']['std']:.3f} (rel.)"
    return s


def run_fit(args: argparse.Namespace) -> int:
    from physfm.data.dataset import open_dataset
    from physfm.tokenizers import make_tokenizer
    from physfm.tokenizers.fit import TokenizerFitConfig
    from physfm.tokenizers.metrics import flat_metrics

    cfg = stage_config(TokenizerFitConfig, args.config)
    options = {**cfg.options, **_options(args.option)}
    features, seed = cfg.features, cfg.seed
    ds = open_dataset(args.data, verify=True)  # opened once; the library takes it
    manifest = ds.manifest
    params = {
        "method": args.method,
        "codebook_size": args.codebook_size,
        "features": features,
        "seed": seed,
        "eval_split": cfg.eval.split,
        "eval_events": cfg.eval.max_events,
        "options": options,
    }
    name = args.run_name or f"tokenizer {args.method}-{args.codebook_size}"
    with open_stage_run(args, "tokenizer", name, params) as run:
        run.set_tags({"data_version.in": manifest["data_version"]})
        run.log_dataset(args.data, manifest, context="input")
        tok, ev = make_tokenizer(
            ds,
            args.out,
            args.method,
            args.codebook_size,
            features=features,
            seed=seed,
            options=options,
            eval_split=cfg.eval.split,
            eval_events=cfg.eval.max_events,
            progress=not args.no_progress,
            log=run.log_metrics,
        )
        run.set_tags({"tokenizer_version": tok.version, "tokenizer.method": tok.method})
        run.log_params({"config": _asdict(tok.config), "features_resolved": tok.features})
        run.log_metrics({**flat_metrics(ev.metrics), "fit_seconds": tok.fit_info.get("wall_seconds", 0.0)})
        run.log_artifact(args.out, artifact_path="tokenizer")
    print(_headline(ev.metrics))
    print(f"tokenizer_version {tok.version} -> {args.out}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from physfm.data.shards import load_manifest
    from physfm.tokenizers import load_tokenizer, write_report
    from physfm.tokenizers.metrics import flat_metrics

    tok = load_tokenizer(args.tokenizer)
    manifest = load_manifest(args.data)
    params = {"split": args.split, "max_events": args.max_events, "tokenizer": str(args.tokenizer)}
    with open_stage_run(args, "tokenizer-evaluate", f"evaluate {tok.method}-{tok.codebook_size}", params) as run:
        run.set_tags({"data_version.in": manifest["data_version"], "tokenizer_version": tok.version})
        run.log_dataset(args.data, manifest, context="evaluation")
        ev = write_report(tok, args.data, args.out, args.split, args.max_events)
        run.log_metrics(flat_metrics(ev.metrics))
        run.log_artifact(args.out, artifact_path="evaluation")
    print(_headline(ev.metrics))
    return 0


def run_encode(args: argparse.Namespace) -> int:
    import h5py
    import numpy as np

    from physfm.data.loader import open_split, pad
    from physfm.io import atomic_path
    from physfm.tokenizers import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    s = open_split(args.data, args.split)
    n = len(s) if args.max_events is None else min(len(s), args.max_events)
    block = s.read(np.arange(n))
    counts = np.diff(block.offsets)
    x, mask = pad(block, s.features(block, tok.features), int(counts.max()) if n else 1)
    codes = tok.encode(x, mask)[mask].astype(np.int32)
    with atomic_path(args.out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("codes", data=codes)
        f.create_dataset("offsets", data=block.offsets)
        f.create_dataset("event_key", data=block.event_key)
        f.create_dataset("label", data=block.label)
        f.attrs.update(
            {"tokenizer_version": tok.version, "data_version": s.manifest["data_version"], "split": args.split}
        )
    print(f"encoded {n} events, {len(codes)} particles with {tok.method}-{tok.codebook_size} -> {args.out}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    import h5py
    import numpy as np

    from physfm.io import atomic_path
    from physfm.tokenizers import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    with h5py.File(args.codes, "r") as f:
        codes, offsets, keys = f["codes"][:], f["offsets"][:], f["event_key"][:]
        version = f.attrs.get("tokenizer_version")
    if version != tok.version:
        raise ValueError(f"{args.codes} was encoded by tokenizer {version}, not by {args.tokenizer} ({tok.version})")
    counts = np.diff(offsets)
    mask = np.arange(int(counts.max()) if len(counts) else 1)[None, :] < counts[:, None]
    dense = np.zeros(mask.shape, dtype=np.int64)
    dense[mask] = codes
    feats = tok.decode(dense, mask)[mask]
    with atomic_path(args.out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=feats)
        f.create_dataset("offsets", data=offsets)
        f.create_dataset("event_key", data=keys)
        f.attrs.update({"features": ",".join(tok.features), "tokenizer_version": tok.version})
    print(f"decoded {len(feats)} particles ({', '.join(tok.features)}) -> {args.out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from physfm.io import read_json
    from physfm.tokenizers import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    out = {"manifest": read_json(Path(args.tokenizer) / "manifest.json"), "normalisation": tok.norm.to_json()}
    metrics_path = Path(args.tokenizer) / "metrics.json"
    if metrics_path.is_file():
        m = read_json(metrics_path)
        out["metrics"] = {k: m[k] for k in ("split", "utilisation", "perplexity", "mse_normalised") if k in m}
    print_json(out)
    return 0


def _asdict(config: object) -> dict:
    import dataclasses

    return dataclasses.asdict(config)  # type: ignore[arg-type]
