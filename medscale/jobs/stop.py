"""The process-wide stop flag: SIGTERM / SIGUSR1 (preemption, SLURM's time-limit warning), Ctrl-C, or a cancel seen
by the heartbeat set it; training reads it at every optimizer-step boundary, where all ranks agree on it, save a
verified checkpoint and stop (exit EXIT_PREEMPTED or EXIT_CANCELLED).

Entry points install it first thing, before the slow imports, so a stop signal at any moment of start-up still
ends in exit 75 or 4 (a SLURM requeue needs 75), never in a signal's default death (143, 138). Only training reads the
flag; everywhere else (evaluation, export, every other command) the flag is installed `at_once`, and a stop signal
raises StopRequested in the main thread: the command ends promptly with the same exit codes.

Installing it also keeps the process's stdout and stderr from failing it when their reader goes away (`| head`, or
`| tee` killed by the same Ctrl-C): losing the reader must never turn a run, or its stop, into a failure.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

from medscale.errors import AttemptStopped, StopRequested
from medscale.status import AttemptStatus

log = logging.getLogger("medscale.stop")

# A stop is an attempt status. Ranks agree on one through an all-reduce of ints (the largest wins: a cancel is
# final), so a stop's code is its place in STOPS, counted from 1; NONE (0) is no stop asked.
STOPS = (AttemptStatus.PREEMPTED, AttemptStatus.CANCELLED)
NONE = 0


def stop_code(status: AttemptStatus) -> int:
    return STOPS.index(status) + 1


def stop_status(code: int) -> AttemptStatus:
    return STOPS[code - 1]


class StopFlag:
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.code = NONE
        self.reason = ""
        self.at_once = False
        self._interrupts = 0
        self._installed = False
        self._raised = False
        self.launcher_pid: int | None = None  # a torchrun worker's parent, set by its orphan watchdog

    @property
    def status(self) -> AttemptStatus | None:
        """The stop asked of this process (preempted or cancelled), None when none was."""
        return stop_status(self.code) if self.code else None

    def orphaned(self) -> bool:
        """The launcher that started this worker is gone (kill -9, the OOM killer): every rank dies with it."""
        return self.launcher_pid is not None and os.getppid() != self.launcher_pid

    def install(self, *, at_once: bool = False) -> None:
        """Handle SIGTERM, SIGUSR1 and SIGINT in this process (main thread only; handlers installed once). Training
        (the default) reads the flag at every step boundary and saves; with `at_once` (nothing here reads the flag)
        a stop signal raises StopRequested instead. Each call sets the mode: a command that goes on to train in
        this process switches to training's when training starts. A second Ctrl-C stops at once
        (KeyboardInterrupt) instead of waiting for the checkpoint."""
        if threading.current_thread() is not threading.main_thread():
            return  # e.g. inside a Ray worker thread: the host process owns its signals
        self.at_once = at_once
        if self._installed:
            return
        signal.signal(signal.SIGINT, self._on_interrupt)
        for sig in self.SIGNALS:  # last: SIGTERM caught (/proc/PID/status SigCgt) means all three are
            signal.signal(sig, self._on_signal)
        tolerate_lost_readers()
        self._installed = True

    def _on_signal(self, signum, _frame) -> None:
        if self.code < stop_code(AttemptStatus.PREEMPTED):
            self.code = stop_code(AttemptStatus.PREEMPTED)
            self.reason = f"{signal.Signals(signum).name} (preemption or time limit)"
        self._stop_now()

    def _on_interrupt(self, _signum, _frame) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            raise KeyboardInterrupt
        self.code, self.reason = stop_code(AttemptStatus.CANCELLED), "interrupted (Ctrl-C)"
        self._stop_now()
        print("\nmedscale: interrupted: saving a checkpoint at the next step, then stopping (Ctrl-C again to stop "
              "at once, without saving)", file=sys.stderr, flush=True)

    def _stop_now(self) -> None:
        """Outside training: end the command now, once (a second signal must not interrupt its clean-up)."""
        if self.at_once and not self._raised:
            self._raised = True
            raise StopRequested(self.status, self.reason)

    def cancel(self, reason: str = "cancelled (`medscale jobs cancel`)") -> None:
        self.code, self.reason = stop_code(AttemptStatus.CANCELLED), reason

    def raise_if_set(self, step: int, resume_from=None) -> None:
        """Stop before any work that a checkpoint would have to save (start-up, before the first step); the next run
        starts where this one would have (`resume_from`, the checkpoint this attempt started from, or step 0)."""
        if self.code:
            log.warning("%s before training started: stopping; nothing to save", self.reason)
            raise AttemptStopped(self.status, step, resume_from=resume_from)


class _ReaderSafe:
    """sys.stdout / sys.stderr whose reader may go away: a write or flush that meets a broken pipe (EPIPE) points the
    descriptor at /dev/null (for everything in this process that writes to it) instead of raising."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())
        os.close(null)
        with contextlib.suppress(OSError):
            self._stream.flush()  # what was buffered for the pipe goes to /dev/null

    def __getattr__(self, name):
        return getattr(self._stream, name)


def tolerate_lost_readers() -> None:
    """Wrap this process's own stdout and stderr (not a test's captured ones) in _ReaderSafe."""
    if sys.stdout is sys.__stdout__ and sys.stdout is not None:
        sys.stdout = _ReaderSafe(sys.stdout)
    if sys.stderr is sys.__stderr__ and sys.stderr is not None:
        sys.stderr = _ReaderSafe(sys.stderr)


_FLAG = StopFlag()


def stop_flag() -> StopFlag:
    """The flag of this process (one per process: signals are per process)."""
    return _FLAG
