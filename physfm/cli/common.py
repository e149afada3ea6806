"""Options and helpers shared by the stage subcommands."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_tracking_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking (MLflow)")
    g.add_argument("--run-name", help="MLflow run name (default: the stage name)")
    g.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra MLflow tag, repeatable (Snakemake passes rule and wildcards this way)",
    )


def parse_tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--tag expects KEY=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        tags[k] = v
    return tags


def parse_mapping(text: str, what: str) -> dict[str, float]:
    """``train=0.8,val=0.1,test=0.1`` -> dict."""
    out: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        if "=" not in part:
            raise ValueError(f"{what}: expected NAME=VALUE pairs separated by commas, got '{text}'")
        k, v = part.split("=", 1)
        out[k.strip()] = float(v)
    return out


def csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def add_config_arg(p: argparse.ArgumentParser, section: str) -> None:
    """``--config``: the stage's settings as one JSON document (what the Snakemake rule passes)."""
    p.add_argument(
        "--config",
        metavar="JSON|FILE",
        help=f"settings: the `{section}` config section as inline JSON or a YAML/JSON file; omitted keys take "
        "their defaults (config/README.md)",
    )


def stage_config(cls: type, text: str | None, overrides: dict[str, Any] | None = None) -> Any:
    """Build a stage's settings dataclass from ``--config`` (see :mod:`physfm.stage`); ``overrides``: the
    values of flags typed by hand, which replace the config's where given (not None)."""
    from physfm.stage import build, load_text

    data = load_text(text)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build(cls, data)


def add_generate_args(
    p: argparse.ArgumentParser,
    *,
    out: str,
    section: str,
    count: str,
    count_help: str,
    seed_help: str = "random seed (overrides --config)",
    workers: int | None = None,
    workers_help: str = "parallel processes (default: all cores)",
) -> None:
    """The arguments of every ``physfm generate KIND``: ``--out`` (help ``out``), ``--config`` (the
    ``section``), the number to simulate (the flag ``count``, e.g. ``--n-jets``) and ``--seed`` (both
    override ``--config``), ``--workers``, ``--no-progress`` and the tracking arguments."""
    from pathlib import Path

    p.add_argument("--out", required=True, type=Path, help=out)
    add_config_arg(p, section)
    p.add_argument(count, type=int, default=None, help=count_help)
    p.add_argument("--seed", type=int, default=None, help=seed_help)
    p.add_argument("--workers", type=int, default=workers, help=workers_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_tracking_args(p)


def add_eval_config_arg(p: argparse.ArgumentParser, keys: str = "split, bootstrap") -> None:
    """``--eval-config``: the study's `evaluate` settings, for a stage that scores a split itself."""
    p.add_argument("--eval-config", metavar="JSON|FILE", help=f"the `evaluate` settings: {keys}")


def eval_config(args: argparse.Namespace) -> Any:
    """The `evaluate` settings (:class:`physfm.evaluate.evaluate.EvaluateConfig`) from ``--eval-config``."""
    from physfm.evaluate.evaluate import EvaluateConfig
    from physfm.stage import build, load_text

    return build(EvaluateConfig, load_text(args.eval_config), "evaluate.")


def wrap(text: str) -> str:
    """A description paragraph wrapped for ``--help``."""
    import textwrap

    return textwrap.fill(text, width=100)


def set_threads(n: int | None) -> None:
    """CPU threads for torch and faiss (``None``: their defaults)."""
    if n:
        import torch

        torch.set_num_threads(n)
        import faiss

        faiss.omp_set_num_threads(n)


def parent_run_id(args: argparse.Namespace) -> str | None:
    """The study's parent MLflow run: ``--parent-run-id``, or the id in ``--parent-run-file``."""
    from pathlib import Path

    if getattr(args, "parent_run_id", None):
        return args.parent_run_id
    path = getattr(args, "parent_run_file", None)
    if path and Path(path).is_file():
        return json.loads(Path(path).read_text()).get("run_id")
    return None


def add_parent_args(p: argparse.ArgumentParser) -> None:
    from pathlib import Path

    g = p.add_mutually_exclusive_group()
    g.add_argument("--parent-run-id", help="MLflow run to nest this run under (the study's parent run)")
    g.add_argument("--parent-run-file", type=Path, help="JSON file with the parent run_id (written by study-run)")


def open_stage_run(
    args: argparse.Namespace,
    stage: str,
    default_name: str,
    params: dict[str, Any],
    tags: dict[str, Any] | None = None,
) -> Any:
    """The stage's MLflow run (a context manager yielding a :class:`physfm.stage.StageLog`).

    The one place a subcommand's ``--run-name``, ``--tag`` and ``--parent-run-*`` arguments become an
    MLflow run: the library function receives the run as its ``log``/``run`` argument.
    """
    from physfm import tracking

    return tracking.stage_run(
        stage,
        run_name=getattr(args, "run_name", None) or default_name,
        params=params,
        tags={**(tags or {}), **parse_tags(getattr(args, "tag", []))},
        parent_run_id=parent_run_id(args),
    )


def split_metrics(record: dict[str, Any], split: str) -> dict[str, Any]:
    """An evaluation record's metrics and their bootstrap std as every stage logs them:
    ``<split>_<name>`` and ``<split>_<name>_std``."""
    logged = {f"{split}_{k}": v for k, v in record["metrics"].items()}
    logged.update({f"{split}_{k}_std": v for k, v in record["std"].items()})
    return logged


def log_finite(run: Any, metrics: dict[str, Any]) -> None:
    """Log the metrics that have a finite value into ``run`` (None, NaN and infinities left out)."""
    import math

    run.log_metrics({k: v for k, v in metrics.items() if v is not None and math.isfinite(v)})


def log_generation(
    run: Any,
    out: Any,
    generator: str,
    params: dict[str, Any],
    paths: list[Any],
    sim_config: dict[str, Any] | None,
    *,
    unit: str,
    n: int,
    wall: float,
    **totals: int,
) -> None:
    """Write a simulation's ``out/generation.json`` and log it into the stage's run: its content version
    (tag ``data_version.out``), the record, and as metrics the ``n`` ``unit`` simulated (``jets``,
    ``events``), each of ``totals`` (e.g. ``pulses``) with its mean per event, the wall seconds and the rate."""
    from pathlib import Path

    from physfm.data.generation import write_generation_record

    info = write_generation_record(out, generator, params, paths, sim_config)
    run.set_tags({"data_version.out": info["content_version"]})
    metrics: dict[str, float] = {unit: n}
    for name, total in totals.items():
        metrics.update({name: total, f"{name}_per_event": total / n})
    metrics.update({"wall_seconds": wall, f"{unit}_per_second": n / max(wall, 1e-9)})
    run.log_metrics(metrics)
    run.log_artifact(Path(out) / "generation.json")


def parse_pairs(items: str | list[str] | None) -> list[tuple[str, str]]:
    """``["Tbqq:QCD", "Wqq:QCD"]`` (or ``"Tbqq:QCD,Wqq:QCD"``) -> ``[("Tbqq", "QCD"), ("Wqq", "QCD")]``."""
    out = []
    for item in (csv_list(items) or []) if isinstance(items, str) else (items or []):
        s, sep, b = item.partition(":")
        if not sep:
            raise ValueError(f"evaluate pairs expects SIGNAL:BACKGROUND items, got '{item}'")
        out.append((s, b))
    return out
