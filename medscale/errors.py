"""Exit codes and the one place user errors become a clear message instead of a traceback."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
import warnings

from medscale import settings
from medscale.dist import DistContext
from medscale.status import AttemptStatus

EXIT_BAD_INPUT = 2  # a recipe, data file or argument that cannot work; nothing was written
EXIT_CANCELLED = 4  # `medscale jobs cancel`: the run saved a checkpoint and stopped; do not requeue
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM/SIGUSR1 arrived, a checkpoint was saved; launchers requeue on it
STOP_EXIT_CODES = {AttemptStatus.PREEMPTED: EXIT_PREEMPTED, AttemptStatus.CANCELLED: EXIT_CANCELLED}


class UserError(Exception):
    """The user's input cannot work (a recipe, data file, path, argument or unreachable service); the message
    names the thing and the fix. The CLI prints it as one line and exits EXIT_BAD_INPUT."""


class RunFailed(Exception):
    """A run that cannot go on for a reason the message explains (e.g. a diverged loss); the attempt is recorded
    failed and the CLI prints the message as one line (exit 1)."""


class AttemptStopped(Exception):
    """Work stopped early on request (preemption or cancel): after saving a verified checkpoint (`saved`), or before
    training started, when there was nothing to save. The message says where the next run starts: `resume_from`,
    the checkpoint just saved or the one this attempt started from (None: the beginning)."""

    def __init__(self, status: AttemptStatus, step: int, saved: bool = False,
                 resume_from: str | os.PathLike | None = None):
        status = AttemptStatus(status)
        what = (f"saved {resume_from}" if saved and resume_from else "a verified checkpoint was saved" if saved
                else "stopped before training started, nothing to save")
        how = "requeue, `medscale jobs resume` or the same command" if status is AttemptStatus.PREEMPTED else \
            "`medscale jobs resume` or the same command"
        where = ("resumes from it" if saved and resume_from else f"resumes from {resume_from}" if resume_from
                 else "starts from the beginning")
        super().__init__(f"{status} at step {step}: {what}; the next run ({how}) {where}")
        self.status, self.step, self.saved, self.exit_code = status, step, saved, STOP_EXIT_CODES[status]


class StopRequested(BaseException):
    """A stop signal (SIGTERM / SIGUSR1 / Ctrl-C) in a command that does not read the stop flag at safe points (eval,
    export, ...): raised at once in the main thread, as KeyboardInterrupt is, so no `except Exception` on the way
    swallows it. The command exits 75 (preempted: requeue) or 4 (cancelled); nothing it was doing is recorded done."""

    def __init__(self, status: AttemptStatus, reason: str):
        status = AttemptStatus(status)
        super().__init__(f"{reason}: stopped at once ({status}); what was in progress was not finished")
        self.status, self.exit_code = status, STOP_EXIT_CODES[status]


# OS errors a person causes and can fix (a path, a permission, a full disk): one line, not a traceback
_USER_OS_ERRORS = {errno.ENOENT: "no such file or folder", errno.EACCES: "permission denied",
                   errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
                   errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                   errno.EISDIR: "is a folder, not a file", errno.ENOTDIR: "a part of the path is a file, not a folder",
                   errno.ENAMETOOLONG: "file name too long"}


def debugging() -> bool:
    """`--debug` or MEDSCALE_DEBUG=1: show tracebacks instead of one-line errors."""
    return settings.DEBUG.get()


def os_error_line(e: OSError) -> str | None:
    """One line for an OS error a person caused, naming the path and what to do; None for any other."""
    what = _USER_OS_ERRORS.get(e.errno)
    if what is None:
        return None
    path = f"{e.filename}: " if e.filename else ""
    fix = {errno.ENOSPC: "free some space or choose another folder", errno.EDQUOT: "free some space"}.get(
        e.errno, "check the path and its permissions")
    return f"{path}{what} ({fix})"


# How libraries that write files report a full disk: safetensors names the OS error in its message; torch.save only
# says "file write failed" / "unexpected pos", so there the file system itself is asked.
_DISK_FULL_WORDS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
DISK_NEARLY_FULL = 16 * 2**20  # bytes free below which a failed write is taken for a full disk


def as_disk_full(e: BaseException, folder: str | os.PathLike) -> OSError | None:
    """The OSError(ENOSPC) a failed write into `folder` really was, or None: an OSError ENOSPC/EDQUOT anywhere in
    the exception chain, a library message that says so, or a write that failed on a file system with (almost) no
    space left. The CLI then prints one line and the attempt records the reason."""
    seen, visited = e, set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen if seen.filename else OSError(seen.errno, os.strerror(seen.errno), str(folder))
        if any(w in str(seen) for w in _DISK_FULL_WORDS):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
        seen = seen.__cause__ or seen.__context__
    try:
        nearly_full = shutil.disk_usage(folder).free < DISK_NEARLY_FULL
    except OSError:
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) if nearly_full else None


# Library output a person running medscale cannot act on, hidden unless --debug / MEDSCALE_DEBUG=1:
# - peft reading transformers' deprecated `is_gradient_checkpointing` alias on every adapter load (FutureWarning);
# - bitsandbytes, on CPUs with AVX512-BF16, warning at import that a hub kernel needs "trust_remote_code=True".
QUIET_WARNINGS = ((FutureWarning, "`is_gradient_checkpointing` is deprecated"),)
QUIET_LOGGERS = {"bitsandbytes": logging.ERROR}


@contextlib.contextmanager
def quiet_libraries():
    """Hide QUIET_WARNINGS and QUIET_LOGGERS below their level, and the "--- Logging error ---" traceback that a log
    handler which cannot write prints for every record (SwanLab's debug.log on a full disk: hundreds of lines
    before medscale's one line that says the disk is full). Everything as it was afterwards, and with --debug."""
    if debugging():
        yield
        return
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    raise_exceptions = logging.raiseExceptions
    with warnings.catch_warnings():
        for category, message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(max(level, levels[name]))
        logging.raiseExceptions = False
        try:
            yield
        finally:
            logging.raiseExceptions = raise_exceptions
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def user_errors():
    """The one boundary between medscale and a person: bad input (a UserError, or a path, permission or full disk)
    exits 2 with one line naming the thing and the fix; a stopped attempt exits with its code; a failed run exits
    1 with its reason. Real bugs keep their traceback, and so does everything with --debug / MEDSCALE_DEBUG=1.
    Library noise stays out of the way meanwhile (quiet_libraries)."""
    try:
        with quiet_libraries():
            yield
    except UserError as e:
        _traceback_if_debugging()
        _say(f"medscale: error: {e}")
        raise SystemExit(EXIT_BAD_INPUT) from None
    except OSError as e:
        line = os_error_line(e)
        if line is None:
            raise
        _traceback_if_debugging()
        _say(f"medscale: error: {line}")
        raise SystemExit(EXIT_BAD_INPUT) from None
    except AttemptStopped as e:
        if DistContext.from_env().is_main:  # every rank stops together with the same words: say them once
            _say(f"medscale: {e}")
        raise SystemExit(e.exit_code) from None
    except StopRequested as e:
        if DistContext.from_env().is_main:
            _say(f"medscale: {e}")
        raise SystemExit(e.exit_code) from None
    except RunFailed as e:
        _say(f"medscale: failed: {e}")
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # Ctrl-C twice: the attempt's record says where the next run resumes
        _traceback_if_debugging()
        _say("medscale: stopped at once (Ctrl-C twice), without saving")
        raise SystemExit(EXIT_CANCELLED) from None


def _traceback_if_debugging() -> None:
    """--debug shows the traceback of the error being handled, then the one line and the same exit code: a script
    that tells bad input (2) from a crash (1) reads the same code with --debug."""
    if debugging():
        import traceback

        traceback.print_exc()


def _say(line: str) -> None:
    """The line on a line of its own: a progress bar an error interrupted is closed first (tqdm, if loaded)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        with contextlib.suppress(Exception):
            bar.close()
    print(line, file=sys.stderr, flush=True)
