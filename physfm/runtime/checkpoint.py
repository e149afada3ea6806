"""Checkpoints that let a loop continue exactly where it stopped, on one process or many.

A checkpoint is ``<dir>/last.pt`` + ``last.json``: every stateful part of the run (model, heads,
optimizer, LR schedule, ...), the step, every rank's RNG states and data position, and whatever the
loop adds (its validation history). It is written atomically (temporary file, fsync, rename) and
read with ``torch.load(weights_only=True)``, which refuses pickled code.

:class:`Checkpointer` is what a loop uses: ``restore(resume)`` once after set-up, ``save(...)``
whenever it wants a checkpoint. A checkpoint is tied to a ``config_hash`` (configuration + input
versions); one written by another configuration is ignored with a warning. Resuming with the world
size that wrote it is bit-exact (RNG and data positions restored per rank); with another world size
the weights and optimizer continue but the data restarts at the next epoch (a warning says so).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from physfm.io import atomic_path, read_json, remove_stale_partials, sha256_file, write_json
from physfm.runtime.distributed import Runtime

CHECKPOINT = "last.pt"
CHECKPOINT_INFO = "last.json"
RESUME_MODES = ("auto", "require", "never")


class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()`` (modules, optimizers, schedulers)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


# --------------------------------------------------------------------------- files
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


# --------------------------------------------------------------------------- the loop's side
@dataclass
class Restored:
    """What :meth:`Checkpointer.restore` found: the step, this rank's data position, the loop's extras."""

    step: int
    position: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    exact: bool = True  # False: written by another world size, data restarts at the next epoch


@dataclass
class Checkpointer:
    """Saves and restores ``parts`` (name -> stateful object) in ``directory`` for one configuration.

    ``who`` prefixes warnings. :meth:`save` is a collective under DDP (RNG states and data positions
    are gathered from every rank; rank 0 writes); call it on every rank.
    """

    directory: Path
    config_hash: str
    runtime: Runtime
    parts: dict[str, Stateful]
    who: str = "physfm"

    def _warn(self, text: str) -> None:
        if self.runtime.main:
            print(f"{self.who}: {text}", file=sys.stderr)

    def restore(self, resume: str = "auto") -> Restored | None:
        """Load the checkpoint of this configuration into ``parts``; None when starting over.

        ``resume``: ``auto`` (continue from a matching checkpoint when there is one), ``require``
        (error if there is none) or ``never`` (start over).
        """
        if resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {', '.join(RESUME_MODES)}, got '{resume}'")
        info = checkpoint_info(self.directory) if resume != "never" else None
        if info is not None and info.get("config_hash") != self.config_hash:
            self._warn(f"checkpoint in {self.directory} belongs to a different configuration/data; starting over")
            info = None
        state = load_checkpoint(self.directory, map_location=self.runtime.device) if info is not None else None
        if state is not None and state.get("config_hash", self.config_hash) != self.config_hash:
            # last.json is written after last.pt: a run of another configuration killed in between
            self._warn(f"{self.directory}/{CHECKPOINT} belongs to a different configuration/data; starting over")
            state = None
        if state is None:
            if resume == "require":
                raise ValueError(f"--resume: no checkpoint for this configuration in {self.directory}")
            return None
        for name, part in self.parts.items():
            part.load_state_dict(state[name])
        step, world = int(state["step"]), self.runtime.info.world_size
        reserved = {*self.parts, "step", "config_hash", "data_state", "rng"}
        extra = {k: v for k, v in state.items() if k not in reserved}
        if len(state["data_state"]) == world:
            position = tuple(int(v) for v in state["data_state"][self.runtime.info.rank])
            rng = state["rng"][self.runtime.info.rank]  # RNG states must be CPU byte tensors, whatever map_location
            torch.set_rng_state(rng["cpu"].cpu())
            if self.runtime.cuda and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"].cpu(), self.runtime.device)
            restored = Restored(step, position, extra, exact=True)
        else:
            epoch0 = min(int(s[0]) for s in state["data_state"]) + 1
            self._warn(
                f"warning: checkpoint was written by {len(state['data_state'])} process(es), resuming with "
                f"{world}: data continues from epoch {epoch0}, not bit-identical"
            )
            restored = Restored(step, (epoch0, 0), extra, exact=False)
        self._warn(f"resuming from step {step} ({self.directory})")
        return restored

    def save(self, step: int, position: tuple[int, ...], extra: dict[str, Any] | None = None, **info: Any) -> Path:
        """Write a checkpoint at ``step``; ``position``: this rank's data position (e.g. epoch, batch);
        ``extra``: plain data the loop wants back (rank 0's); ``info``: more keys for ``last.json``."""
        rng = {"cpu": torch.get_rng_state()}
        if self.runtime.cuda:
            rng["cuda"] = torch.cuda.get_rng_state(self.runtime.device)
        all_rng = self.runtime.gather(rng)
        all_positions = self.runtime.gather(list(position))
        path = self.directory / CHECKPOINT
        if self.runtime.main:
            state = {name: part.state_dict() for name, part in self.parts.items()}
            state.update(extra or {})
            state.update(step=step, config_hash=self.config_hash, data_state=all_positions, rng=all_rng)
            save_checkpoint(self.directory, state, {"step": step, "config_hash": self.config_hash, **info})
        self.runtime.barrier()
        return path
