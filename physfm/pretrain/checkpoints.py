"""Training checkpoints and saved backbones, both loadable without unpickling arbitrary objects.

* A **checkpoint** (``<dir>/last.pt`` + ``last.json``) holds everything needed to continue a run
  exactly: model, objective heads, optimizer, LR scheduler, RNG states, step and data position.
  It is written atomically (temporary file, fsync, rename) and read with
  ``torch.load(weights_only=True)``, which refuses pickled code.
* A **backbone** directory is the product of pretraining: ``backbone.safetensors`` (weights),
  ``backbone.json`` (config, features, normalisation, provenance), ``objective.safetensors`` (the
  pretraining heads, for generation), ``metrics.json`` and ``manifest.json`` (data and tokenizer
  versions, every file's sha256). :func:`load_backbone` reads only safetensors and JSON, and
  refuses a directory without ``manifest.json``.

Both appear atomically even under SIGKILL: pretraining builds the backbone directory under a
temporary name with :func:`physfm.io.atomic_dir` and renames it into place when complete. Temporary
names carry the writer's host and pid (``.NAME.HOST-PID.XXXXXXXX.partial``), so the next run
removes the leftovers of a killed writer (:func:`physfm.io.remove_stale_partials`) and never those of a
live one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from physfm.data.shards import MANIFEST, DataError, check_artefact
from physfm.io import atomic_path, read_json, remove_stale_partials, sha256_file, sha256_json, write_json
from physfm.models.backbone import Backbone, BackboneConfig

CHECKPOINT = "last.pt"
CHECKPOINT_INFO = "last.json"
BACKBONE_WEIGHTS = "backbone.safetensors"
BACKBONE_META = "backbone.json"
HEAD_WEIGHTS = "objective.safetensors"
FORMAT_VERSION = 1

#: Exit status of a run stopped by SIGTERM/SIGUSR1 after writing its checkpoint (EX_TEMPFAIL:
#: "try again later"); rerunning the same command resumes from the checkpoint.
PREEMPTED_EXIT_CODE = 75


class Preempted(RuntimeError):
    """Training was asked to stop by a signal; a checkpoint was written first."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path) -> None:
        super().__init__(
            f"received {signal_name} at step {step}: checkpoint saved to {checkpoint}; "
            f"rerun the same command to resume (exit code {PREEMPTED_EXIT_CODE})"
        )
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(directory: str | Path, state: dict[str, Any], info: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts only) and a small JSON ``info``.

    ``last.pt`` is written under a temporary name, fsynced and renamed, then ``last.json``: a kill
    at any moment leaves the previous checkpoint or the new one (``last.json`` may then describe
    the previous one, so ``state`` should carry what identifies it, e.g. a configuration hash).
    """
    directory = Path(directory)
    path = directory / CHECKPOINT
    remove_stale_partials(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    write_json(directory / CHECKPOINT_INFO, {**info, "sha256": sha256_file(path)})
    return path


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Hard-link (or copy) the checkpoint files of directory ``src`` into ``dst``."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in (CHECKPOINT, CHECKPOINT_INFO):
        if (src / name).is_file():
            try:
                os.link(src / name, dst / name)
            except OSError:
                shutil.copy2(src / name, dst / name)


def checkpoint_info(directory: str | Path) -> dict[str, Any] | None:
    """The JSON beside the checkpoint in ``directory`` (step, config hash, MLflow run id), or None."""
    directory = Path(directory)
    if not (directory / CHECKPOINT).is_file() or not (directory / CHECKPOINT_INFO).is_file():
        return None
    return read_json(directory / CHECKPOINT_INFO)


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``): a file holding pickled objects is refused."""
    path = Path(directory) / CHECKPOINT
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a loadable physfm checkpoint (only tensors and plain data are accepted; "
            f"delete it or pass --fresh to start over): {exc}"
        ) from exc


# --------------------------------------------------------------------------- backbones
def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_backbone(
    model: Backbone,
    meta: dict[str, Any],
    out_dir: str | Path,
    *,
    heads: nn.Module | None = None,
    extra_files: list[str] | None = None,
) -> dict[str, Any]:
    """Write a backbone directory (see the module docstring); return its manifest.

    ``manifest.json`` is written last. The files go straight into ``out_dir``: to make the whole
    directory appear atomically, pass the directory of :func:`physfm.io.atomic_dir` (as pretraining
    does). ``meta`` must hold ``features``, ``norm``, ``max_len``, ``data_version``, ``tokenizer_version``
    and ``objective``; ``config`` is added from the model. ``extra_files`` (already written in
    ``out_dir``) are hashed into the manifest too.
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
    files = [BACKBONE_WEIGHTS]
    if heads is not None:
        with atomic_path(out / HEAD_WEIGHTS) as tmp:
            save_file(_state(heads), str(tmp), metadata={"format": "physfm-objective"})
        files.append(HEAD_WEIGHTS)
    write_json(out / BACKBONE_META, meta)
    files += [BACKBONE_META, *(extra_files or [])]
    hashes = {f: sha256_file(out / f) for f in files}
    manifest = {
        "kind": "physfm-backbone",
        "data_version": meta["data_version"],
        "tokenizer_version": meta["tokenizer_version"],
        "objective": meta["objective"],
        "files": hashes,
        "backbone_version": sha256_json(hashes)[:16],
    }
    write_json(out / "manifest.json", manifest)
    return manifest


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
    max_len, data_version, tokenizer_version, objective, config, ...). Every file listed in
    ``manifest.json`` is re-hashed first; a mismatch, or a directory without ``manifest.json`` (an
    interrupted run, or a backbone written by a physfm older than manifests), raises
    :class:`~physfm.data.shards.DataError`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such backbone directory; create it with `physfm pretrain`")
    if not (directory / MANIFEST).is_file():
        raise DataError(
            f"{directory} is not a complete backbone: {MANIFEST} is missing (it is written last, so the "
            f"directory is from an interrupted run or an older physfm); rerun `physfm pretrain` with "
            f"--out {directory} to re-create it (it resumes from its checkpoint when there is one)"
        )
    check_artefact(directory, "`physfm pretrain`")
    meta_path = directory / BACKBONE_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: is {directory} a backbone written by `physfm pretrain`?")
    meta = json.loads(meta_path.read_text())
    model = Backbone(BackboneConfig.from_dict(meta["config"]))
    model.load_state_dict(_safe_load_weights(directory / BACKBONE_WEIGHTS))
    return model.to(map_location).eval(), meta


def load_heads(directory: str | Path) -> dict[str, torch.Tensor]:
    """The pretraining objective's head weights (safetensors) of a backbone directory."""
    return _safe_load_weights(Path(directory) / HEAD_WEIGHTS)
