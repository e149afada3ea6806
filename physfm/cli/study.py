"""The label-efficiency study.

Subcommands: ``subsets``, ``finetune``, ``evaluate``, ``embed``, ``search``, ``study-run``, ``report``.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

from physfm.cli.common import add_tracking_args, csv_list, parse_tags

STUDY_EPILOG = """\
the study, step by step (Snakemake runs the whole grid: `snakemake --cores 2 all`):
  physfm subsets  --data D --labels 100,300,1000 --out S
  physfm finetune --data D --backbone B --subsets S --labels 300 --mode finetune --seed 1 --out M
  physfm evaluate --model M --data D --out M/test.json
  physfm report   --results M/test.json ... --out report.html
"""


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=100)


def _parent_run_id(args: argparse.Namespace) -> str | None:
    if getattr(args, "parent_run_id", None):
        return args.parent_run_id
    path = getattr(args, "parent_run_file", None)
    if path and Path(path).is_file():
        return json.loads(Path(path).read_text()).get("run_id")
    return None


def _add_parent(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--parent-run-id", help="MLflow run to nest this run under (the study's parent run)")
    g.add_argument("--parent-run-file", type=Path, help="JSON file with the parent run_id (written by study-run)")


def _named(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        out[name] = Path(path)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add this family's subcommands to ``physfm``."""
    # ---------------------------------------------------------------- subsets
    s = sub.add_parser(
        "subsets",
        help="nested, class-balanced label subsets of the train split",
        description=_wrap(
            "Define the labelled subsets of a label-efficiency study once: a seeded, class-interleaved "
            "order of the labelled train events; the subset with N labels is its first N events, so every smaller "
            "subset lies inside every larger one and every mode trains on the same events. Writes order.npy and "
            "manifest.json (counts per class and a digest of the event keys, per subset)."
        ),
        epilog=STUDY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--data", required=True, type=Path, help="dataset directory (from convert)")
    s.add_argument("--labels", required=True, help="comma list of label counts (300), fractions (0.01 or 1%%) or 'all'")
    s.add_argument("--seed", type=int, default=1, help="seed of the subset order (default 1)")
    s.add_argument("--out", required=True, type=Path, help="output directory")
    s.set_defaults(func=run_subsets)

    # ---------------------------------------------------------------- finetune
    f = sub.add_parser(
        "finetune",
        help="train a classifier on a label subset: scratch, finetune or frozen backbone",
        description=_wrap(
            "Train a classification head on a backbone with the labelled events of one subset. "
            "scratch: same architecture, random init, all trained at --lr. finetune: pretrained backbone trained "
            "at --lr x --backbone-lr-scale with --layer-decay per layer below the top. frozen: pretrained backbone "
            "untouched, head only. Early stopping on the validation loss; the best model is kept. Runs on CUDA when "
            "available, CPU otherwise."
        ),
        epilog=STUDY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("--data", required=True, type=Path, help="dataset directory (from convert)")
    f.add_argument("--backbone", default="none", help="pretrained backbone directory (physfm pretrain), or 'none'")
    f.add_argument("--backbone-name", default=None, help="short name of the backbone for run names and tags")
    f.add_argument("--mode", required=True, choices=["scratch", "finetune", "frozen"])
    lab = f.add_mutually_exclusive_group(required=True)
    lab.add_argument("--labels", help="labelled events: a count (300), a fraction (0.01, 1%%) or 'all'")
    lab.add_argument("--fraction", help="same as --labels, for fractions")
    f.add_argument("--seed", type=int, default=1, help="training seed: head init, batch order (default 1)")
    f.add_argument("--subsets", type=Path, help="subsets directory (physfm subsets); default: made on the fly")
    f.add_argument("--out", required=True, type=Path, help="output classifier directory")
    g = f.add_argument_group("head")
    g.add_argument("--pool", default="cls", choices=["cls", "mean", "sum"], help="cls token, mean, or sum head")
    g.add_argument("--head", default="mlp", choices=["linear", "mlp"], help="linear probe or one-hidden-layer MLP")
    g.add_argument("--head-hidden", type=int, default=128)
    g.add_argument("--head-dropout", type=float, default=0.1)
    o = f.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, default=1e-3, help="head learning rate (and all of scratch)")
    o.add_argument("--backbone-lr-scale", type=float, default=0.1, help="finetune: backbone LR = lr x this")
    o.add_argument("--layer-decay", type=float, default=0.8, help="finetune: LR multiplier per layer below the top")
    o.add_argument("--weight-decay", type=float, default=0.01)
    o.add_argument("--batch-size", type=int, default=64)
    o.add_argument("--max-steps", type=int, default=1000)
    o.add_argument("--warmup-steps", type=int, default=20)
    o.add_argument("--eval-every", type=int, default=20, help="steps between validation-loss evaluations")
    o.add_argument("--patience", type=int, default=10, help="evaluations without improvement before stopping")
    o.add_argument("--val-max-events", type=int, default=2000, help="cap on validation events (0 = all)")
    f.add_argument("--arch", default="", help="--backbone none: BackboneConfig as KEY=VALUE,... (d_model=64,...)")
    f.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    f.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    f.add_argument("--no-progress", action="store_true")
    _add_parent(f)
    add_tracking_args(f)
    f.set_defaults(func=run_finetune)

    # ---------------------------------------------------------------- evaluate
    e = sub.add_parser(
        "evaluate",
        help="test-split metrics of a fine-tuned classifier, with bootstrap errors",
        description="Accuracy, one-vs-rest ROC AUC per class and their mean, and for each signal:background "
        "pair the AUC and background rejection 1/eB at signal efficiency 0.5 and 0.3; uncertainties from "
        "resampling the test events. Written as JSON and logged to the classifier's MLflow run (test_*).",
    )
    e.add_argument("--model", required=True, type=Path, help="classifier directory (physfm finetune)")
    e.add_argument("--data", required=True, type=Path, help="dataset directory")
    e.add_argument("--split", default="test")
    e.add_argument("--out", required=True, type=Path, help="output JSON")
    e.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    e.add_argument("--pairs", default="Tbqq:QCD", help="signal:background class pairs, comma separated")
    e.add_argument("--effs", default="0.5,0.3", help="signal efficiencies for 1/eB")
    e.add_argument("--predictions", type=Path, help="also write probabilities/labels/keys to this .npz")
    e.add_argument("--threads", type=int, default=None)
    e.set_defaults(func=run_evaluate, tracked=True)  # logs into the fine-tuning run

    # ---------------------------------------------------------------- embed
    m = sub.add_parser(
        "embed",
        help="backbone embeddings of a split, indexed with faiss for search",
        description="Write the event embeddings (class-token state) of each split to OUT/<split>/ with a faiss "
        "index over them (flat: exact; hnsw, ivf: approximate, for large sets; auto: by size). With --knn K and "
        "two splits (e.g. train,test), also classify the second split's events by their K nearest neighbours in "
        "the first and write the accuracy to OUT/knn.json: a representation-quality probe.",
    )
    m.add_argument("--backbone", required=True, type=Path, help="backbone directory (physfm pretrain)")
    m.add_argument("--data", required=True, type=Path)
    m.add_argument("--split", default="test", help="split(s), comma separated (default test)")
    m.add_argument("--out", required=True, type=Path, help="output directory: one embedding directory per split")
    m.add_argument("--knn", type=int, default=None, metavar="K", help="k-NN accuracy of split 2 against split 1")
    m.add_argument("--name", default=None, help="label of the k-NN result in the report")
    m.add_argument("--index", default="auto", choices=["auto", "flat", "hnsw", "ivf"])
    m.add_argument("--random-init", type=int, default=None, metavar="SEED", help="baseline: random weights")
    m.add_argument("--max-events", type=int, default=None, help="embed only the first N events of the split")
    m.add_argument("--no-normalize", action="store_true", help="keep raw embeddings (default: L2-normalised)")
    m.add_argument("--threads", type=int, default=None)
    _add_parent(m)
    add_tracking_args(m)
    m.set_defaults(func=run_embed)

    # ---------------------------------------------------------------- search
    q = sub.add_parser(
        "search",
        help="nearest events in embedding space; or k-NN accuracy of a query set",
        description="With --event/--row: print the k events nearest to one event of the index (itself first) "
        "with labels and distances. With --queries DIR (another embedding directory): classify its events by "
        "their k nearest neighbours in the index and report the accuracy.",
    )
    q.add_argument("--index", required=True, type=Path, help="embedding directory (physfm embed)")
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--event", type=int, help="event_key of the query event")
    which.add_argument("--row", type=int, help="position of the query event in the index")
    which.add_argument("--queries", type=Path, help="embedding directory whose events are classified by k-NN")
    q.add_argument("-k", type=int, default=10, help="number of neighbours (default 10)")
    q.add_argument("--out", type=Path, help="also write the result as JSON")
    q.add_argument("--name", default=None, help="label of this k-NN result in the report")
    q.set_defaults(func=run_search)

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

    # ---------------------------------------------------------------- report
    p = sub.add_parser(
        "report",
        help="the study's HTML report: data-efficiency plot, ROC, table, label-efficiency factor",
        description="Render one self-contained HTML page from the evaluation JSONs (and, when given, the "
        "data summary, tokenizer and pretraining outputs and k-NN results), write the figures as PNG and every "
        "number to report.json, log them to the study's MLflow parent run and close it.",
    )
    p.add_argument("--results", required=True, nargs="+", type=Path, help="evaluation JSONs (physfm evaluate)")
    p.add_argument("--out", required=True, type=Path, help="output HTML file")
    p.add_argument("--figures", type=Path, help="directory for the PNG figures (default: beside the HTML)")
    p.add_argument("--metric", default="auc", help="headline metric for the label-efficiency factor")
    p.add_argument("--title", default="physfm label-efficiency study")
    p.add_argument("--summary", type=Path, help="data summary directory (physfm summarize)")
    p.add_argument("--tokenizer", action="append", default=[], metavar="NAME=DIR", help="tokenizer dir (repeat)")
    p.add_argument("--pretrain", action="append", default=[], metavar="NAME=DIR", help="backbone dir (repeat)")
    p.add_argument("--knn", nargs="*", default=[], type=Path, help="k-NN JSONs (physfm search --queries)")
    p.add_argument("--subsets", type=Path, help="subsets directory, logged with the report")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the label-efficiency factor")
    p.add_argument("--study-info", action="append", default=[], metavar="KEY=VALUE", help="extra study facts")
    _add_parent(p)
    p.set_defaults(func=run_report)


# --------------------------------------------------------------------------- implementations
def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)
        import faiss

        faiss.omp_set_num_threads(n)


def run_subsets(args: argparse.Namespace) -> int:
    from physfm.finetune.subsets import make_subsets

    specs = csv_list(args.labels) or []
    if not specs:
        raise ValueError("--labels needs at least one label count, fraction or 'all'")
    manifest = make_subsets(args.data, specs, args.seed, args.out)
    for spec, info in manifest["subsets"].items():
        per = ", ".join(f"{c} {n}" for c, n in info["per_class"].items())
        print(f"{spec:>8}: {info['n']:6d} events ({per}), digest {info['digest']}")
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


def finetune_run_name(spec: str, mode: str, seed: int, backbone: str | None = None) -> str:
    from physfm.finetune.subsets import spec_name

    prefix = f"finetune {backbone} " if backbone else "finetune "
    return f"{prefix}{spec_name(spec)} mode={mode} seed={seed}"


def run_finetune(args: argparse.Namespace) -> int:
    from physfm import tracking
    from physfm.data.shards import load_manifest
    from physfm.finetune.direction import finetune_direction
    from physfm.finetune.model import HeadConfig
    from physfm.finetune.subsets import spec_name
    from physfm.finetune.train import FinetuneConfig, finetune

    _threads(args.threads)
    spec = args.labels or args.fraction
    cfg = FinetuneConfig(
        mode=args.mode,
        labels=str(spec),
        seed=args.seed,
        head=HeadConfig(pool=args.pool, kind=args.head, hidden=args.head_hidden, dropout=args.head_dropout),
        lr=args.lr,
        backbone_lr_scale=args.backbone_lr_scale,
        layer_decay=args.layer_decay,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        warmup_steps=args.warmup_steps,
        eval_every=args.eval_every,
        patience=args.patience,
        val_max_events=args.val_max_events or None,
        device=args.device,
    )
    backbone = None if args.backbone == "none" else Path(args.backbone)
    if backbone is not None and not backbone.is_dir():
        raise FileNotFoundError(f"--backbone {backbone}: no such directory (run `physfm pretrain` or pass 'none')")
    run_name = args.run_name or finetune_run_name(spec, args.mode, args.seed, args.backbone_name)
    manifest = load_manifest(args.data)
    tags = {
        "mode": args.mode,
        "labels": str(spec),
        "labels.name": spec_name(spec),
        "seed": args.seed,
        "backbone": args.backbone_name or ("none" if backbone is None else backbone.name),
        "data_version.in": manifest["data_version"],
        **parse_tags(args.tag),
    }
    params = {**cfg.to_dict(), "backbone_dir": str(args.backbone), "data": str(args.data)}
    with tracking.stage_run(
        "finetune", run_name=run_name, params=params, tags=tags, parent_run_id=_parent_run_id(args)
    ) as run:
        train_fn = finetune if manifest["classes"] else finetune_direction  # no classes: IceCube direction
        meta = train_fn(
            args.data,
            args.out,
            cfg,
            backbone_dir=backbone,
            subsets_dir=args.subsets,
            arch=_arch(args.arch),
            run=run,
            progress=not args.no_progress,
            extra_meta={"cell": {"backbone": tags["backbone"], "run_name": run_name}},
        )
        run.set_tags(
            {
                "subset.digest": meta["subset"]["digest"],
                "backbone.objective": meta["backbone"].get("objective"),
                "backbone.data_version": meta["backbone"].get("data_version"),
                "tokenizer_version": meta["backbone"].get("tokenizer_version"),
            }
        )
        run.log_params(
            {"n_labels": meta["n_labels"], **{f"subset.{c}": n for c, n in meta["subset"]["per_class"].items()}}
        )
        tr = meta["train"]
        run.log_metrics(
            {
                "best_val_loss": tr["best_val_loss"],
                **{k: tr[k] for k in ("best_val_accuracy", "best_val_mean_deg", "best_val_median_deg") if k in tr},
                "best_step": tr["best_step"],
                "n_labels": meta["n_labels"],
                "wall_seconds": tr["wall_seconds"],
            }
        )
        run.log_artifact(Path(args.out) / ("classifier.json" if manifest["classes"] else "direction.json"))
    print(
        f"{run_name}: {meta['n_labels']} labels, best val loss {tr['best_val_loss']:.4f} at step {tr['best_step']} "
        f"({tr['steps']} steps, {tr['wall_seconds']:.0f} s) -> {args.out}"
    )
    return 0


def _pairs(text: str) -> list[tuple[str, str]]:
    out = []
    for item in csv_list(text) or []:
        s, sep, b = item.partition(":")
        if not sep:
            raise ValueError(f"--pairs expects SIGNAL:BACKGROUND items, got '{item}'")
        out.append((s, b))
    return out


def run_evaluate(args: argparse.Namespace) -> int:
    import math

    from physfm import tracking
    from physfm.evaluate.evaluate import evaluate_classifier
    from physfm.finetune.direction import evaluate_direction, is_direction_model
    from physfm.io import write_json

    _threads(args.threads)
    effs = [float(x) for x in csv_list(args.effs) or []]
    if is_direction_model(args.model):  # IceCube direction: angular errors in degrees
        result = evaluate_direction(
            args.model, args.data, args.split, n_bootstrap=args.bootstrap, predictions=args.predictions
        )
    else:
        result = evaluate_classifier(
            args.model,
            args.data,
            args.split,
            pairs=_pairs(args.pairs),
            effs=effs,
            n_bootstrap=args.bootstrap,
            predictions=args.predictions,
        )
    with tracking.resume_run(result.get("run_id")) as run:
        logged = {f"{args.split}_{k}": v for k, v in result["metrics"].items()}
        logged.update({f"{args.split}_{k}_std": v for k, v in result["std"].items()})
        run.log_metrics({k: v for k, v in logged.items() if v is not None and math.isfinite(v)})
        run.set_tags({f"{args.split}.lower_bounds": ",".join(result["lower_bounds"]) or "none"})
    write_json(args.out, result)
    m, s = result["metrics"], result["std"]
    headline = ("accuracy", "auc", "mean_angular_error_deg", "median_angular_error_deg")
    shown = [k for k in m if k in headline or "_vs_" in k]
    print(
        f"{result.get('run_name') or args.model} on {result['n_events']} {args.split} events: "
        + ", ".join(f"{k} {m[k]:.4g} ± {s[k]:.2g}" for k in shown)
    )
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from physfm import tracking
    from physfm.data.shards import load_manifest
    from physfm.evaluate.evaluate import embed_split, load_embedder
    from physfm.evaluate.search import knn_accuracy, open_index, write_embeddings
    from physfm.io import write_json

    _threads(args.threads)
    load_manifest(args.data, verify=True)  # once, before any split is embedded
    splits = csv_list(args.split) or []
    if args.knn is not None and len(splits) != 2:
        raise ValueError("--knn needs two splits: the labelled reference and the queries, e.g. --split train,test")
    init = "random-init" if args.random_init is not None else "pretrained"
    name = args.name or f"{args.backbone.name} {init}"
    with tracking.stage_run(
        "embed",
        run_name=args.run_name or f"embed {name}",
        params={"splits": splits, "index": args.index, "random_init": args.random_init, "backbone": str(args.backbone)},
        tags=parse_tags(args.tag),
        parent_run_id=_parent_run_id(args),
    ) as run:
        model, bmeta = load_embedder(args.backbone, args.random_init)
        for split in splits:
            emb, labels, keys, meta = embed_split(model, bmeta, args.data, split, max_events=args.max_events)
            meta = write_embeddings(
                args.out / split, emb, labels, keys, meta, kind=args.index, normalize=not args.no_normalize
            )
            run.log_metrics({f"events_{split}": len(labels), "dim": emb.shape[1]})
            print(f"embedded {len(labels)} {split} events ({emb.shape[1]} dims, {meta['index']['kind']} index)")
        run.set_tags({"data_version.in": meta["data_version"], "tokenizer_version": meta.get("tokenizer_version")})
        if args.knn is not None:
            ref, queries = open_index(args.out / splits[0]), open_index(args.out / splits[1])
            acc = knn_accuracy(ref, queries.embeddings, queries.labels, k=args.knn)
            result = {
                "name": name,
                "k": args.knn,
                "accuracy": acc,
                "n_reference": len(ref),
                "n_queries": len(queries),
                "reference": splits[0],
                "queries": splits[1],
                "random_init": args.random_init is not None,
            }
            write_json(args.out / "knn.json", result)
            run.log_metrics({"knn_accuracy": acc})
            print(f"k-NN accuracy (k={args.knn}) of {len(queries)} {splits[1]} events against {splits[0]}: {acc:.4f}")
    print(f"-> {args.out}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from physfm.evaluate.search import knn_accuracy, open_index
    from physfm.io import write_json

    index = open_index(args.index)
    if args.queries is not None:
        queries = open_index(args.queries, verify=True)
        acc = knn_accuracy(index, queries.embeddings, queries.labels, k=args.k)
        result = {
            "name": args.name or ("random-init" if index.meta.get("random_init") else str(index.meta.get("objective"))),
            "k": args.k,
            "accuracy": acc,
            "n_reference": len(index),
            "n_queries": len(queries),
            "index": str(args.index),
            "queries": str(args.queries),
            "random_init": bool(index.meta.get("random_init")),
        }
        print(f"k-NN accuracy (k={args.k}) of {len(queries)} events against {len(index)}: {acc:.4f}")
    else:
        row = args.row if args.row is not None else index.row_of(args.event)
        hits = index.neighbours(row, args.k)
        result = {"query": {"row": row, "event_key": int(index.event_keys[row])}, "neighbours": hits}
        print(f"{'rank':>4} {'row':>7} {'event_key':>20} {'label':>8} {'distance':>9}")
        for h in hits:
            print(f"{h['rank']:>4} {h['row']:>7} {h['event_key']:>20} {h['label']!s:>8} {h['distance']:>9.4f}")
    if args.out:
        write_json(args.out, result)
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


def run_report(args: argparse.Namespace) -> int:
    import math

    from physfm import tracking
    from physfm.evaluate.report import build_report
    from physfm.io import read_json

    results = [read_json(p) for p in args.results]
    knn = [read_json(p) for p in args.knn]
    study = dict(kv.split("=", 1) for kv in args.study_info if "=" in kv)
    data = build_report(
        args.out,
        results,
        figures_dir=args.figures,
        title=args.title,
        metric=args.metric,
        study=study,
        data_summary=args.summary,
        tokenizers=_named(args.tokenizer),
        pretrain=_named(args.pretrain),
        knn=knn,
        n_bootstrap=args.bootstrap,
        mlflow_runs=tracking.runs_view_url(),
    )
    parent = _parent_run_id(args)
    with tracking.resume_run(parent) as run:
        metrics: dict[str, float] = {}
        for e in data["efficiency"]:
            key = f"label_efficiency_{e['mode']}_n{int(e['n'])}" + ("" if e["backbone"] == "-" else f"_{e['backbone']}")
            metrics[key] = e["factor"]
        for k in data["knn"]:
            metrics[f"knn_accuracy_{k['name'].replace(' ', '_')}"] = k["accuracy"]
        for c in data["cells"]:
            key = f"{c['mode']}_n{c['n_labels']}" + ("" if c["backbone"] == "-" else f"_{c['backbone']}")
            metrics[f"mean_{data['metric']}_{key}"] = c[data["metric"]]
        run.log_metrics({k: v for k, v in metrics.items() if v is not None and math.isfinite(v)})
        run.log_artifact(args.out, artifact_path="report")
        run.log_artifact(args.out.with_name(args.out.stem + ".json"), artifact_path="report")
        for fig in data["figures"].values():
            run.log_artifact(fig, artifact_path="report/figures")
        if args.subsets:
            run.log_artifact(Path(args.subsets) / "manifest.json", artifact_path="subsets")
    tracking.end_run(parent)
    for line in data["headline"]:
        print(line)
    print(f"report -> {args.out}")
    return 0
