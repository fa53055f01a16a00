"""Where medscale's shipped files live: `ds_configs/`, `cluster/` and `slurm/` are top-level folders of the
checkout (the design card's layout), and packaged inside `medscale/` in a wheel or a non-editable install
(pyproject maps them to medscale.ds_configs, medscale.cluster, medscale.slurm). Code asks here, never builds a
path relative to the source tree. Also the one permission policy (what a team shares, such as summaries, reports
and exports, gets the ordinary mode; what holds a resolved recipe or training data is the user's alone: PRIVATE),
and whether an output folder can be written, asked before the work starts."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# Files that may hold secrets or patients' words: resolved recipes (hosts, paths), the registry that stores every
# resolved recipe, the tokenized data cache. Fixed, not from the umask: a permissive umask must not widen them.
PRIVATE = 0o600
PRIVATE_DIR = 0o700


def shipped(*parts: str) -> Path:
    """`shipped("ds_configs", "zero3.json")`: the installed copy if there is one, else the checkout's."""
    installed = _PACKAGE.joinpath(*parts)
    return installed if installed.exists() else _PACKAGE.parent.joinpath(*parts)


def plain_mode(directory: bool = False) -> int:
    """The mode open() or mkdir() would give (0666 / 0777 minus the umask). mkstemp's 0600 and mkdtemp's 0700 would
    hide summaries, reports and exports from the team (or the serving account) that shares them."""
    return (0o777 if directory else 0o666) & ~_umask()


def _umask() -> int:
    """The process umask, read without setting it where Linux shows it: os.umask() can only read by setting, process
    wide, and the heartbeat thread asks while the main thread writes checkpoints."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def temp_dir_beside(dest: Path, tag: str = "", private: bool = False) -> Path:
    """A temporary folder next to `dest` (same filesystem: renamed into place once complete), with a plain mode, or
    PRIVATE_DIR (mkdtemp's own) when `private`: what is written into it is never readable by others, even briefly."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{tag}", dir=dest.parent))
    if not private:
        tmp.chmod(plain_mode(directory=True))
    return tmp


def plain_tree(folder: Path) -> None:
    """`folder` and everything in it with the ordinary mode: safetensors writes its files 0600, which would keep a
    serving account from reading an export."""
    for p in [folder, *folder.rglob("*")]:
        p.chmod(plain_mode(directory=p.is_dir()))


def private_tree(folder: Path) -> None:
    """`folder` and everything in it the user's alone: libraries (datasets' save_to_disk) write with the umask."""
    for p in [folder, *folder.rglob("*")]:
        p.chmod(PRIVATE_DIR if p.is_dir() else PRIVATE)


def create_private(path: Path) -> None:
    """Create `path` as an empty PRIVATE file unless it exists (an existing file keeps the mode its owner gave it).
    SQLite gives its -wal and -shm files the database file's mode, so creating the database this way keeps all three
    private; setting the umask around the connect instead would change it for every thread of the process."""
    if path.exists():  # read-only files and folders stay readable: nothing is opened for writing
        return
    with contextlib.suppress(FileExistsError):  # another process made it first
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE))


def folder_problem(folder: Path) -> str | None:
    """Why `folder` cannot be (made into) a folder to write into, or None. Asked before the work starts: found at
    the end, a file in the way is a traceback after minutes of work, with part of the results already stored."""
    for p in [folder, *folder.parents]:
        if not p.exists():
            continue
        if not p.is_dir():
            return "it is a file: name a folder (it is made if missing)" if p == folder else f"{p} is a file"
        return None if os.access(p, os.W_OK | os.X_OK) else f"cannot write in {p} (permission denied)"
    return None
