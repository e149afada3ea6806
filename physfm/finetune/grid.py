"""The label-efficiency grid as the workflow sees it: cells, wildcard values, run names.

Used by ``workflow/rules/finetune.smk`` (Snakemake's linter wants no functions beside rules).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import Any

from physfm.finetune.subsets import parse_spec, spec_name


def label_token(spec: str | int | float) -> str:
    """Path-safe wildcard value of a label spec: ``n300``, ``f0.01`` or ``all``."""
    kind, value = parse_spec(spec)
    if kind == "all":
        return "all"
    return f"n{int(value)}" if kind == "count" else f"f{value:g}"


def label_specs(labels: Sequence[str | int | float]) -> dict[str, str]:
    """``{wildcard token: spec}`` in config order; two specs naming the same subset are an error."""
    out: dict[str, str] = {}
    for spec in labels:
        token = label_token(spec)
        if token in out:
            raise ValueError(f"finetune.labels lists the same subset twice: {out[token]!r} and {spec!r}")
        out[token] = str(spec)
    return out


def search_args(search: dict[str, list[Any]] | list[dict[str, Any]] | None, searched: bool) -> str:
    """A fine-tuning job's ``--search`` argument: the whole in-budget grid where the search runs, else only
    its first candidate (a declared fixed recipe, the same for every mode); ``""`` without a grid."""
    if not search:
        return ""
    from physfm.finetune.search import candidates  # lazily: the workflow imports this module to build its DAG

    grid = search if searched else [candidates(search)[0]]
    return f"--search {shlex.quote(json.dumps(grid, sort_keys=True))}"


def grid_cells(
    backbones: Sequence[str],
    tokens: Sequence[str],
    modes: Sequence[str],
    seeds: Sequence[int],
    scratch_per_backbone: bool = False,
    reference_tokens: Sequence[str] = (),
) -> list[tuple[str, str, str, int]]:
    """``(backbone, labels token, mode, seed)`` of every fine-tuning job.

    Scratch models take only an architecture from a backbone: unless ``scratch_per_backbone``, they
    are trained once, with the first backbone's, and serve as every backbone's reference.
    ``reference_tokens`` are label counts trained in scratch mode only (they extend the reference
    curve of the label-efficiency factor).
    """
    cells = [
        (b, t, m, s)
        for b in backbones
        for t in tokens
        for m in modes
        for s in seeds
        if m != "scratch" or scratch_per_backbone or b == backbones[0]
    ]
    extra = [
        (b, t, "scratch", s)
        for b in backbones
        for t in reference_tokens
        for s in seeds
        if scratch_per_backbone or b == backbones[0]
    ]
    return cells + [c for c in extra if c not in cells]


def cell_run_name(
    backbone: str, spec: str, mode: str, seed: int | str, show_backbone: bool, downstream: str | None = None
) -> str:
    """Readable MLflow run name: ``finetune n=300 mode=frozen seed=1`` (backbone named when several; a
    downstream set's cells: ``finetune <set> ...``)."""
    prefix = "finetune " + (f"{downstream} " if downstream else "") + (f"{backbone} " if show_backbone else "")
    return f"{prefix}{spec_name(spec)} mode={mode} seed={seed}"


def backbone_tokenizers(pretrain: dict[str, Any], backbones: Sequence[str]) -> list[str]:
    """Tokenizer artefact names (``<method>-<K>``) behind the given backbones, each once."""
    names: list[str] = []
    for b in backbones:
        tok = (pretrain.get("backbones") or {}).get(b, {}).get("tokenizer")
        if tok and tok not in names:
            names.append(tok)
    return names


def seeds_for(token: str, seeds: Sequence[int], seeds_at: dict[str, int] | None) -> list[int]:
    """The seeds run at a label count: all of ``seeds``, or the first ``seeds_at[spec]`` of them
    (``finetune.seeds_at``, keyed by label spec, e.g. ``{"3000": 3, "all": 3}``)."""
    limits = {label_token(k): int(v) for k, v in (seeds_at or {}).items()}
    return list(seeds)[: limits[token]] if token in limits else list(seeds)


def thin_seeds(
    cells: Sequence[tuple[str, str, str, int]], seeds: Sequence[int], seeds_at: dict[str, int] | None
) -> list[tuple[str, str, str, int]]:
    """``cells`` less those whose seed is beyond the label count's ``seeds_at`` limit."""
    return [c for c in cells if c[3] in seeds_for(c[1], seeds, seeds_at)]


def ablation_cells(
    ablation: dict[str, Any], backbones: Sequence[str], tokens: Sequence[str], seeds: Sequence[int]
) -> list[tuple[str, str, str, int]]:
    """Cells of the ablations (``finetune.ablation``): its ``modes`` (``scratch_global``, ``linear``) with the
    first backbone, and its ``backbones`` (e.g. pretrained with ``global_weight: 0``) in ``backbone_modes``,
    each at ``tokens`` (its label counts) and ``seeds``."""
    cells = [(backbones[0], t, m, s) for m in ablation.get("modes") or [] for t in tokens for s in seeds]
    cells += [
        (b, t, m, s)
        for b in ablation.get("backbones") or []
        for m in ablation.get("backbone_modes") or []
        for t in tokens
        for s in seeds
    ]
    return cells


def scaling_cells(
    scaling: dict[str, Any], tokens: Sequence[str], seeds: Sequence[int]
) -> list[tuple[str, str, str, int]]:
    """Cells of the corpus-scaling curve (``finetune.scaling``): each of its ``backbones`` (the first fine-tuned
    backbone pretrained on a smaller corpus) in its ``modes``, at ``tokens`` (its label counts) and ``seeds``."""
    return [
        (b, t, m, s)
        for b in scaling.get("backbones") or []
        for m in scaling.get("modes") or ["finetune"]
        for t in tokens
        for s in seeds
    ]


def cell_settings(section: dict[str, Any], mode: str, pretrain: dict[str, Any]) -> dict[str, Any]:
    """One cell's ``--config``: the ``finetune`` section less its grid keys; ``scratch_global`` gets the
    auxiliary loss on ``global_aux_targets`` (weight ``global_aux_weight``, or ``pretrain.global_weight``
    when that is 0), every other mode none."""
    from physfm.finetune.train import settings_slice

    out = settings_slice(section)
    if "head" in out and not out["head"].get("inputs"):  # no side inputs: the cell's config as before they existed
        out["head"] = {k: v for k, v in out["head"].items() if k != "inputs"}
    if mode == "scratch_global":
        out["global_aux_weight"] = section.get("global_aux_weight") or pretrain.get("global_weight", 0.5)
    else:
        out["global_aux_weight"] = 0.0
    if mode != "finetune":  # the probe warm start is a recipe of fine-tuning a pretrained backbone only
        out.pop("probe_steps", None)
    for key, off in (("initial_candidate", False), ("probe_steps", 0), ("average_last", 0)):  # off: as before the key
        if out.get(key, off) == off:
            out.pop(key, None)
    return out


def pretraining_note(pretrain: dict[str, Any], backbones: Sequence[str], pool: dict[str, list[str]]) -> str:
    """How many pretraining runs the study has and how the report combines them (a line of its study table)."""
    from physfm.pretrain.train import backbone_slice

    seeds = {b: backbone_slice(pretrain, b).get("seed", 0) for b in backbones}
    runs = ", ".join(f"{b} (seed {s})" for b, s in seeds.items())
    if not pool:
        return (
            f"one pretraining run per backbone: {runs}; the intervals resample label subsets and initialisations, "
            "not pretraining (config/full.yaml repeats pretraining)"
        )
    pools = "; ".join(f"{name} = mean over {', '.join(m)}" for name, m in pool.items())
    return (
        f"pretraining runs: {runs}; pooled: {pools} (each label seed's value is the mean over the pretraining runs, "
        "the interval resamples label seeds; each run's own factor is listed too)"
    )


# ---------------------------------------------------------------------- downstream sets
#: Keys of a ``downstream`` entry that default to the ``finetune`` section's (``null`` in the config).
INHERITED = ("backbones", "labels", "reference_labels", "modes", "seeds", "seeds_at", "baselines", "budget", "task")
#: The name ``evaluate_on`` gives the study's own corpus (``results/<study>/data``).
CORPUS = "data"


def downstream_data(data: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A downstream set's ``data`` section: its own keys over the study's ``data`` section (``source``,
    ``format``, and each key of ``generate`` and ``convert``; its ``input`` is its own, never the corpus's;
    it converts in one job and has no summary)."""
    own = entry.get("data") or {}
    out = {
        "source": own.get("source", data["source"]),
        "format": own.get("format", data["format"]),
        "input": own.get("input"),
        "generate": {**data["generate"], **(own.get("generate") or {})},
        "convert": {**{k: v for k, v in data["convert"].items() if k != "groups"}, **(own.get("convert") or {})},
    }
    if out["convert"].get("groups", 1) != 1:
        raise ValueError("a downstream set converts in one job: leave out its convert.groups")
    out["convert"]["groups"] = 1
    if out["source"] == "files" and not out["input"]:
        raise ValueError("a downstream set with data.source 'files' needs its own data.input")
    return out


def downstream_backbones(items: Sequence[Any], pretrain: dict[str, Any]) -> dict[str, str | None]:
    """``{name: source}`` of a downstream entry's backbones: a name of ``pretrain.backbones`` (source None:
    this study's), or ``{name, source}`` with a backbone directory of another study or a ``models:/`` URI."""
    out: dict[str, str | None] = {}
    for item in items:
        name, source = (item, None) if isinstance(item, str) else (item["name"], item["source"])
        if source is None and name not in (pretrain.get("backbones") or {}):
            raise ValueError(
                f"downstream backbone {name!r} is not in pretrain.backbones {sorted(pretrain.get('backbones') or {})}: "
                "name one of them, or give {name, source} with a directory or models:/<name>/<version>"
            )
        if name in out:
            raise ValueError(f"downstream backbones list {name!r} twice")
        out[name] = source
    return out


def downstream_sets(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every ``downstream`` entry resolved: ``data`` (:func:`downstream_data`), ``backbones``
    (:func:`downstream_backbones`), the grid keys (:data:`INHERITED`, the ``finetune`` section's where null),
    ``pairs`` and ``metric`` (the ``evaluate`` section's where null), ``evaluate_on``, ``label_specs`` and
    ``cells``: ``(backbone, labels token, mode, seed)`` of its fine-tuning jobs (the grid of
    :func:`grid_cells`, thinned by its ``seeds_at``)."""
    ft, ev = config["finetune"], config["evaluate"]
    out: dict[str, dict[str, Any]] = {}
    for name, entry in (config.get("downstream") or {}).items():
        spec = {k: ft[k] if entry.get(k) is None else entry[k] for k in INHERITED}
        spec["budget"] = {**ft["budget"], **(entry.get("budget") or {})}
        spec["data"] = downstream_data(config["data"], entry)
        spec["backbones"] = downstream_backbones(spec["backbones"], config.get("pretrain") or {})
        spec["pairs"] = ev["pairs"] if entry.get("pairs") is None else entry["pairs"]
        spec["metric"] = entry.get("metric") or ev["metric"]
        spec["evaluate_on"] = list(entry.get("evaluate_on") or [])
        if bad := [o for o in spec["evaluate_on"] if o != CORPUS and o not in config["downstream"] or o == name]:
            raise ValueError(
                f"downstream {name}: evaluate_on {bad}: name '{CORPUS}' (the study's corpus) or another downstream set"
            )
        specs = label_specs([*spec["labels"], *spec["reference_labels"]])
        main = [label_token(s) for s in spec["labels"]]
        cells = grid_cells(
            list(spec["backbones"]),
            main,
            spec["modes"],
            spec["seeds"],
            ft["scratch_per_backbone"],
            reference_tokens=[t for t in specs if t not in main],
        )
        spec["label_specs"] = specs
        # where the in-budget search runs: finetune.search_labels that are among its counts (all when null)
        searched = ft.get("search_labels")
        spec["search_tokens"] = set(specs) if searched is None else {label_token(x) for x in searched} & set(specs)
        spec["cells"] = thin_seeds(cells, spec["seeds"], spec["seeds_at"])
        out[name] = spec
    return out


def baseline_cells(
    methods: Sequence[str],
    tokens: Sequence[str],
    seeds: Sequence[int],
    seeds_at: dict[str, int] | None,
    zero_label: Sequence[str],
) -> list[tuple[str, str, int]]:
    """``(method, labels token, seed)`` of the baselines of a labelled set: the zero-label ones once (``n0``,
    seed 1), the others at each label count (``tokens``) and its seeds (:func:`seeds_for`)."""
    cells = [(m, "n0", 1) for m in methods if m in zero_label]
    cells += [(m, t, s) for m in methods if m not in zero_label for t in tokens for s in seeds_for(t, seeds, seeds_at)]
    return cells
