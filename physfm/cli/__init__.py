"""``physfm``: one command, one subcommand per pipeline stage.

Each subcommand module (``physfm/cli/<family>.py``) exposes ``register(subparsers)``; the stage
logic lives in the library (``physfm.data``, ``physfm.tokenizers``, ...), never here.
Run ``physfm <stage> --help`` for each stage's options.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from physfm import __version__

#: Subcommand modules, in the order they appear in ``physfm --help``.
FAMILIES = (
    "physfm.cli.data",
    "physfm.cli.icecube",
    "physfm.cli.tokenizer",
    "physfm.cli.pretrain",
    "physfm.cli.sample",
    "physfm.cli.finetune",
    "physfm.cli.evaluate",
    "physfm.cli.report",
    "physfm.cli.linefit",
    "physfm.cli.baseline",
    "physfm.cli.tracking_cmd",
    "physfm.cli.lartpc",
    "physfm.cli.anomaly",
)

EPILOG = """\
stages, in pipeline order:
  generate jets     simulate jets with Pythia 8 + FastJet into JetClass-schema ROOT files
  generate icecube  simulate IceCube-86 events (tracks, cascades) into the Kaggle parquet layout
  generate lartpc   simulate LArTPC events (tracks, showers, Michels) into the PILArNet-M HDF5 layout
  convert           raw events (ROOT / parquet) -> sharded HDF5 + manifest with a data_version
  convert-gather    the dataset from the parts of `convert --group G` (one job per group of files)
  summarize         per-feature plots and counts of a converted dataset
  verify            re-hash a dataset's shards against its manifest
  tokenizer         fit k-means (faiss) / VQ-VAE / binning particle tokenizers; evaluate, encode, decode
  pretrain          self-supervised backbone pretraining (MPM, next-token, regression); GPU/DDP-ready
  sample            sample jets from a next-token backbone, compare with real jets
  subsets           nested, class-balanced label subsets of the train split
  finetune          fine-tune one grid cell: scratch / finetune / frozen x labels x seed
  evaluate          test-split metrics of a fine-tuned model, with bootstrap errors
  embed, search     faiss index of backbone embeddings; nearest events; k-NN probe
  report            the study's HTML report
  linefit           LineFit direction baselines for IceCube (zero-label, and refined within a label budget)
  observables       jet observables (m, m_SD, N-subjettiness, ...) of a dataset, cached for the baselines
  baseline          supervised (bdt, pfn) and zero-label (cut) baselines on the same label subsets
  segfloor          zero-label floor of LArTPC per-point segmentation (geometric rules)

every stage logs one MLflow run (see `physfm tracking-init --help` for where).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="physfm",
        description="Foundation-model studies for particle and neutrino physics: data, tokenizers, "
        "self-supervised pretraining, label-efficiency fine-tuning, evaluation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"physfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="STAGE", required=True)
    for name in FAMILIES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "tag") or hasattr(args, "parent_run_file") or getattr(args, "tracked", False):
        from physfm import tracking

        tracking.prestart()  # MLflow starts up in its own process while the stage works
    from physfm.data.shards import DataError

    try:
        return int(args.func(args) or 0)
    except (DataError, ValueError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"physfm {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
