"""Data subcommands: ``generate``, ``convert``, ``convert-gather``, ``summarize``, ``verify``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from physfm.cli.common import (
    add_config_arg,
    add_generate_args,
    add_tracking_args,
    log_generation,
    open_stage_run,
    print_json,
    stage_config,
)

if TYPE_CHECKING:
    from physfm.data.convert import ConvertConfig, ConvertStats


def register(sub: argparse._SubParsersAction) -> None:
    # ---------------------------------------------------------------- generate
    gen = sub.add_parser("generate", help="simulate raw events when you have no data at hand")
    gsub = gen.add_subparsers(dest="what", metavar="KIND", required=True)
    jets = gsub.add_parser(
        "jets",
        help="Pythia 8 + FastJet jets in the JetClass ROOT schema",
        description="Simulate pp collisions at 13.6 TeV with Pythia 8 (MPI, hadronisation), cluster the "
        "visible final state with anti-kt R=0.8, keep jets with 500<pT<1000 GeV, |eta|<2, label them by "
        "matching to the hard-process partons (as JetClass), and write JetClass-schema ROOT files. "
        "Deterministic for a given seed, whatever the number of workers.",
    )
    add_generate_args(
        jets,
        out="output directory for jets_NNN.root",
        section="data.generate (n_jets, seed, processes, weights, files, tune, smear_energy, smear_angle)",
        count="--n-jets",
        count_help="total number of jets, split evenly over processes (overrides --config)",
    )
    jets.set_defaults(func=run_generate_jets)
    from physfm.cli.lartpc import add_generate_parser as add_generate_lartpc

    add_generate_lartpc(gsub)

    # ---------------------------------------------------------------- convert
    from physfm.data.readers import READERS

    conv = sub.add_parser(
        "convert",
        help="raw events -> sharded HDF5 with manifest and data_version",
        description="Read raw files in chunks, check every event, assign train/val/test from a hash of "
        "each event's content, and write HDF5 shards (ragged, lossless) plus manifest.json with a "
        "content-derived data_version. The output directory is replaced only when complete. Settings "
        "(--config): shard_events, split fractions, labels (jetclass: the label_* branches defining the "
        "classes, in order; default the four of generated jets, list all ten for real JetClass files), "
        'on_error (fail | skip), tree. Example: --config \'{"split": {"train": 0.6, "val": 0.1, "test": 0.3}}\'',
    )
    conv.add_argument("--format", required=True, choices=sorted(READERS), help="input format")
    conv.add_argument("--input", required=True, action="append", help="file, directory or glob (repeatable)")
    conv.add_argument("--out", required=True, type=Path, help="output dataset directory")
    add_config_arg(conv, "data.convert (shard_events, split, labels, on_error, tree)")
    conv.add_argument("--step", type=int, default=20_000, help="events read per chunk (bounds memory)")
    conv.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that read and prepare chunks in parallel (jetclass, pilarnet; other formats read "
        "sequentially); the output is identical whatever the number (default 1)",
    )
    conv.add_argument(
        "--group",
        type=int,
        default=None,
        help="write only the part of group GROUP (0-based) of the --config groups contiguous groups of the sorted "
        "input files into --out (one job per group), for `physfm convert-gather`; default: the whole dataset, in "
        "this one job, whatever `groups`",
    )
    conv.add_argument("--no-progress", action="store_true")
    add_tracking_args(conv)
    conv.set_defaults(func=run_convert)

    gat = sub.add_parser(
        "convert-gather",
        help="write the dataset from the parts of `physfm convert --group`",
        description="Read the parts written by `physfm convert --group G` (one per group, any order) and write "
        "the shards, manifest.json and data_version, with the duplicate check and the shard boundaries over "
        "all the files: the dataset is byte-identical to one `physfm convert` over all the input files.",
    )
    gat.add_argument("--part", required=True, action="append", type=Path, help="a part directory (repeatable)")
    gat.add_argument("--out", required=True, type=Path, help="output dataset directory")
    gat.add_argument("--no-progress", action="store_true")
    add_tracking_args(gat)
    gat.set_defaults(func=run_convert_gather)

    # ---------------------------------------------------------------- summarize
    summ = sub.add_parser(
        "summarize",
        help="per-feature plots and counts of a dataset",
        description="Histogram every particle and event feature, one line per class, "
        "and write summary.json with counts.",
    )
    summ.add_argument("--data", required=True, type=Path, help="dataset directory (from convert)")
    summ.add_argument("--out", required=True, type=Path, help="output directory for plots and summary.json")
    add_config_arg(summ, "data.summary (split, max_events)")
    add_tracking_args(summ)
    summ.set_defaults(func=run_summarize)

    # ---------------------------------------------------------------- verify
    ver = sub.add_parser(
        "verify",
        help="re-hash a dataset or artefact against its manifest",
        description="Check DIR against DIR/manifest.json: a dataset (every shard's sha256 and the data_version) "
        "or an artefact (tokenizer, backbone, subsets, fine-tuned model, embeddings, report: every file's "
        "sha256, no file missing or unlisted, the version). Prints the kind and OK with its versions (exit 0), "
        "or each problem (exit 1); rerun the stage that made DIR to re-create it.",
    )
    ver.add_argument("dir", type=Path, help="dataset or artefact directory holding manifest.json")
    ver.set_defaults(func=run_verify)


def run_generate_jets(args: argparse.Namespace) -> int:
    from physfm.data.generate_jets import DIJET_PROCESSES, JetGenConfig, generate_jets

    cfg = stage_config(JetGenConfig, args.config, {"n_jets": args.n_jets, "seed": args.seed})
    params = {"n_jets": cfg.n_jets, "seed": cfg.seed, "processes": list(cfg.processes), "files": cfg.files}
    shift = {"tune": cfg.tune, "smear_energy": cfg.smear_energy, "smear_angle": cfg.smear_angle}
    params.update({k: v for k, v in shift.items() if v != getattr(JetGenConfig(), k)})  # only a shifted domain
    if cfg.weights:  # process shares (an even split otherwise)
        params["weights"] = [float(w) for w in cfg.weights]
    dijet = {"resonance": list(cfg.resonance), "dijet_mhat_min": cfg.dijet_mhat_min}
    if set(cfg.processes) & set(DIJET_PROCESSES):
        params.update(dijet)
    with open_stage_run(args, "generate", "generate jets", params) as run:
        t0 = time.perf_counter()
        paths = generate_jets(
            args.out,
            cfg.n_jets,
            cfg.seed,
            processes=cfg.processes,
            n_files=cfg.files,
            workers=args.workers,
            progress=not args.no_progress,
            weights=cfg.weights or None,
            **shift,
            **dijet,
        )
        wall = time.perf_counter() - t0
        log_generation(run, args.out, "pythia8+fastjet", params, paths, None, unit="jets", n=cfg.n_jets, wall=wall)
    print(f"wrote {cfg.n_jets} jets to {len(paths)} file(s) in {args.out} ({wall:.1f} s)")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from physfm.data.convert import ConvertConfig, convert
    from physfm.stage import load_text

    settings = load_text(args.config)
    if "labels" in settings and args.format != "jetclass":
        raise ValueError(
            f"labels selects JetClass label branches; format '{args.format}' has none "
            "(IceCube events are labelled by their truth direction): drop labels from --config"
        )
    cfg = stage_config(ConvertConfig, args.config)
    split = cfg.split
    options: dict = {"labels": list(cfg.labels)} if args.format == "jetclass" else {}
    if cfg.tree:
        options["tree"] = cfg.tree
    if cfg.event_branches:  # recorded only when set: a dataset without them keeps its data_version
        options["event_branches"] = list(cfg.event_branches)
    params = {
        "format": args.format,
        "input": args.input,
        "shard_events": cfg.shard_events,
        "split": split,
        "labels": options.get("labels"),
        "on_error": cfg.on_error,
    }
    # the library's keyword arguments (physfm.data.convert.ConvertOptions): one job's, and each group's part's
    kw = {"shard_events": cfg.shard_events, "split_fractions": split, "reader_options": options}
    kw.update(on_error=cfg.on_error, step=args.step, workers=args.workers, progress=not args.no_progress)
    if args.group is not None:
        return _convert_part(args, cfg, kw, params)
    with open_stage_run(args, "convert", f"convert {args.format}", params) as run:
        manifest, stats = convert(args.format, args.input, args.out, **kw)
        _log_converted(run, args.out, manifest, stats)
    _print_converted(args.out, manifest, stats)
    return 0


def _log_converted(run: Any, out: Path, manifest: dict[str, Any], stats: ConvertStats) -> None:
    """The converted dataset's versions, counts and rate, into the stage's MLflow run."""
    run.set_tags(
        {
            "data_version.out": manifest["data_version"],
            "data_version.in": ",".join(s["sha256"][:16] for s in manifest["sources"]),
        }
    )
    run.log_metrics(
        {
            "events_in": stats.events_in,
            "events_written": stats.events_written,
            "events_skipped": len(stats.skipped),
            "wall_seconds": stats.seconds,
            "events_per_second": stats.events_in / max(stats.seconds, 1e-9),
            **{f"events_{k}": v for k, v in manifest["n_events"].items()},
        }
    )
    run.log_artifact(Path(out) / "manifest.json")
    run.log_dataset(out, manifest, context="output")


def _print_converted(out: Path, manifest: dict[str, Any], stats: ConvertStats) -> None:
    print(
        f"data_version {manifest['data_version']}: {json.dumps(manifest['n_events'])} events "
        f"in {len(manifest['shards'])} shards -> {out} ({stats.seconds:.1f} s, "
        f"{stats.events_in / max(stats.seconds, 1e-9):.0f} events/s)"
    )
    if stats.skipped:
        print(f"skipped {len(stats.skipped)} file(s)/event(s); reasons are listed in {out}/manifest.json")


def _convert_part(args: argparse.Namespace, cfg: ConvertConfig, kw: dict[str, Any], params: dict) -> int:
    from physfm.data.convert_parts import convert_part

    params = {**params, "group": args.group, "groups": cfg.groups}
    with open_stage_run(args, "convert", f"convert {args.format} part {args.group}/{cfg.groups}", params) as run:
        record = convert_part(args.format, args.input, args.out, group=args.group, groups=cfg.groups, **kw)
        run.log_metrics(
            {
                "events_in": record["events_in"],
                "files": len(record["readable"]),
                "wall_seconds": record["seconds"],
                "events_per_second": record["events_in"] / max(record["seconds"], 1e-9),
            }
        )
    return 0


def run_convert_gather(args: argparse.Namespace) -> int:
    from physfm.data.convert_parts import gather_parts

    params = {"parts": [str(p) for p in args.part]}
    with open_stage_run(args, "convert", "convert gather", params) as run:
        manifest, stats = gather_parts(args.part, args.out, progress=not args.no_progress)
        _log_converted(run, args.out, manifest, stats)
    _print_converted(args.out, manifest, stats)
    return 0


def run_summarize(args: argparse.Namespace) -> int:
    from physfm.data.dataset import open_dataset
    from physfm.data.summary import SummaryConfig, summarize
    from physfm.stage import to_dict

    cfg = stage_config(SummaryConfig, args.config)
    ds = open_dataset(args.data, verify=True)  # once: summarize() takes the opened dataset
    manifest = ds.manifest
    with open_stage_run(args, "summarize", "summarize", to_dict(cfg)) as run:
        summary = summarize(ds, args.out, split=cfg.split, max_events=cfg.max_events)
        run.set_tags({"data_version.in": manifest["data_version"]})
        run.log_dataset(args.data, manifest, context="input")
        run.log_metrics({"mean_particles": summary["mean_particles"], "max_particles": summary["max_particles"]})
        run.log_artifact(args.out, artifact_path="summary")
    print_json(summary)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from physfm.artifacts import verify_directory

    kind, manifest, problems = verify_directory(args.dir)
    if problems:
        print(f"{args.dir}: {kind}: {len(problems)} problem(s):")
        for p in problems:
            print(f"  {p}")
        return 1
    if kind == "dataset":
        versions = {"data_version": manifest["data_version"]}
    else:
        versions = {f"{kind}_version": manifest["version"], **manifest["inputs"]}
    print(f"{args.dir}: {kind} OK ({', '.join(f'{k} {v}' for k, v in versions.items())})")
    return 0
