"""Evaluation subcommands: ``evaluate`` (test metrics of a fine-tuned model), ``embed`` and ``search``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from physfm.cli.common import (
    add_config_arg,
    add_parent_args,
    add_tracking_args,
    csv_list,
    log_finite,
    open_stage_run,
    parse_pairs,
    set_threads,
    split_metrics,
    stage_config,
    wrap,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this family's subcommands to ``physfm``."""
    # ---------------------------------------------------------------- evaluate
    e = sub.add_parser(
        "evaluate",
        help="test-split metrics of a fine-tuned model (any task), with bootstrap errors",
        description=wrap(
            "The metrics of the model's task: classification: accuracy, one-vs-rest ROC AUC per class and their "
            "mean, and for each signal:background pair the AUC and background rejection 1/eB at signal efficiency "
            "0.5 and 0.3; direction: mean, median and 68 % angular error (deg); regression: RMSE, MAE, bias, "
            "resolution; segmentation: macro and per-class F1. Uncertainties from resampling the test events. "
            "Written as JSON and logged to the model's MLflow run (test_*)."
        ),
    )
    e.add_argument("--model", required=True, type=Path, help="fine-tuned model directory (physfm finetune)")
    e.add_argument("--data", required=True, type=Path, help="dataset directory")
    e.add_argument("--out", required=True, type=Path, help="output JSON")
    add_config_arg(e, "evaluate (split, bootstrap, pairs, effs)")
    e.add_argument("--predictions", type=Path, help="also write probabilities/labels/keys to this .npz")
    e.add_argument(
        "--observables",
        type=Path,
        default=None,
        help="--data's jet observables (physfm observables), for a model whose head reads them (head.inputs); "
        "default: computed from the data",
    )
    e.add_argument(
        "--tested-on",
        default=None,
        metavar="NAME",
        help="--data is another set than the model's (a downstream entry's evaluate_on): its name, recorded as "
        "tested_on and prefixing the metrics logged to the model's MLflow run (NAME.test_auc, ...)",
    )
    e.add_argument("--threads", type=int, default=None)
    e.set_defaults(func=run_evaluate, tracked=True)  # logs into the fine-tuning run

    # ---------------------------------------------------------------- embed
    m = sub.add_parser(
        "embed",
        help="backbone embeddings of a split, indexed with faiss for search",
        description="Write the event embeddings (class-token state) of each split to OUT/<split>/ with a faiss "
        "index over them (flat: exact; hnsw, ivf: approximate, for large sets; auto: by size). With two "
        "splits (e.g. train,test), also classify the second split's events by their k nearest neighbours in "
        "the first and write the accuracy to OUT/knn.json: a representation-quality probe.",
    )
    m.add_argument("--backbone", required=True, type=Path, help="backbone directory (physfm pretrain)")
    m.add_argument("--data", required=True, type=Path)
    m.add_argument("--split", default="test", help="split(s), comma separated (default test)")
    m.add_argument("--out", required=True, type=Path, help="output directory: one embedding directory per split")
    add_config_arg(m, "evaluate.knn (k, index, max_events, normalize)")
    m.add_argument("--name", default=None, help="label of the k-NN result in the report")
    m.add_argument("--random-init", type=int, default=None, metavar="SEED", help="baseline: random weights")
    m.add_argument(
        "--subsets",
        type=Path,
        default=None,
        help="label subsets (physfm subsets): with two splits, also the k-NN accuracy against each small "
        "labelled subset of --labels x --seeds (its budget: the subset's n labels)",
    )
    m.add_argument("--labels", default="", help="label specs of the budgeted k-NN, comma separated (e.g. 100,1000)")
    m.add_argument("--seeds", default="", help="subset seeds of the budgeted k-NN, comma separated (e.g. 1,2,3)")
    m.add_argument("--threads", type=int, default=None)
    add_parent_args(m)
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


def run_evaluate(args: argparse.Namespace) -> int:
    from physfm import tracking
    from physfm.evaluate.evaluate import EvaluateConfig, evaluate_model
    from physfm.finetune.head_inputs import Sources
    from physfm.finetune.patch_segmentation import evaluate_segmentation, is_segmentation_model
    from physfm.finetune.task import report_metrics
    from physfm.io import write_json

    set_threads(args.threads)
    cfg = stage_config(EvaluateConfig, args.config)
    split = cfg.split
    if is_segmentation_model(args.model):  # patch backbones (PoLAr-MAE): per-point segmentation
        result = evaluate_segmentation(args.model, args.data, split, n_bootstrap=cfg.bootstrap)
    else:
        result = evaluate_model(  # any task: the model's meta names it (pairs/effs: classification only)
            args.model,
            args.data,
            split,
            pairs=parse_pairs(cfg.pairs),
            effs=cfg.effs,
            n_bootstrap=cfg.bootstrap,
            predictions=args.predictions,
            sources=Sources(observables=args.observables),
        )
    prefix = f"{args.tested_on}." if args.tested_on else ""
    if args.tested_on:
        result["tested_on"] = args.tested_on
    with tracking.resume_run(result.get("run_id")) as run:
        log_finite(run, split_metrics(result, f"{prefix}{split}"))
        run.set_tags({f"{prefix}{split}.lower_bounds": ",".join(result["lower_bounds"]) or "none"})
        if args.tested_on:
            run.set_tags({f"{prefix}data_version": result.get("test_data_version") or "?"})
    write_json(args.out, result)
    m, s = result["metrics"], result["std"]
    headline, _ = report_metrics()  # every task's headline metrics
    shown = [k for k in m if (k in headline or "_vs_" in k) and k in s]
    print(
        f"{result.get('run_name') or args.model} on {result['n_events']} {split} events: "
        + ", ".join(f"{k} {m[k]:.4g} ± {s[k]:.2g}" for k in shown)
    )
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from physfm.data.dataset import open_dataset
    from physfm.evaluate.evaluate import EmbedConfig, embed_split, load_embedder
    from physfm.evaluate.probes import collapse_numbers, knn_at_budget
    from physfm.evaluate.search import knn_accuracy, open_index, write_embeddings
    from physfm.io import write_json
    from physfm.stage import to_dict

    set_threads(args.threads)
    cfg = stage_config(EmbedConfig, args.config)
    ds = open_dataset(args.data, verify=True)  # once, before any split is embedded
    splits = csv_list(args.split) or []
    if len(splits) not in (1, 2):
        raise ValueError("--split takes one split, or two for the k-NN probe (reference, queries), e.g. train,test")
    init = "random-init" if args.random_init is not None else "pretrained"
    name = args.name or f"{args.backbone.name} {init}"
    params = {**to_dict(cfg), "splits": splits, "random_init": args.random_init, "backbone": str(args.backbone)}
    with open_stage_run(args, "embed", f"embed {name}", params) as run:
        model, bmeta = load_embedder(args.backbone, args.random_init)
        for split in splits:
            emb, labels, keys, meta = embed_split(model, bmeta, ds, split, max_events=cfg.max_events)
            meta = write_embeddings(
                args.out / split,
                emb,
                labels,
                keys,
                meta,
                kind=cfg.index,
                normalize=cfg.normalize,
                recall_k=cfg.k,
                approximate_above=cfg.approximate_above,
            )
            run.log_metrics({f"events_{split}": len(labels), "dim": emb.shape[1]})
            if "recall_at_k" in meta["index"]:  # an approximate index: its recall against exact search
                run.log_metrics({f"index_recall_at_{cfg.k}_{split}": meta["index"]["recall_at_k"]})
            print(f"embedded {len(labels)} {split} events ({emb.shape[1]} dims, {meta['index']['kind']} index)")
        run.set_tags({"data_version.in": meta["data_version"], "tokenizer_version": meta.get("tokenizer_version")})
        if len(splits) == 2:
            ref, queries = open_index(args.out / splits[0]), open_index(args.out / splits[1])
            acc = knn_accuracy(ref, queries.embeddings, queries.labels, k=cfg.k)
            budgets = []
            if args.subsets is not None and csv_list(args.labels):
                seeds = [int(s) for s in csv_list(args.seeds) or []]
                if not seeds:
                    raise ValueError("--subsets with --labels needs --seeds (the subsets' seeds, e.g. 1,2,3)")
                budgets = knn_at_budget(
                    model,
                    bmeta,
                    ds,
                    args.subsets,
                    csv_list(args.labels),
                    seeds,
                    queries,
                    k=cfg.k,
                    normalize=cfg.normalize,
                )
                for b in budgets:
                    print(
                        f"k-NN accuracy with {b['n_labels']} labels (seed {b['seed']}, k={b['k']}): {b['accuracy']:.4f}"
                    )
                    run.log_metrics({f"knn_accuracy_n{b['n_labels']}_seed{b['seed']}": b["accuracy"]})
            collapse = collapse_numbers(queries.embeddings) if len(queries) >= 2 else {}
            run.log_metrics({f"embedding_{k}": v for k, v in collapse.items()})
            result = {
                "name": name,
                "k": cfg.k,
                "accuracy": acc,
                "n_reference": len(ref),
                "n_queries": len(queries),
                "reference": splits[0],
                "queries": splits[1],
                "random_init": args.random_init is not None,
                "objective": bmeta.get("objective"),
                "collapse": collapse,
                "budgets": budgets,
            }
            write_json(args.out / "knn.json", result)
            run.log_metrics({"knn_accuracy": acc})
            print(f"k-NN accuracy (k={cfg.k}) of {len(queries)} {splits[1]} events against {splits[0]}: {acc:.4f}")
    print(f"-> {args.out}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from physfm.evaluate.search import knn_accuracy, open_index
    from physfm.io import write_json

    index = open_index(args.index)
    if args.queries is not None:
        queries = open_index(args.queries)
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
        t0 = time.perf_counter()
        hits = index.neighbours(row, args.k)
        latency_ms = 1e3 * (time.perf_counter() - t0)
        result = {
            "query": {"row": row, "event_key": int(index.event_keys[row])},
            "neighbours": hits,
            "index": index.meta.get("index", {}),
            "latency_ms": latency_ms,
        }
        print(
            f"{len(hits)} neighbours among {len(index)} events in {latency_ms:.2f} ms ({index.meta['index']['kind']})"
        )
        print(f"{'rank':>4} {'row':>7} {'event_key':>20} {'label':>8} {'distance':>9}")
        for h in hits:
            print(f"{h['rank']:>4} {h['row']:>7} {h['event_key']:>20} {h['label']!s:>8} {h['distance']:>9.4f}")
    if args.out:
        write_json(args.out, result)
    return 0
