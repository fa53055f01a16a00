"""Generations written as they finish, one JSON line each, keyed by (question id, sample index, settings
fingerprint), so a killed run continues where it stopped and asking for more samples keeps the first ones.

Each line is appended with one write() on an O_APPEND descriptor and fsynced. A kill can only tear the last line:
reading skips it, and the next append first cuts the file back to its last complete line.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path


def prompt_sha(prompt) -> str:
    """A changed prompt (template, instruction, shots) must not reuse an answer to the old one."""
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


class GenerationCache:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd: int | None = None

    def load(self, fingerprint: str) -> dict[tuple[str, int], dict]:
        """(id, sample) -> record, for this fingerprint; torn or foreign lines are ignored."""
        if not self.path.is_file():
            return {}
        out = {}
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("fingerprint") == fingerprint:
                out[(rec["id"], rec["sample"])] = rec
        return out

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        size = os.fstat(fd).st_size
        if size:
            data = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
            if not data.endswith(b"\n"):  # a torn last line from a kill: cut back to the last complete one
                cut = data.rfind(b"\n")
                os.ftruncate(fd, size - len(data) + cut + 1 if cut >= 0 else 0)
        return fd

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._fd is None:
                self._fd = self._open()
            os.write(self._fd, line)
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
