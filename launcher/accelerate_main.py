"""`python -m launcher.accelerate_main ARGS`: `accelerate launch ARGS`, where a failed worker ends in one line.

When a worker fails, torchrun raises ChildFailedError and the interpreter prints it as a 40-line traceback of torch's
elastic agent, under the line in which the worker already said why. Here that becomes one line naming the rank and
its exit code, and the process exits with the worker's code (2 for a user error, 75 / 4 for a stop, said by the
workers themselves). Written here because accelerate offers no switch for it.
"""
from __future__ import annotations

import signal
import sys

from medscale.errors import EXIT_CANCELLED, EXIT_PREEMPTED


def main() -> int:
    from accelerate.commands.launch import main as accelerate_launch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        accelerate_launch()
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        if code < 0:  # killed by a signal
            print(f"medscale: worker rank {rank} was killed by {signal.Signals(-code).name}; the others were "
                  f"stopped", file=sys.stderr, flush=True)
            return 128 - code
        if code not in (EXIT_PREEMPTED, EXIT_CANCELLED):
            print(f"medscale: worker rank {rank} exited with code {code} (its error is above); the others were "
                  f"stopped", file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
