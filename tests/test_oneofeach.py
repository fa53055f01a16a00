"""One of each (issue 21, deliverable 4): the registry session is one context manager, and its block lets go of the
database however it ends."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from medscale.registry import Registry


def _held(db: Path) -> bool:
    """Does this process hold the SQLite file (or its WAL) open?"""
    fds = Path("/proc/self/fd")
    return any(os.path.realpath(fd).startswith(str(db)) for fd in fds.iterdir() if fd.is_symlink())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads the open files from /proc")
def test_a_registry_block_closes_the_database_even_when_it_raises(tmp_path):
    db = (tmp_path / "registry.db").resolve()
    with Registry(f"sqlite:///{db}") as reg:
        assert reg.jobs() == [] and _held(db)
    assert not _held(db)
    with pytest.raises(KeyError), Registry(f"sqlite:///{db}") as reg:
        reg.jobs()
        raise KeyError("the block failed")
    assert not _held(db)

