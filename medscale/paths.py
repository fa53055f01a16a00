"""Where medscale's shipped files live: `ds_configs/`, `cluster/` and `slurm/` are top-level folders of the
checkout (the design card's layout), and packaged inside `medscale/` in a wheel or a non-editable install
(pyproject maps them to medscale.ds_configs, medscale.cluster, medscale.slurm). Code asks here, never builds a
path relative to the source tree. Also how files medscale writes through temporaries get ordinary permissions,
and whether an output folder can be written, asked before the work starts."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


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


def temp_dir_beside(dest: Path, tag: str = "") -> Path:
    """A temporary folder next to `dest` (same filesystem: renamed into place once complete), with a plain mode."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{tag}", dir=dest.parent))
    tmp.chmod(plain_mode(directory=True))
    return tmp


def plain_tree(folder: Path) -> None:
    """`folder` and everything in it with the ordinary mode: safetensors writes its files 0600, which would keep a
    serving account from reading an export."""
    for p in [folder, *folder.rglob("*")]:
        p.chmod(plain_mode(directory=p.is_dir()))


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
