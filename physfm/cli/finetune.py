"""Fine-tuning subcommands: ``subsets``, ``finetune`` and ``study-run`` (the study's MLflow parent run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from physfm.cli.common import (
    add_config_arg,
    add_parent_args,
    add_tracking_args,
    csv_list,
    open_stage_run,
    parse_tags,
    set_threads,
    stage_config,
    wrap,
)

STUDY_EPILOG = """\
the study, step by step (Snakemake runs the whole grid: `snakemake --cores 2 all`):
  physfm subsets  --data D --labels 100,300,1000 --out S
  physfm finetune --data D --backbone B --subsets S --labels 300 --mode finetune --seed 1 --out M
  physfm evaluate --model M --data D --out M/test.json
  physfm report   --results M/test.json ... --out report.html
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add this family's subcommands to ``physfm``."""
    # ---------------------------------------------------------------- subsets
    s = sub.add_parser(
        "subsets",
        help="per-seed, nested, class-balanced label subsets, each split into train + in-budget validation",
        description=wrap(
            "Define the labelled subsets of a label-efficiency study once: per seed, a seeded, class-interleaved "
            "order of the labelled train events; the subset with N labels is its first N events, so within a seed "
            "every smaller subset lies inside every larger one and every mode and baseline trains on the same "
            "events, while each seed draws its own. Budget protocol holdout: each subset is split, stratified by "
            "class, into a train part and an in-budget validation part (n_train + n_val = N) that early stopping "
            "uses; fixed: no validation. Settings (--config): labels, seeds, budget {name, val_fraction, "
            "min_val_per_class}. Writes seed<S>/n<N>.{train,val}.npy and manifest.json (protocol, counts per "
            "class, digests, sha256s)."
        ),
        epilog=STUDY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--data", required=True, type=Path, help="dataset directory (from convert)")
    s.add_argument("--out", required=True, type=Path, help="output directory")
    add_config_arg(s, "subsets (labels, seeds, budget)")
    s.add_argument("--labels", help="comma list of label counts (300), fractions (0.01 or 1%%) or 'all' (overrides)")
    s.add_argument("--seeds", help="comma list of seeds, each drawing its own subsets (overrides --config)")
    s.set_defaults(func=run_subsets)

    # ---------------------------------------------------------------- finetune
    f = sub.add_parser(
        "finetune",
        help="train a task head (classes, direction, regression, ...) on a label subset: scratch, finetune or frozen",
        description=wrap(
            "Train a task's head (--task) on a backbone with the labelled events of one subset. "
            "scratch: same architecture, random init, all trained at --lr. finetune: pretrained backbone trained "
            "at --lr x --backbone-lr-scale with --layer-decay per layer below the top. frozen: pretrained backbone "
            "untouched, head only. Early stopping on the task's score on the in-budget validation part; the best "
            "model is kept. Runs on CUDA when "
            "available, CPU otherwise. Settings (head, lr, patience, ...) come from --config, the `finetune` "
            "section of a study config (its grid keys are ignored); omitted ones take their defaults."
        ),
        epilog=STUDY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("--data", required=True, type=Path, help="dataset directory (from convert)")
    f.add_argument(
        "--backbone",
        default="none",
        help="pretrained backbone: a directory (physfm pretrain, of this or another study), a model-registry URI "
        "models:/<name>/<version> (pretraining registers <study>.<backbone>; version a number or latest), or 'none'",
    )
    f.add_argument(
        "--allow-missing-inputs",
        action="store_true",
        default=None,
        help="fine-tune although the data set lacks inputs the backbone reads (manifest missing_inputs) and the "
        "backbone was not pretrained with feature dropout: zero-fill them (recorded); overrides --config",
    )
    f.add_argument("--backbone-name", default=None, help="short name of the backbone for run names and tags")
    f.add_argument(
        "--mode",
        required=True,
        choices=["scratch", "finetune", "frozen", "scratch_global", "linear"],
        help="scratch, finetune, frozen; ablations: scratch_global (scratch + global-target loss), linear (probe)",
    )
    lab = f.add_mutually_exclusive_group(required=True)
    lab.add_argument("--labels", help="labelled events: a count (300), a fraction (0.01, 1%%) or 'all'")
    lab.add_argument("--fraction", help="same as --labels, for fractions")
    f.add_argument("--seed", type=int, default=1, help="training seed: head init, batch order (default 1)")
    f.add_argument(
        "--task",
        default="auto",
        help="downstream task: auto (classification when the data has classes, else direction), classification, "
        "direction, regression[:TARGET] (TARGET: log_mass (default), log_pt, log_multiplicity, log10_qtot), "
        "segmentation[:COLUMN] (per particle; default column semantic)",
    )
    f.add_argument("--subsets", type=Path, help="subsets directory (physfm subsets); default: made on the fly")
    f.add_argument(
        "--observables",
        type=Path,
        default=None,
        help="the data's jet observables (physfm observables), read when the head's inputs (head.inputs in "
        "--config) name observables; default: computed from the data",
    )
    f.add_argument("--out", required=True, type=Path, help="output model directory")
    add_config_arg(f, "finetune")
    f.add_argument(
        "--search",
        default=None,
        help='in-budget hyperparameter grid as JSON ({"lr": [5e-4, 2e-3], "head.dropout": [0.1, 0.3]}): '
        "every combination is trained, the lowest loss on the subset's validation part wins",
    )
    f.add_argument("--arch", default="", help="--backbone none: BackboneConfig as KEY=VALUE,... (d_model=64,...)")
    f.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    f.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    f.add_argument("--no-progress", action="store_true")
    add_parent_args(f)
    add_tracking_args(f)
    f.set_defaults(func=run_finetune)

    # ---------------------------------------------------------------- study-run
    r = sub.add_parser(
        "study-run",
        help="open the study's MLflow parent run (fine-tuning runs nest under it)",
        description="Create an MLflow run that stays open as the parent of a study's runs and write its id "
        "to --out; `physfm report --parent-run-file` logs the report into it and closes it.",
    )
    r.add_argument("--out", required=True, type=Path, help="JSON file to write the run id to")
    add_tracking_args(r)
    r.set_defaults(func=run_study_run)


def run_subsets(args: argparse.Namespace) -> int:
    from physfm.finetune.subsets import SubsetsConfig, make_subsets

    cfg = stage_config(SubsetsConfig, args.config)
    specs = csv_list(args.labels) if args.labels else [str(x) for x in cfg.labels]
    seeds = [int(x) for x in csv_list(args.seeds) or []] if args.seeds else list(cfg.seeds)
    if not specs:
        raise ValueError("subsets need at least one label count, fraction or 'all'")
    manifest = make_subsets(args.data, specs, seeds, args.out, protocol=cfg.budget)
    for spec, info in manifest["subsets"].items():
        for seed, e in info["seeds"].items():
            per = ", ".join(f"{c} {n}+{e['val']['per_class'][c]}" for c, n in e["train"]["per_class"].items())
            print(f"{spec:>8} seed {seed}: {e['train']['n']} train + {e['val']['n']} val ({per}), digest {e['digest']}")
    print(f"wrote {args.out} (data_version {manifest['data_version']}, {manifest['n_labelled']} labelled)")
    return 0


def _arch(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, (t.strip() for t in text.split(","))):
        k, sep, v = part.partition("=")
        if not sep:
            raise ValueError(f"--arch expects KEY=VALUE pairs, got '{part}'")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def run_finetune(args: argparse.Namespace) -> int:
    from physfm.data.dataset import open_dataset
    from physfm.finetune import backbone_source
    from physfm.finetune.backbone_source import input_fill_tags
    from physfm.finetune.grid import cell_run_name
    from physfm.finetune.head_inputs import Sources
    from physfm.finetune.patch_segmentation import META as PATCH_META
    from physfm.finetune.patch_segmentation import (
        SegmentationConfig,
        finetune_segmentation,
        is_segmentation_dataset,
    )
    from physfm.finetune.search import mlflow_params, search
    from physfm.finetune.subsets import spec_name
    from physfm.finetune.task import make_task
    from physfm.finetune.train import CELL_KEYS, FinetuneConfig, finetune, settings_slice
    from physfm.finetune.variants import resolve
    from physfm.stage import build, load_text

    set_threads(args.threads)
    spec = args.labels or args.fraction
    settings = settings_slice(load_text(args.config))
    seg_settings = settings.pop("segmentation", None)  # LArTPC: the segmentation task's own section
    if clash := sorted(set(settings) & set(CELL_KEYS)):
        raise ValueError(f"--config sets {clash}: the grid cell comes from --mode, --labels, --seed and --device")
    if args.allow_missing_inputs:
        settings["allow_missing_inputs"] = True
    base_mode, settings = resolve(args.mode, settings)  # an ablation mode is a base mode with fixed settings
    cell = {"mode": base_mode, "labels": str(spec), "seed": args.seed, "device": args.device}
    cfg = build(FinetuneConfig, {**settings, **cell})
    grid = json.loads(args.search) if args.search and args.search.lstrip()[:1] in "{[" else load_text(args.search)
    source = backbone_source.resolve(args.backbone)  # a registry URI is downloaded (once) and verified here
    backbone = source.path
    run_name = args.run_name or cell_run_name(
        args.backbone_name or "", spec, args.mode, args.seed, bool(args.backbone_name)
    )
    ds = open_dataset(args.data, verify=True)  # opened once, shards re-hashed once; the library takes it
    manifest = ds.manifest
    # LArTPC points (no task named): per-point segmentation on patch tokens (physfm/finetune/patch_segmentation.py)
    patch_seg = is_segmentation_dataset(manifest) and args.task in (None, "", "auto")
    task = None if patch_seg else make_task(args.task, ds)
    if patch_seg and cfg.head.inputs:
        raise ValueError(f"head inputs {cfg.head.inputs}: the per-point segmentation of patch backbones reads none")
    task_name = "segmentation" if task is None else task.name
    if task_name != "classification" and base_mode != args.mode:
        raise ValueError(f"mode {args.mode} is an ablation of the classification grid; {task_name} runs have none")
    tags = {
        "mode": args.mode,
        "labels": str(spec),
        "labels.name": spec_name(spec),
        "seed": args.seed,
        "backbone": args.backbone_name or ("none" if backbone is None else source.name or backbone.name),
        "data_version.in": manifest["data_version"],
        "backbone.source": source.kind,
        **({"backbone.registry": f"{source.name}/{source.version}"} if source.kind == "registry" else {}),
        "task": "segmentation" if task is None else task.name,
    }
    params = {**cfg.to_dict(), "mode": args.mode, "base_mode": base_mode}
    params.update({"backbone_dir": str(args.backbone), "data": str(args.data)})
    with open_stage_run(args, "finetune", run_name, params, tags) as run:
        if task is None:
            train_fn, kw = finetune_segmentation, {"seg": SegmentationConfig.from_dict(seg_settings)}
        else:
            train_fn, kw = finetune, {"task": task, "sources": Sources(observables=args.observables)}
        meta = search(  # one candidate per combination of the grid; the in-budget validation part chooses
            train_fn,
            ds,
            args.out,
            cfg,
            grid,
            backbone_dir=source if source.path else None,
            subsets_dir=args.subsets,
            arch=_arch(args.arch),
            run=run,
            progress=not args.no_progress,
            extra_meta={
                "cell": {"backbone": tags["backbone"], "run_name": run_name},
                **({"mode": args.mode, "base_mode": base_mode} if args.mode != base_mode else {}),
            },
            **kw,
        )
        run.log_params(mlflow_params(meta["search"]))
        run.set_tags(
            {
                "subset.digest": meta["subset"]["digest"],
                "backbone.objective": meta["backbone"].get("objective"),
                "backbone.data_version": meta["backbone"].get("data_version"),
                "tokenizer_version": meta["backbone"].get("tokenizer_version"),
                **input_fill_tags(meta["backbone"].get("input_fill")),
            }
        )
        budget = meta["budget"]
        run.log_params(
            {
                "n_labels": meta["n_labels"],  # the whole budget: train part + in-budget validation part
                "n_train": budget["n_train"],
                "n_val": budget["n_val"],
                **{f"protocol.{k}": v for k, v in (budget.get("protocol") or {}).items()},
                **{f"subset.{c}": n for c, n in meta["subset"]["per_class"].items()},
            }
        )
        tr = meta["train"]
        run.log_metrics(
            {
                "best_val_loss": tr["best_val_loss"],
                **{k: v for k, v in tr.items() if k.startswith("best_val_") and k != "best_val_loss"},
                "best_step": tr["best_step"],
                "n_labels": meta["n_labels"],
                "wall_seconds": tr["wall_seconds"],
            }
        )
        run.log_artifact(Path(args.out) / (PATCH_META if task is None else task.files[1]))
    if fill := (meta["backbone"].get("input_fill") or {}).get("features"):
        reason = meta["backbone"]["input_fill"]["reason"]
        print(f"note: {args.data} lacks {', '.join(fill)}: filled with zeros ({reason})")
    print(
        f"{run_name}: {meta['n_labels']} labels, best val loss {tr['best_val_loss']:.4f} at step {tr['best_step']} "
        f"({tr['steps']} steps, {tr['wall_seconds']:.0f} s) -> {args.out}"
    )
    return 0


def run_study_run(args: argparse.Namespace) -> int:
    from physfm import tracking
    from physfm.io import write_json

    tags = parse_tags(args.tag)
    name = args.run_name or f"study {tags.get('study', tracking.experiment_name())}"
    run_id = tracking.start_parent_run(name, tags=tags)
    write_json(args.out, {"run_id": run_id, "run_name": name, "experiment": tracking.experiment_name()})
    print(f"study parent run: {run_id or '(tracking off)'} ({name})")
    return 0
