"""Starting and stopping the launcher processes (accelerate / torchrun) that local and SLURM runs start.

- A launcher process dies with its parent: `medscale train` (or the SLURM node wrapper) killed with kill -9, by
  the OOM killer or a hang-up must not leave accelerate and every worker training on unseen (Linux
  PR_SET_PDEATHSIG). The workers, in turn, stop when accelerate is gone (the orphan watchdog in
  `medscale.jobs.__main__`), and the attempt shows `lost`.
- Stop signals are forwarded exactly once, as SIGTERM (torchrun forwards that to every worker and waits for them
  to save); SIGINT is forwarded as SIGINT (the workers save on the first Ctrl-C, stop on the second).
- The exit code reports what happened to the attempt, not torchrun's generic 1: a preempted attempt exits
  EXIT_PREEMPTED (SLURM requeues on it), a cancelled one EXIT_CANCELLED; and a launcher that was asked to stop
  and stopped before any attempt was recorded (a signal during start-up) still exits EXIT_PREEMPTED.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from medscale.errors import EXIT_CANCELLED, EXIT_PREEMPTED, STOP_EXIT_CODES
from medscale.jobs.launch import popen_tied
from medscale.jobs.record import read_journal

Runner = Callable[[list[str], dict], "Outcome"]


class Outcome:
    """A launcher process's exit code and the stop signal we forwarded to it, if any."""

    def __init__(self, code: int, forwarded: int | None = None):
        self.code, self.forwarded = code, forwarded


def run_forwarding_signals(cmd: list[str], env: dict) -> Outcome:
    """Run the accelerate launcher and forward the first SIGTERM/SIGUSR1 to it as one SIGTERM, SIGINT as SIGINT.
    (SIGUSR1 to torchrun itself would kill it: it handles only SIGTERM, SIGINT, SIGHUP and SIGQUIT.)"""
    proc = popen_tied(cmd, env)
    sent: list[int] = []

    def forward(signum, _frame):
        sig = signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM
        if sig == signal.SIGTERM and signal.SIGTERM in sent:
            return
        sent.append(sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        return Outcome(proc.wait(), sent[0] if sent else None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def attempt_statuses(output_dir: str) -> list[str]:
    journal = read_journal(output_dir)
    return [a.status for a in journal.attempts] if journal else []


def exit_code(output_dir: str, before: int, outcome: Outcome) -> int:
    """The code a launcher returns for the run it just waited for (see the module docstring)."""
    ours = attempt_statuses(output_dir)[before:]
    if outcome.code != 0 and ours and ours[-1] in STOP_EXIT_CODES:
        return STOP_EXIT_CODES[ours[-1]]
    if outcome.code != 0 and outcome.forwarded is not None and not ours:
        return EXIT_CANCELLED if outcome.forwarded == signal.SIGINT else EXIT_PREEMPTED
    return outcome.code


def run_reporting_stops(output_dir: str, cmd: list[str], env: dict, runner: Runner) -> int:
    """Run a launcher command with `runner` and return the attempt's exit code (module docstring)."""
    before = len(attempt_statuses(output_dir))
    outcome = runner(cmd, env)
    return exit_code(output_dir, before, outcome if isinstance(outcome, Outcome) else Outcome(outcome))

