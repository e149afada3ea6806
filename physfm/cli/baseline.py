"""Supervised and zero-label baselines (issue 18).

Subcommands: ``observables`` (jet observables of a dataset, computed once and cached) and
``baseline`` (one bdt / pfn / cut cell: train on a label subset, score the test split).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from physfm.cli.common import (
    add_config_arg,
    add_eval_config_arg,
    add_parent_args,
    add_tracking_args,
    csv_list,
    eval_config,
    log_finite,
    open_stage_run,
    parse_pairs,
    set_threads,
    split_metrics,
    wrap,
)

EPILOG = """\
example (the BDT at 300 labels, seed 1, on cached observables):
  physfm subsets     --data D --labels 100,300,1000 --seed 1 --out S
  physfm observables --data D --out O
  physfm baseline    --method bdt --data D --subsets S --labels 300 --seed 1 --observables O --out R
  physfm baseline    --method cut --data D --observables O --out R0        (no labels)
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add this family's subcommands to ``physfm``."""
    o = sub.add_parser(
        "observables",
        help="jet observables (m, m_SD, pT, multiplicity, N-subjettiness, pT_D, girth) of a dataset, cached",
        description=wrap(
            "Compute per-jet observables from the stored constituents of every event of a JetClass-schema "
            "dataset: m, soft-drop m_SD (beta=0, z_cut=0.1, R0=0.8, C/A reclustering; FastJet contrib), pT, "
            "multiplicity, tau1-tau3 (exclusive-kT axes, beta=1, R0=0.8; FastJet contrib Njettiness), tau21, tau32, "
            "pT_D and girth. Writes OUT/observables.h5 (no labels) and OUT/manifest.json keyed by the dataset's "
            "data_version, so `physfm baseline --observables OUT` fits in seconds."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    o.add_argument("--data", required=True, type=Path, help="dataset directory (from convert)")
    o.add_argument("--out", required=True, type=Path, help="output directory (replaced when complete)")
    o.add_argument("--splits", default="train,val,test", help="splits to compute (default train,val,test)")
    o.add_argument("--workers", type=int, default=1, help="processes (the result is the same whatever the number)")
    o.add_argument("--no-progress", action="store_true")
    add_tracking_args(o)
    o.set_defaults(func=run_observables)

    b = sub.add_parser(
        "baseline",
        help="a supervised (bdt, pfn) or zero-label (cut) baseline cell: train on a subset, score the test split",
        description=wrap(
            "bdt: scikit-learn HistGradientBoosting on the jet observables. pfn: a Particle Flow Network (Deep "
            "Sets) from scratch on the backbone's per-particle inputs. Both use only the N labels of seed --seed's "
            "subset: they train on its train part and early-stop on its in-budget validation part (the study's "
            "budget protocol, the same parts every fine-tuning run of the cell uses); the dataset's val split is "
            "never read. cut: the soft-drop-mass-window tagger, no labels (QCD: -m_SD; "
            "t, W, Z, H: -|m_SD - m_PDG|). Writes OUT/test.json in the shape `physfm evaluate` writes (plus "
            "n_labels_used) and logs one MLflow run tagged like a fine-tuning run (mode = the method)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--method", required=True, choices=["bdt", "pfn", "cut"])
    b.add_argument("--data", required=True, type=Path, help="dataset directory (from convert)")
    b.add_argument("--subsets", type=Path, help="subsets directory (physfm subsets); bdt and pfn")
    b.add_argument("--labels", help="label spec of the subset: a count (300), a fraction (1%%) or 'all'; bdt and pfn")
    b.add_argument(
        "--seed", type=int, default=1, help="seed: which subset draw (physfm subsets), init, batch order (default 1)"
    )
    add_config_arg(b, "baselines.<method>")
    add_eval_config_arg(b, "split, bootstrap, pairs, effs")
    b.add_argument("--observables", type=Path, help="cached observables (physfm observables); default: computed here")
    b.add_argument("--out", required=True, type=Path, help="output directory: test.json, predictions.npz")
    b.add_argument(
        "--test-data",
        type=Path,
        help="score this set's split instead of --data's (same classes): trained on one set, tested on another",
    )
    b.add_argument("--test-observables", type=Path, help="the observables of --test-data (physfm observables)")
    b.add_argument("--tested-on", default=None, metavar="NAME", help="name of --test-data, recorded as tested_on")
    b.add_argument("--threads", type=int, default=None, help="CPU threads for torch / the tree (default: library's)")
    b.add_argument("--device", default="auto", help="pfn: auto (CUDA if available), cpu, cuda, cuda:1, ...")
    b.add_argument("--no-progress", action="store_true")
    add_parent_args(b)
    add_tracking_args(b)
    b.set_defaults(func=run_baseline_cmd)


def run_observables(args: argparse.Namespace) -> int:
    from physfm.baselines.observables import DEFINITION, write_observables
    from physfm.data.dataset import open_dataset

    ds = open_dataset(args.data, verify=True)
    splits = csv_list(args.splits) or []
    tags = {"data_version.in": ds.data_version}
    with open_stage_run(args, "observables", "observables", {"definition": DEFINITION}, tags) as run:
        t0 = time.perf_counter()
        out = write_observables(ds, args.out, splits, progress=not args.no_progress, workers=args.workers)
        rate = sum(out["n_events"].values()) / max(time.perf_counter() - t0, 1e-9)
        run.set_tags({"observables_version": out["observables_version"]})
        run.log_params({"workers": args.workers})
        run.log_metrics({"events": sum(out["n_events"].values()), "jets_per_second": rate})
        run.log_artifact(args.out / "manifest.json")
    counts = ", ".join(f"{s} {n}" for s, n in out["n_events"].items())
    print(f"observables of {counts} jets ({rate:.0f} jets/s with {args.workers} worker(s)) -> {args.out}")
    return 0


def run_baseline_cmd(args: argparse.Namespace) -> int:
    from physfm.baselines.run import method_config, run_baseline
    from physfm.data.dataset import open_dataset
    from physfm.finetune.subsets import spec_name
    from physfm.stage import load_text

    set_threads(args.threads)
    cfg = method_config(args.method, load_text(args.config))
    ev = eval_config(args)
    if args.method != "cut" and (args.subsets is None or args.labels is None):
        raise ValueError(f"--method {args.method} trains on a label subset: pass --subsets DIR and --labels SPEC")
    spec = "0" if args.method == "cut" else str(args.labels)
    name = "n=0" if args.method == "cut" else spec_name(spec)
    run_name = args.run_name or f"baseline {name} mode={args.method} seed={args.seed}" + (
        f" on {args.tested_on}" if args.tested_on else ""
    )
    ds = open_dataset(args.data, verify=True)
    tags = {
        "mode": args.method,
        "labels": spec,
        "labels.name": name,
        "seed": args.seed,
        "backbone": "none",
        "data_version.in": ds.data_version,
    }
    params = {**cfg.to_dict(), "method": args.method, "data": str(args.data), "observables": str(args.observables)}
    params["evaluate"] = {"split": ev.split, "bootstrap": ev.bootstrap, "pairs": ev.pairs, "effs": ev.effs}
    with open_stage_run(args, "baseline", run_name, params, tags) as run:
        result = run_baseline(
            args.method,
            ds,
            args.out,
            cfg,
            subsets_dir=args.subsets,
            labels=args.labels,
            seed=args.seed,
            observables_dir=args.observables,
            split=ev.split,
            pairs=parse_pairs(ev.pairs),
            effs=[float(x) for x in ev.effs],
            n_bootstrap=ev.bootstrap,
            threads=args.threads,
            device=args.device,
            run=run,
            progress=not args.no_progress,
            extra={"run_name": run_name, **({"tested_on": args.tested_on} if args.tested_on else {})},
            test_data=args.test_data,
            test_observables=args.test_observables,
        )
        run.set_tags(
            {
                "subset.digest": result["subset_digest"] or "none",
                "backbone.objective": "none",  # the tags of a fine-tuning run; a baseline has no backbone
                "backbone.data_version": "none",
                "tokenizer_version": "none",
                f"{ev.split}.lower_bounds": ",".join(result["lower_bounds"]) or "none",
                "test_data_version": result["test_data_version"],
            }
        )
        run.log_params(
            {"n_labels": result["n_labels"], **{f"subset.{c}": n for c, n in result["subset_per_class"].items()}}
        )
        if args.subsets:  # the budget protocol's name and parameters, as on a fine-tuning run
            from physfm.artifacts import open_artifact

            protocol = open_artifact(args.subsets, "subsets").info.get("protocol") or {}
            run.log_params({f"protocol.{k}": v for k, v in protocol.items()})
        tr = result["train"]
        logged = split_metrics(result, ev.split)
        logged.update({"n_labels": result["n_labels"], "n_labels_used": result["n_labels_used"]})
        logged.update(
            {k: tr[k] for k in ("best_val_loss", "best_val_accuracy", "best_step", "wall_seconds") if k in tr}
        )
        log_finite(run, logged)
        run.log_artifact(Path(args.out) / "test.json")
    m, s = result["metrics"], result["std"]
    shown = [k for k in m if k in ("accuracy", "auc") or "_vs_" in k]
    print(
        f"{run_name}: {result['n_labels_used']} labels used, {result['n_events']} {ev.split} events: "
        + ", ".join(f"{k} {m[k]:.4g} ± {s[k]:.2g}" for k in shown)
    )
    return 0
