"""Training checkpoints and saved backbones, both loadable without unpickling arbitrary objects.

* A **checkpoint** (``<dir>/last.pt`` + ``last.json``) holds everything needed to continue a run
  exactly: model, objective heads, optimizer, LR scheduler, RNG states, step and data position.
  Its home is :mod:`physfm.runtime.checkpoint` (shared by every loop); the names are re-exported here.
* A **backbone** directory is the product of pretraining: ``backbone.safetensors`` (weights),
  ``backbone.json`` (config, features, normalisation, provenance), ``objective.safetensors`` (the
  pretraining heads, for generation), ``history.json``, ``metrics.json``, ``loss.png``, a copy of the
  tokenizer when there is one (``tokenizer/``), and ``manifest.json`` (:mod:`physfm.artifacts`: kind
  ``backbone``, ``backbone_version``, input data and tokenizer versions, every file's sha256).
  :func:`load_backbone` reads only safetensors and JSON, and refuses a directory that does not verify.

Both appear atomically even under SIGKILL: pretraining builds the backbone directory under a
temporary name with :func:`physfm.io.atomic_dir` and renames it into place when complete. Temporary
names carry the writer's host and pid (``.NAME.HOST-PID.XXXXXXXX.partial``), so the next run
removes the leftovers of a killed writer (:func:`physfm.io.remove_stale_partials`) and never those of a
live one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from physfm.artifacts import Artifact, input_versions, open_artifact, write_artifact
from physfm.io import atomic_path, write_json
from physfm.models.backbone import Backbone, BackboneConfig
from physfm.runtime.checkpoint import (  # noqa: F401  (re-exported: their home is the shared runtime)
    CHECKPOINT,
    CHECKPOINT_INFO,
    checkpoint_info,
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from physfm.runtime.signals import PREEMPTED_EXIT_CODE, Preempted  # noqa: F401

BACKBONE_WEIGHTS = "backbone.safetensors"
BACKBONE_META = "backbone.json"
HEAD_WEIGHTS = "objective.safetensors"
METRICS = "metrics.json"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- backbones
def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_backbone(
    model: Backbone,
    meta: dict[str, Any],
    out_dir: str | Path,
    *,
    heads: nn.Module | None = None,
    excluded: tuple[str, ...] = (),
) -> Artifact:
    """Write a backbone directory (see the module docstring); return its artefact.

    ``manifest.json`` (:func:`physfm.artifacts.write_artifact`, kind ``backbone``) is written last and
    lists every file in ``out_dir`` (a copied tokenizer directory as a nested artefact), so write
    what belongs with the backbone (history, metrics, plots) first; ``metrics.json`` is a record
    (timings), not part of the ``backbone_version``. ``excluded``: subdirectories that are not part of
    the backbone (its ``checkpoints``). To make the whole directory appear atomically, pass the
    directory of :func:`physfm.io.atomic_dir` (as pretraining does). ``meta`` must hold ``features``,
    ``norm``, ``max_len``, ``data_version``, ``tokenizer_version`` and ``objective``; ``config`` is
    added from the model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    missing = [
        k for k in ("features", "norm", "max_len", "data_version", "tokenizer_version", "objective") if k not in meta
    ]
    if missing:
        raise ValueError(f"backbone meta lacks {missing}")
    meta = {**meta, "config": model.config.to_dict(), "format_version": FORMAT_VERSION}
    with atomic_path(out / BACKBONE_WEIGHTS) as tmp:
        save_file(_state(model), str(tmp), metadata={"format": "physfm-backbone"})
    if heads is not None:
        with atomic_path(out / HEAD_WEIGHTS) as tmp:
            save_file(_state(heads), str(tmp), metadata={"format": "physfm-objective"})
    write_json(out / BACKBONE_META, meta)
    records = [name for name in (METRICS,) if (out / name).is_file()]
    info = {"objective": meta["objective"]}
    return write_artifact(out, "backbone", None, input_versions(meta), info=info, records=records, excluded=excluded)


def _safe_load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {path.parent} a backbone written by `physfm pretrain`?")
    try:
        return load_file(str(path))
    except Exception as exc:  # not a safetensors file (e.g. a pickle): refuse, never unpickle
        raise ValueError(f"{path} is not a safetensors file; refusing to load it (pickles are never loaded)") from exc


def load_backbone(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[Backbone, dict[str, Any]]:
    """``(model, meta)`` from a backbone directory; reads only safetensors + JSON, never pickles.

    The model is in eval mode on ``map_location``; ``meta`` is ``backbone.json`` (features, norm,
    max_len, data_version, tokenizer_version, objective, config, ...) plus the manifest's
    ``backbone_version``. The directory is opened with :func:`physfm.artifacts.open_artifact` first:
    a changed, missing or unlisted file, or a directory without ``manifest.json`` (an interrupted run,
    or a backbone written by an older physfm), raises :class:`~physfm.artifacts.ArtifactError`.
    """
    artifact = open_artifact(directory, "backbone")
    directory = artifact.path
    meta_path = directory / BACKBONE_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: is {directory} a backbone written by `physfm pretrain`?")
    meta = {**json.loads(meta_path.read_text()), "backbone_version": artifact.version}
    model = Backbone(BackboneConfig.from_dict(meta["config"]))
    model.load_state_dict(_safe_load_weights(directory / BACKBONE_WEIGHTS))
    return model.to(map_location).eval(), meta


def load_heads(directory: str | Path) -> dict[str, torch.Tensor]:
    """The pretraining objective's head weights (safetensors) of a backbone directory."""
    return _safe_load_weights(Path(directory) / HEAD_WEIGHTS)
