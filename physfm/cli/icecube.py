"""IceCube subcommands: ``physfm generate icecube`` (added to the ``generate`` group of physfm.cli.data).

Converting IceCube data is ``physfm convert --format kaggle|prometheus``; pretraining with the
PolarBERT objective and the ``direction`` task go through ``physfm pretrain`` / ``physfm finetune``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from physfm.cli.common import add_generate_args, log_generation, open_stage_run, stage_config

DESCRIPTION = """\
Simulate IceCube-86 events and write them in the Kaggle layout (train/batch_<k>.parquet,
train_meta.parquet, sensor_geometry.csv), ready for `physfm convert --format kaggle --input OUT`.

Through-going muon tracks and contained cascades with isotropic directions; the real in-ice DOM
positions; Cherenkov light (41 deg) attenuated with depth-dependent absorption and scattering
lengths; Pandel-distributed arrival delays; Poisson charges; dark noise; an `auxiliary` flag for
pulses without a local coincidence (HLC/SLC-like); an SMT8-like trigger. The model and its
simplifications are described in docs/icecube.md. Deterministic for a seed, whatever --workers.
"""


def _generate_group(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-command group of ``physfm generate`` (created by physfm.cli.data)."""
    gen = sub.choices.get("generate")
    if gen is None:
        raise RuntimeError("physfm.cli.data must be registered before physfm.cli.icecube")
    for action in gen._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("`physfm generate` has no sub-command group")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``physfm generate icecube``."""
    p = _generate_group(sub).add_parser(
        "icecube",
        help="IceCube-86 events (muon tracks, cascades) in the Kaggle parquet layout",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_generate_args(
        p,
        out="output directory (the Kaggle dataset root)",
        section="data.generate (n_events, seed, events_per_batch, track_fraction, noise_rate_hz)",
        count="--n-events",
        count_help="number of triggered events (overrides --config)",
    )
    p.set_defaults(func=run_generate_icecube)


def run_generate_icecube(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import numpy as np
    import pyarrow.parquet as pq

    from physfm.data.generate_icecube import IceCubeGenConfig, SimConfig, generate_icecube

    gen = stage_config(IceCubeGenConfig, args.config, {"n_events": args.n_events, "seed": args.seed})
    if not 0.0 <= gen.track_fraction <= 1.0:
        raise ValueError(f"track_fraction must be in [0, 1], got {gen.track_fraction}")
    if gen.noise_rate_hz < 0:
        raise ValueError(f"noise_rate_hz must be >= 0, got {gen.noise_rate_hz}")
    cfg = SimConfig(track_fraction=gen.track_fraction, noise_rate_hz=gen.noise_rate_hz)
    params = {
        "n_events": gen.n_events,
        "seed": gen.seed,
        "events_per_batch": gen.events_per_batch,
        "track_fraction": gen.track_fraction,
        "noise_rate_hz": gen.noise_rate_hz,
    }
    with open_stage_run(args, "generate", "generate icecube", params) as run:
        t0 = time.perf_counter()
        paths = generate_icecube(
            args.out,
            gen.n_events,
            gen.seed,
            events_per_batch=gen.events_per_batch,
            workers=args.workers,
            config=cfg,
            progress=not args.no_progress,
        )
        wall = time.perf_counter() - t0
        meta = pq.read_table(Path(args.out) / "train_meta.parquet", columns=["first_pulse_index", "last_pulse_index"])
        n_pulses = int(np.sum(meta.column(1).to_numpy() - meta.column(0).to_numpy() + 1))
        sim = asdict(cfg)
        log_generation(run, args.out, "physfm icecube simulator", params, paths, sim, unit="events", n=gen.n_events,
                       wall=wall, pulses=n_pulses)  # fmt: skip
    print(
        f"wrote {gen.n_events} events ({n_pulses / gen.n_events:.1f} pulses/event) in "
        f"{len(paths) - 2} batch file(s) to {args.out} ({wall:.1f} s)"
    )
    return 0
