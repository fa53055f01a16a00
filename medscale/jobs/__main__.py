"""One process of a job: `python -m medscale.jobs KIND REF [key=value ...]`, KIND one of train, eval, trial, judge
(the kinds of medscale.jobkind.JobKind that have a road in medscale.jobs.kinds). REF is what the kind reads its spec
from: a built-in recipe name or a recipe YAML (train, trial; eval: the recipe's trained model), or the job file of an
evaluation (eval) or a judgement (judge).

Every process re-reads and re-validates its spec from the same REF and overrides, then runs the kind's
`run(spec)`. The old entries stay as aliases of this one: `python -m medscale.train` (train), `python -m
medscale.eval` (eval), `python -m medscale.sweep` (trial), `python -m medscale.judge` (judge). The stop flag is
installed before anything slow is imported, so a SIGTERM during start-up still ends in exit 75 (requeue), never 143;
the kind's module (torch with it) is imported only when it runs.
"""
import sys

from medscale.jobs.stop import stop_flag

stop_flag().install()

import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402

from medscale.dist import DistContext  # noqa: E402


def _die_with_launcher() -> None:
    """A worker started by torchrun stops when torchrun is gone (killed with -9, by the OOM killer, with its
    parent `medscale train`): orphaned, it would train on unseen and hold the GPUs. The attempt shows `lost`: a rank
    whose peer died first fails in its next collective, and the stop flag tells its attempt not to record that."""
    flag = stop_flag()
    flag.launcher_pid = os.getppid()

    def watch():
        import time

        while True:
            time.sleep(1.0)
            if flag.orphaned():
                os._exit(137)

    threading.Thread(target=watch, name="medscale-orphan-watch", daemon=True).start()


def _exit_on_stop_before_joining() -> None:
    """Until this worker has joined the process group, a stop signal ends it at once (exit 75, or 4 for Ctrl-C):
    nothing has started, and waiting is not safe. The same signal can kill a rank whose interpreter was still
    starting (a loaded machine, site-packages on NFS), before any handler existed; the others would then wait in
    torch.distributed's rendezvous for it until torchrun's shutdown grace ran out. A Python handler cannot run while
    the main thread is blocked in that rendezvous, so a thread watches the signal wake-up fd, which the interpreter
    writes from C at once. After joining, the stop flag's step-boundary protocol takes over."""
    from medscale.errors import EXIT_CANCELLED, EXIT_PREEMPTED

    codes = {signal.SIGTERM: EXIT_PREEMPTED, signal.SIGUSR1: EXIT_PREEMPTED, signal.SIGINT: EXIT_CANCELLED}
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def joined() -> bool:
        dist = sys.modules.get("torch.distributed")
        return dist is not None and dist.is_available() and dist.is_initialized()

    def watch():
        while not joined():
            for signum in os.read(read_end, 64):
                if signum in codes and not joined():
                    ctx, name = DistContext.from_env(), signal.Signals(signum).name
                    print(f"medscale: rank {ctx.rank if ctx.launched else '?'}: {name} before the process group was "
                          f"up: nothing started, exiting {codes[signum]}", file=sys.stderr, flush=True)
                    os._exit(codes[signum])

    threading.Thread(target=watch, name="medscale-early-stop", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    """`KIND REF [key=value ...]`: read the kind's spec, then run the kind's entry on it."""
    argv = sys.argv[1:] if argv is None else argv
    asked = bool({"-h", "--help"} & set(argv[:2]))
    if asked or len(argv) < 2:
        print(__doc__)
        raise SystemExit(0 if asked else 2)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        _die_with_launcher()
        _exit_on_stop_before_joining()
    from medscale import setup_logging
    from medscale.errors import user_errors

    setup_logging()
    with user_errors():
        from medscale.jobs.launch import entry_for

        entry = entry_for(argv[0])
        entry.load()(entry.load_spec(argv[1], argv[2:]))


if __name__ == "__main__":
    main()
