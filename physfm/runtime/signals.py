"""Stopping cleanly: SIGTERM / SIGUSR1 (SLURM preemption, ``--signal``) become "checkpoint, then stop".

A loop runs inside ``with StopSignals("physfm pretrain") as stop:`` and, after each step, asks
``stop.requested(runtime, sync=...)``; when true it writes its checkpoint and raises
:class:`Preempted`, which the CLI turns into exit status :data:`PREEMPTED_EXIT_CODE`. Under DDP the
ranks agree (a max over ranks) only on the steps where ``sync`` is true, so a signal costs no extra
collective on the other steps.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

from physfm.runtime.distributed import Runtime

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


class StopSignals:
    """Records SIGTERM / SIGUSR1 instead of dying, so the loop can checkpoint first.

    Handlers are installed only in the main thread (elsewhere the signal keeps its default action);
    ``who`` prefixes the message printed when a signal arrives.
    """

    SIGNALS = tuple(s for s in ("SIGTERM", "SIGUSR1") if hasattr(signal, s))

    def __init__(self, who: str = "physfm") -> None:
        self.who = who
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        print(f"{self.who}: {self.received} received; will checkpoint and stop after this step", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def requested(self, runtime: Runtime, sync: bool = True) -> bool:
        """Whether to stop now. Under DDP: the ranks' agreement when ``sync`` (call it on every rank
        then), never otherwise; in one process, whether this process got a signal."""
        if not runtime.info.enabled:
            return self.received is not None
        return runtime.any(self.received is not None) if sync else False

    @property
    def reason(self) -> str:
        """The signal received here, or a note that another rank got one."""
        return self.received or "a stop signal on another rank"
