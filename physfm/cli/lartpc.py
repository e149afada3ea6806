"""LArTPC subcommands: ``physfm generate lartpc`` (added to the ``generate`` group by physfm.cli.data).

Converting LArTPC data is ``physfm convert --format pilarnet``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from physfm.cli.common import (
    add_eval_config_arg,
    add_generate_args,
    add_parent_args,
    add_tracking_args,
    eval_config,
    log_finite,
    log_generation,
    open_stage_run,
    split_metrics,
    stage_config,
)

DESCRIPTION = """\
Simulate LArTPC events (a toy of PILArNet-M's MPV/MPR particle bombs in a 2.3 m liquid-argon cube)
and write them in the PILArNet-M HDF5 layout (lartpc_NNN.h5 with point/cluster tables and a
lartpc_NNN_points.npy index), ready for `physfm convert --format pilarnet --input OUT`.

Tracks with Bethe-Bloch dE/dx, Landau fluctuations, Highland scattering and hadronic kinks; delta
rays; Michel electrons; EM cascades (bremsstrahlung, pair conversion, Compton scattering); isolated
low-energy blips; Supera's labelling rules; 3 mm voxels. The physics, its simplifications and
the validation against PILArNet-M are in docs/lartpc.md. Deterministic for a seed, whatever
--workers.
"""


def add_generate_parser(gsub: argparse._SubParsersAction) -> None:
    """Add ``physfm generate lartpc`` to the ``generate`` group."""
    p = gsub.add_parser(
        "lartpc",
        help="LArTPC events (tracks, showers, Michels, deltas, blips) in the PILArNet-M HDF5 layout",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_generate_args(
        p,
        out="output directory for lartpc_NNN.h5",
        section="data.generate (n_events, seed, events_per_file, cluster_columns)",
        count="--n-events",
        count_help="number of events (overrides --config)",
        seed_help="random seed (default 1; overrides --config)",
        workers=1,
        workers_help="parallel processes, one file each (default 1)",
    )
    p.add_argument("--events-per-file", type=int, default=None, help="events per file (default 1000)")
    p.add_argument(
        "--cluster-columns",
        type=int,
        choices=(5, 6),
        default=None,
        help="cluster table layout: 5 (PILArNet-M v1, default) or 6 (v2, with the PDG code)",
    )
    p.set_defaults(func=run_generate_lartpc)


def run_generate_lartpc(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import numpy as np

    from physfm.data.generate_lartpc import LArConfig, LArTPCGenConfig, generate_lartpc

    flags = {"n_events": args.n_events, "seed": args.seed, "events_per_file": args.events_per_file}
    gen = stage_config(LArTPCGenConfig, args.config, {**flags, "cluster_columns": args.cluster_columns})
    if gen.n_events < 1 or gen.events_per_file < 1 or gen.cluster_columns not in (5, 6):
        raise ValueError(f"generate lartpc: n_events and events_per_file must be >= 1, cluster_columns 5 or 6: {gen}")
    args.n_events, args.seed, args.events_per_file = gen.n_events, gen.seed, gen.events_per_file
    cfg = LArConfig(cluster_columns=gen.cluster_columns)
    params = {"n_events": args.n_events, "seed": args.seed, "events_per_file": args.events_per_file}
    with open_stage_run(args, "generate", "generate lartpc", params) as run:
        t0 = time.perf_counter()
        paths = generate_lartpc(
            args.out,
            args.n_events,
            args.seed,
            events_per_file=args.events_per_file,
            workers=args.workers,
            config=cfg,
            progress=not args.no_progress,
        )
        wall = time.perf_counter() - t0
        n_points = sum(int(np.load(p.with_name(p.stem + "_points.npy")).sum()) for p in paths)
        sim = asdict(cfg)
        log_generation(run, args.out, "physfm lartpc simulator", params, paths, sim, unit="events", n=args.n_events,
                       wall=wall, points=n_points)  # fmt: skip
    print(
        f"wrote {args.n_events} events ({n_points / args.n_events:.0f} points/event) in {len(paths)} file(s) "
        f"to {args.out} ({wall:.1f} s)"
    )
    return 0


FLOOR_DESCRIPTION = """\
Score the zero-label floor of LArTPC semantic segmentation on a split (default test): geometric
rules without training or labels (physfm.models.segmentation_floor: isolated points are low-energy
deposits, locally linear ones track, the rest shower; Michel and delta never predicted). Writes an
evaluation record like `physfm evaluate` on a segmentation model (macro-F1, per-class F1, accuracy,
seg_error = 1 - macro-F1, confusion matrix, bootstrap std over events), mode `floor`, 0 labels:
the report's zero-label reference, as `cut` is for jets.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``physfm segfloor``."""
    p = sub.add_parser(
        "segfloor",
        help="zero-label floor of LArTPC per-point segmentation (geometric rules), scored on a split",
        description=FLOOR_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="lartpc dataset directory (from convert)")
    add_eval_config_arg(p)
    p.add_argument("--out", required=True, type=Path, help="output JSON (the evaluation record)")
    add_parent_args(p)
    add_tracking_args(p)
    p.set_defaults(func=run_segfloor)


def run_segfloor(args: argparse.Namespace) -> int:
    from physfm.finetune.patch_segmentation import evaluate_floor
    from physfm.io import write_json

    ev = eval_config(args)
    tags = {"mode": "floor", "labels": "0", "seed": 1, "backbone": "none"}
    run_name = args.run_name or "baseline floor"
    with open_stage_run(args, "baseline", run_name, {"data": str(args.data)}, tags) as run:
        record = evaluate_floor(args.data, ev.split, n_bootstrap=ev.bootstrap)
        log_finite(run, split_metrics(record, ev.split))
        run.set_tags({"data_version.in": record["data_version"]})
        record["run_id"], record["run_name"] = run.run_id, run_name
        write_json(args.out, record)
    m = record["metrics"]
    print(
        f"{run_name} on {record['n_events']} {ev.split} events: "
        f"macro_f1 {m['macro_f1']:.4f}, accuracy {m['accuracy']:.4f}"
    )
    return 0
