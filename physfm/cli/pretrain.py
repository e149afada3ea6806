"""The ``pretrain`` subcommand."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from physfm.cli.common import add_tracking_args, open_stage_run, print_json

PRETRAIN_DESCRIPTION = """\
Self-supervised pretraining of a transformer backbone on the train split of a dataset.

objectives (--set objective=NAME or the config's backbone entry):
  mpm         masked particle modelling: predict the tokenizer code of masked particles
  next_token  causal next-token prediction over pT-ordered particles (can generate jets)
  regression  masked feature regression (no tokenizer needed)
  contrastive JetCLR: NT-Xent between two augmented views of each jet (no tokenizer)
  dino        self-distillation from an EMA teacher over views (no tokenizer); RINO with
              kT-subjet views: --set 'objectives.dino.global_views=[full,kt16]'
              --set 'objectives.dino.local_views=[kt2,kt4,kt8]'
  flow        flow matching of the noised particle features, conditioned on the jet globals
              (no tokenizer; can generate jets: physfm sample)
  mpm2        MPM v2: MAE encoder on unmasked particles, small decoder, registers, code + ID
  polarmae    PoLAr-MAE on LArTPC point clouds: masked patches, Chamfer + energy infilling
              (features x,y,z,log_energy; global_weight 0; docs/lartpc.md)
PET's local kNN block in front of the transformer, for any objective: --set model.local=knn
Every objective also trains the class token on label-free event targets (log jet mass,
log multiplicity), weight `global_weight` (flow: they are its generation condition instead).

Settings come from --config (a study config with a `pretrain:` section, that section alone,
or inline JSON), then --backbone NAME (an entry of pretrain.backbones), then --set KEY=VALUE.
Writes OUT/backbone.safetensors, backbone.json, objective.safetensors, metrics.json,
history.json, loss.png and manifest.json; checkpoints go to OUT/checkpoints (or
--checkpoint-dir) and a rerun of the same command resumes from them.

On SIGTERM or SIGUSR1 (e.g. SLURM preemption with --signal=B:USR1@120) it saves a checkpoint at
the next step and exits with status 75; rerun the same command to continue.
Multi-GPU / multi-process: torchrun --nproc_per_node N $(which physfm) pretrain ...
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining of a backbone (MPM, next-token, regression)",
        description=PRETRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="dataset directory (from `physfm convert`)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer artefact directory (needed by mpm and next_token)")
    p.add_argument("--out", required=True, type=Path, help="output backbone directory")
    p.add_argument("--config", help="YAML/JSON file or inline JSON with the settings (default: built-in defaults)")
    p.add_argument("--backbone", help="name of an entry in the config's pretrain.backbones")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting, e.g. model.d_model=256"
    )
    p.add_argument("--steps", type=int, help="shortcut for --set steps=N")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda (default auto)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--checkpoint-dir", type=Path, help="where checkpoints live (default OUT/checkpoints)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="require a checkpoint to continue from (default: automatic)")
    g.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    add_tracking_args(p)
    p.set_defaults(func=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    import torch

    from physfm import tracking
    from physfm.pretrain.config import resolve_config
    from physfm.pretrain.train import pretrain
    from physfm.runtime import PREEMPTED_EXIT_CODE, Preempted, checkpoint_info
    from physfm.stage import load_text

    overrides = list(args.set) + ([f"steps={args.steps}"] if args.steps is not None else [])
    cfg = resolve_config(load_text(args.config), args.backbone, overrides)
    if args.print_config:
        print_json(cfg.to_dict())
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt_dir = args.checkpoint_dir or args.out / "checkpoints"
    resume = "require" if args.resume else ("never" if args.fresh else "auto")
    rank = int(os.environ.get("RANK", 0))
    info = checkpoint_info(ckpt_dir) if resume != "never" else None
    params = {**cfg.to_dict(), "data": str(args.data), "tokenizer": str(args.tokenizer)}
    name = args.run_name or f"pretrain {args.backbone or cfg.objective}"
    if rank != 0:  # one MLflow run per job: rank 0 logs
        os.environ["PHYSFM_TRACKING"] = "0"
    tracking.enable_system_metrics()
    run_ctx = (
        tracking.resume_run(info["mlflow_run_id"])
        if info and tracking.run_exists(info.get("mlflow_run_id"))
        else open_stage_run(args, "pretrain", name, params)
    )
    try:
        with run_ctx as run:
            summary = pretrain(
                cfg,
                args.data,
                args.tokenizer,
                args.out,
                checkpoint_dir=ckpt_dir,
                resume=resume,
                device=args.device,
                progress=not args.no_progress,
                run=run,
            )
            if rank == 0:
                tracking.register_backbone(
                    run, args.out, name=f"{tracking.experiment_name()}.{args.backbone or cfg.objective}"
                )
    except Preempted as exc:
        print(f"physfm pretrain: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if rank == 0:
        print_json({k: v for k, v in summary.items() if not isinstance(v, dict)})
    return 0
