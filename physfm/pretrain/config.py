"""The settings of a pretraining run: :class:`PretrainConfig` (the ``pretrain:`` config section minus
workflow keys), how a study's section resolves to one backbone's run (:func:`resolve_config`,
:func:`backbone_slice`) and the backbone it builds (:func:`build_backbone_config`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from physfm.features import JET_DEFAULT
from physfm.models.backbone import BackboneConfig
from physfm.models.objectives import OBJECTIVES

#: Backbone sizes used when the config does not give them (a CPU-sized model).
DEFAULT_MODEL: dict[str, Any] = {
    "d_model": 128,
    "n_layers": 4,
    "n_heads": 8,
    "mlp_ratio": 4.0,
    "dropout": 0.0,
    "n_cls": 1,
    "pos_embedding": "auto",
    "bias": True,
    "local": "none",  # PET's kNN edge block (physfm.models.pet): "none" or "knn"
    "local_k": 10,
    "local_coords": [1, 2],
}

#: Keys of the Snakemake ``pretrain:`` section that are workflow plumbing, not training settings.
WORKFLOW_KEYS = ("backbones", "resources", "sample")


def default_objective_options() -> dict[str, dict[str, Any]]:
    """Every registered objective's options at their defaults."""
    return {name: cls.Options().to_dict() for name, cls in OBJECTIVES.items()}


@dataclass
class PretrainConfig:
    """Every setting of a pretraining run (the ``pretrain:`` config section minus workflow keys)."""

    objective: str = "mpm"
    features: list[str] = field(default_factory=lambda: list(JET_DEFAULT))
    max_len: int = 64
    model: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MODEL))
    objectives: dict[str, dict[str, Any]] = field(default_factory=default_objective_options)
    global_targets: list[str] = field(default_factory=lambda: ["log_mass", "log_multiplicity"])
    global_weight: float = 0.5
    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    grad_clip: float = 1.0
    val_every: int = 100
    val_batches: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    norm_events: int = 20000
    corpus_events: int = 0  # pretrain on the train split's first N events (stored order); 0: all of them
    num_workers: int = 0
    seed: int = 0
    compile: bool = False
    feature_dropout: float = 0.0  # per-jet probability of zeroing the charge/PID/IP inputs (training only)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        if unknown := set(d) - known:
            raise ValueError(f"unknown pretrain settings {sorted(unknown)}; known: {sorted(known)}")
        cfg = cls(**d)
        cfg.model = {**DEFAULT_MODEL, **cfg.model}
        defaults = default_objective_options()
        cfg.objectives = {k: {**defaults.get(k, {}), **v} for k, v in {**defaults, **cfg.objectives}.items()}
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective '{self.objective}'; choose from {sorted(OBJECTIVES)}")
        if not 0.0 <= self.feature_dropout <= 1.0:
            raise ValueError(f"pretrain feature_dropout must be a probability in [0, 1], got {self.feature_dropout}")
        if self.corpus_events < 0:
            raise ValueError(
                f"pretrain corpus_events must be >= 0 (0: the whole train split), got {self.corpus_events}"
            )
        for name, value in (("steps", self.steps), ("batch_size", self.batch_size), ("max_len", self.max_len)):
            if value < 1:
                raise ValueError(f"pretrain {name} must be >= 1, got {value}")
        if unknown := set(self.model) - set(DEFAULT_MODEL):
            raise ValueError(f"unknown pretrain model settings {sorted(unknown)}; known: {sorted(DEFAULT_MODEL)}")
        from physfm.features import GLOBAL_TARGETS

        if unknown := set(self.global_targets) - set(GLOBAL_TARGETS):
            raise ValueError(f"unknown global_targets {sorted(unknown)}; choose from {sorted(GLOBAL_TARGETS)}")


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ValueError(f"cannot set '{key}': '{p}' is not a mapping")
    d[parts[-1]] = value


def resolve_config(
    section: dict[str, Any], backbone: str | None = None, overrides: list[str] | None = None
) -> PretrainConfig:
    """The settings of one run from a ``pretrain:`` section (or a whole study config holding one).

    ``backbone`` picks an entry of ``backbones`` (its ``objective`` and ``set`` overrides apply) when the
    section has them; a section that is already one backbone's slice (:func:`backbone_slice`) is used as is;
    ``overrides`` are ``dotted.key=value`` strings applied last (values parsed as YAML).
    """
    import copy

    section = copy.deepcopy(section.get("pretrain", section) if "pretrain" in section else section)
    backbones = section.get("backbones") or {}
    for k in WORKFLOW_KEYS:
        section.pop(k, None)
    if backbone is not None and backbones:  # a study's section; a backbone slice (no `backbones`) is used as is
        if backbone not in backbones:
            raise ValueError(f"no backbone '{backbone}' in the config; configured: {sorted(backbones) or 'none'}")
        entry = backbones[backbone]
        if "objective" in entry:
            section["objective"] = entry["objective"]
        for key, value in (entry.get("set") or {}).items():
            _set_dotted(section, key, value)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE (e.g. model.d_model=256), got '{item}'")
        key, value = item.split("=", 1)
        _set_dotted(section, key.strip(), _parse_value(value))
    return PretrainConfig.from_dict(section)


def backbone_slice(section: dict[str, Any], backbone: str) -> dict[str, Any]:
    """The settings one backbone's pretraining job uses, from the workflow's ``pretrain:`` section.

    Its entry's ``objective`` and ``set`` overrides applied, only its own objective's options kept
    (a neighbour's mask fraction is not its setting), workflow keys dropped. The Snakemake rule passes
    this as the job's ``--config``, so editing one backbone's options reruns that backbone only.
    """
    import copy

    backbones = section.get("backbones") or {}
    if backbone not in backbones:
        raise ValueError(f"no backbone '{backbone}' in the config; configured: {sorted(backbones) or 'none'}")
    entry = backbones[backbone]
    out = {k: copy.deepcopy(v) for k, v in section.items() if k not in WORKFLOW_KEYS}
    out["objective"] = entry.get("objective", out.get("objective", "mpm"))
    for key, value in (entry.get("set") or {}).items():
        _set_dotted(out, key, copy.deepcopy(value))
    objectives = out.get("objectives") or {}
    out["objectives"] = {out["objective"]: objectives[out["objective"]]} if out["objective"] in objectives else {}
    if not out.get("corpus_events"):  # the whole split: the job's config as before the key existed (no rerun)
        out.pop("corpus_events", None)
    return out


def build_backbone_config(cfg: PretrainConfig, n_features: int, codebook_size: int) -> BackboneConfig:
    """BackboneConfig for a run: the configured sizes, then what the objective requires."""
    obj = OBJECTIVES[cfg.objective]
    m = {**DEFAULT_MODEL, **cfg.model, "max_len": cfg.max_len, "n_features": n_features}
    m = obj.configure_backbone(m, cfg.objectives.get(cfg.objective, {}), codebook_size)
    if m["pos_embedding"] == "auto":
        m["pos_embedding"] = "masked" if m.get("mask_token") else ("all" if m.get("causal") else "none")
    return BackboneConfig.from_dict(m)
