"""What a loop reports: summed statistics, throughput over a logging window, a progress bar.

Objectives return their statistics as ``{name: tensor([sum, count])}`` so that means stay exact when
summed over batches and ranks; :func:`accumulate` and :func:`means` work on that form.
:class:`Window` times the steps between two log lines; :func:`due` says when a periodic action runs.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from torch import Tensor

from physfm.runtime.distributed import Runtime


def due(step: int, every: int, total: int) -> bool:
    """A periodic action (log, validate, checkpoint) runs every ``every`` steps and at the last step."""
    return step % every == 0 or step == total


def accumulate(acc: dict[str, Tensor], stats: dict[str, Tensor]) -> None:
    """Add ``stats`` (``name -> [sum, count]``) into ``acc`` in place."""
    for k, v in stats.items():
        acc[k] = acc[k] + v.detach() if k in acc else v.detach().clone()


def means(sums: dict[str, Tensor], prefix: str = "") -> dict[str, float]:
    """``{prefix + name: sum / count}`` for every statistic with a count."""
    return {f"{prefix}{k}": float(v[0] / v[1]) for k, v in sums.items() if float(v[1]) > 0}


class Window:
    """Statistics and throughput since the last log line (all ranks' events: each rank counts its own)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.reset()

    def reset(self) -> None:
        self.stats: dict[str, Tensor] = {}
        self.steps, self.events, self.tokens = 0, 0, 0
        self.t0 = time.perf_counter()

    def add(self, stats: dict[str, Tensor], events: int, tokens: int = 0) -> None:
        """One step's statistics, its (per-rank) number of events and real tokens."""
        accumulate(self.stats, stats)
        self.steps, self.events, self.tokens = self.steps + 1, self.events + events, self.tokens + tokens

    def report(self, prefix: str = "train/") -> dict[str, float]:
        """Means of the window's statistics plus ``events_per_second``, ``tokens_per_second`` (global),
        ``seconds_per_step`` and, on CUDA, ``gpu_memory_gib``; then starts a new window."""
        self.runtime.synchronize()
        dt = max(time.perf_counter() - self.t0, 1e-9)
        world = self.runtime.info.world_size
        out = means(self.stats, prefix)
        out.update(
            {
                "events_per_second": self.events * world / dt,
                "tokens_per_second": self.tokens * world / dt,
                "seconds_per_step": dt / max(self.steps, 1),
            }
        )
        if self.runtime.cuda:
            import torch

            out["gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.runtime.device) / 2**30
        self.reset()
        return out


def progress_bar(total: int, initial: int = 0, desc: str = "", show: bool = True) -> Any:
    """A tqdm bar (redrawn at most every second on a terminal, every 30 s in a log file)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=not show,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        dynamic_ncols=True,
    )
