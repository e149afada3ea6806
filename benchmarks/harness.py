"""What the benchmarks share: how a step is timed and its FLOPs counted, and the machine arguments.

Run a benchmark from the repository root (``python benchmarks/X.py``): Python puts ``benchmarks/`` on
the path, so ``from harness import ...`` finds this module.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def add_machine_args(ap: argparse.ArgumentParser, device: str = "cpu") -> None:
    """``--device``, ``--threads`` and ``--json``; read them with :func:`parse_args`."""
    ap.add_argument("--device", default=device, help=f"torch device: cpu, cuda, auto, ... (default {device})")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")


def parse_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments, with torch's CPU threads set from ``--threads``."""
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    """Write the numbers to ``--json`` (nothing without it)."""
    if path:
        path.write_text(json.dumps(result, indent=2, default=str))


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA), so that a clock reading after it counts that work."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[..., Any], *args: Any) -> float:
    """Wall seconds of one call ``fn(*args)``."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def round_robin(steps: dict[str, Callable[[int], Any]], rounds: Iterable[int], device: Any) -> dict[str, list[float]]:
    """Wall seconds of every round's step of every variant, taken round-robin (one step of each variant
    per round, each called with the round's number), so that all variants see the same load on shared
    cores; the device is synchronised around each step."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in rounds:
        for name, step in steps.items():
            sync(device)
            t0 = time.perf_counter()
            step(r)
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def counted_flops(loss_fn: Callable[[], Any], n: int, module: Any = None) -> float:
    """FLOPs per item (``n`` items) of one forward (``loss_fn()``, a scalar loss) and its backward, counted
    by torch's FlopCounterMode (matrix products and attention); ``module``'s gradients are cleared after."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss_fn().backward()
    if module is not None:
        module.zero_grad(set_to_none=True)
    return counter.get_total_flops() / n
