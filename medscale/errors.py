"""Exit codes and the one place user errors become a clear message instead of a traceback."""
from __future__ import annotations

import contextlib
import sys

EXIT_BAD_INPUT = 2  # a recipe, data file or argument that cannot work; nothing was written
EXIT_CANCELLED = 4  # `medscale jobs cancel`: the run saved a checkpoint and stopped; do not requeue
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM/SIGUSR1 arrived, a checkpoint was saved; launchers requeue on it
STOP_EXIT_CODES = {"preempted": EXIT_PREEMPTED, "cancelled": EXIT_CANCELLED}


class UserError(Exception):
    """The user's input cannot work (a recipe, data file, path, argument or unreachable service); the message
    names the thing and the fix. The CLI prints it as one line and exits EXIT_BAD_INPUT."""


class AttemptStopped(Exception):
    """Training stopped early on request (preemption or cancel) after saving a verified checkpoint."""

    def __init__(self, status: str, step: int):
        super().__init__(f"{status} at step {step}: a verified checkpoint was saved; "
                         + ("requeue or `medscale jobs resume` to continue" if status == "preempted" else
                            "`medscale jobs resume` continues it"))
        self.status, self.exit_code = status, STOP_EXIT_CODES[status]


@contextlib.contextmanager
def user_errors():
    """Bad recipes and bad data exit 2 with one message, a stopped attempt exits with its code; real bugs keep
    their traceback."""
    try:
        yield
    except UserError as e:
        print(f"medscale: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except AttemptStopped as e:
        print(f"medscale: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
