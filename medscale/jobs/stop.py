"""The process-wide stop flag: SIGTERM / SIGUSR1 (preemption, SLURM's time-limit warning), Ctrl-C, or a cancel seen
by the heartbeat set it; training reads it at every optimizer-step boundary, where all ranks agree on it, save a
verified checkpoint and stop (exit EXIT_PREEMPTED or EXIT_CANCELLED).

Entry points install it first thing, before the slow imports, so a stop signal at any moment of start-up still
ends in exit 75 or 4 (a SLURM requeue needs 75), never in a signal's default death (143, 138).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from medscale.errors import AttemptStopped

log = logging.getLogger("medscale.stop")

NONE, PREEMPTED, CANCELLED = 0, 1, 2  # the larger wins when ranks disagree: a cancel is final
STATUS = {PREEMPTED: "preempted", CANCELLED: "cancelled"}


class StopFlag:
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.code = NONE
        self.reason = ""
        self._interrupts = 0
        self._installed = False
        self.launcher_pid: int | None = None  # a torchrun worker's parent, set by its orphan watchdog

    def orphaned(self) -> bool:
        """The launcher that started this worker is gone (kill -9, the OOM killer): every rank dies with it."""
        return self.launcher_pid is not None and os.getppid() != self.launcher_pid

    def install(self) -> None:
        """Handle SIGTERM, SIGUSR1 and SIGINT in this process (main thread only; idempotent). A second Ctrl-C
        stops at once (KeyboardInterrupt) instead of waiting for the checkpoint."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return  # e.g. inside a Ray worker thread: the host process owns its signals
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGINT, self._on_interrupt)
        self._installed = True

    def _on_signal(self, signum, _frame) -> None:
        if self.code < PREEMPTED:
            self.code, self.reason = PREEMPTED, f"{signal.Signals(signum).name} (preemption or time limit)"

    def _on_interrupt(self, _signum, _frame) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            raise KeyboardInterrupt
        self.code, self.reason = CANCELLED, "interrupted (Ctrl-C)"
        print("\nmedscale: interrupted: saving a checkpoint at the next step, then stopping (Ctrl-C again to stop "
              "at once, without saving)", file=sys.stderr, flush=True)

    def cancel(self, reason: str = "cancelled (`medscale jobs cancel`)") -> None:
        self.code, self.reason = CANCELLED, reason

    def raise_if_set(self, step: int, resume_from=None) -> None:
        """Stop before any work that a checkpoint would have to save (start-up, before the first step); the next run
        starts where this one would have (`resume_from`, the checkpoint this attempt started from, or step 0)."""
        if self.code:
            log.warning("%s before training started: stopping; nothing to save", self.reason)
            raise AttemptStopped(STATUS[self.code], step, resume_from=resume_from)


_FLAG = StopFlag()


def stop_flag() -> StopFlag:
    """The flag of this process (one per process: signals are per process)."""
    return _FLAG
