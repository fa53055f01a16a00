"""Temporary folders a killed process leaves behind: an export's `.<dest>.tmp-*` (gigabytes for a merge) and a run's
final-save staging folder `.final-save/`.

Each is owned through a lock file beside it (`<folder>.lock`) that its process holds with flock while it writes:
the kernel drops the lock when the process dies however it dies, so a cleaner can tell a folder whose owner is gone
(the lock can be taken) from one still being written (it cannot), with no PID that might be reused meanwhile. The
next run of the same job (`plan_start`, the next export to the same destination) and `medscale jobs gc` remove only
folders whose owner is gone; one with no lock file at all was left by a medscale that predates the lock.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from medscale.paths import plain_mode

log = logging.getLogger("medscale.leftovers")

LOCK = ".lock"
FINAL_SAVE = ".final-save"


def _lock_of(folder: Path) -> Path:
    return folder.with_name(folder.name + LOCK)


def _take(lock: Path, wait: bool) -> int | None:
    """A descriptor holding an exclusive flock on `lock` (created when missing), or None when a live process holds
    it. A cleaner may remove the file between our open and our lock: then the lock is on a removed file, so take a
    fresh one."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def owned(folder: Path):
    """Write `folder` while holding its lock, so no cleaner removes it; a folder of that name already there was left
    by an owner that is gone and is cleared first. Afterwards the folder (unless it was renamed into place) and the
    lock are removed."""
    lock = _lock_of(folder)
    fd = _take(lock, wait=True)
    try:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(mode=0o700)
        folder.chmod(plain_mode(directory=True))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def owned_temp_beside(dest: Path):
    """`owned` for a new temporary folder `.<dest name>.tmp-XXXXXXXX` beside `dest` (same filesystem: renamed into
    place once complete)."""
    fd, lock = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", suffix=LOCK, dir=dest.parent)  # reserves a unique name
    os.close(fd)
    with owned(Path(lock[:-len(LOCK)])) as tmp:
        yield tmp


def abandoned(parent: Path, pattern: str, remove: bool = False) -> list[Path]:
    """Folders matching `pattern` in `parent` whose owner is gone (and lock files left without their folder), removed
    when `remove`; folders a live process holds are left alone."""
    if not parent.is_dir():
        return []
    found = []
    folders = [p for p in parent.glob(pattern) if p.is_dir()]
    strays = [p for p in parent.glob(pattern + LOCK) if p.is_file() and not p.with_name(p.name[:-len(LOCK)]).exists()]
    for path in sorted(folders + strays):
        lock = path if path.name.endswith(LOCK) and path.is_file() else _lock_of(path)
        fd = None
        if lock.exists() and (fd := _take(lock, wait=False)) is None:
            continue  # its owner is alive
        try:
            found.append(path)
            if remove:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                lock.unlink(missing_ok=True)
                log.warning("removed %s, left by a process that was killed", path)
        finally:
            if fd is not None:
                os.close(fd)
    return found


def run_leftovers(out: Path, remove: bool = False) -> list[Path]:
    """What killed processes left in a job's output dir: its final-save staging folder and its exports' temporary
    folders (under `exports/`, where an export goes by default)."""
    return abandoned(out, FINAL_SAVE, remove) + abandoned(out / "exports", ".*.tmp-*", remove)
