"""Verified checkpoints: a checkpoint counts only once its manifest is on disk.

Protocol (DESIGN.md): the Trainer writes `checkpoint-N/` on every rank; after a barrier, global rank 0
fsyncs every file, then writes `manifest.json` (each file's size, and the sha256 of files up to
HASH_LIMIT) under a temporary name, fsyncs it and renames it into place. A crash at any moment leaves
either no manifest (the checkpoint is ignored) or a complete one. Resuming verifies sizes and hashes
again, so a checkpoint damaged after the fact is skipped too.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

from medscale.recipe import RecipeError

log = logging.getLogger("medscale.checkpoint")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
HASH_LIMIT = 64 * 2**20  # bytes; larger files (full weights, optimizer state) are checked by size only
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def write_text_atomic(path: Path, text: str) -> None:
    """Temp file + fsync + rename + directory fsync: a crash leaves the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def _files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith(f".{MANIFEST}"))


def failpoint(name: str, step: int) -> None:
    """Test hook: `MEDSCALE_FAILPOINT=name@step` kills this process with SIGKILL at that point, so the
    crash-recovery tests crash exactly where a real crash would hurt most. Unset in real runs."""
    if os.environ.get("MEDSCALE_FAILPOINT") == f"{name}@{step}":
        log.warning("failpoint %s@%d: killing this process", name, step)
        os.kill(os.getpid(), signal.SIGKILL)


def write_manifest(ckpt: Path, step: int, meta: dict) -> dict:
    """Make `ckpt` durable, then mark it verified by writing its manifest last, atomically."""
    files = {}
    for p in _files(ckpt):
        fd = os.open(p, os.O_RDONLY)  # flush pages written by any rank on this node
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        size = p.stat().st_size
        files[str(p.relative_to(ckpt))] = {"size": size, "sha256": _sha256(p) if size <= HASH_LIMIT else None}
    for d in {p.parent for p in _files(ckpt)}:
        _fsync_dir(d)
    failpoint("before_manifest", step)
    manifest = {"format": MANIFEST_FORMAT, "step": step, **meta, "files": files,
                "size_bytes": sum(f["size"] for f in files.values())}
    write_json_atomic(ckpt / MANIFEST, manifest)
    return manifest


def _well_formed(m) -> bool:
    if not isinstance(m, dict):
        return False
    files = m.get("files")
    return (m.get("format") == MANIFEST_FORMAT and isinstance(m.get("step"), int) and isinstance(files, dict)
            and bool(files) and all(isinstance(f, dict) and isinstance(f.get("size"), int) for f in files.values()))


def read_manifest(ckpt: Path, check_hashes: bool = True) -> dict | None:
    """The manifest if the checkpoint is complete and intact, else None (with the reason logged)."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        log.info("%s has no manifest (a save that never finished): not resumable", ckpt)
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable manifest (%s): not resumable", ckpt, e)
        return None
    if not _well_formed(manifest):
        log.warning("%s: manifest of an unknown format: not resumable", ckpt)
        return None
    for rel, want in manifest["files"].items():
        p = ckpt / rel
        if not p.is_file() or p.stat().st_size != want["size"]:
            log.warning("%s: %s is missing or has the wrong size: not resumable", ckpt, rel)
            return None
        if check_hashes and want.get("sha256") and _sha256(p) != want["sha256"]:
            log.warning("%s: %s does not match its hash: not resumable", ckpt, rel)
            return None
    return manifest


def checkpoint_dirs(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoint-N` folder, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CKPT.match(p.name))]
    return sorted(found)


def latest_verified(output_dir: str | Path) -> Path | None:
    """The newest checkpoint with a valid manifest; torn or damaged ones are skipped."""
    for _, path in reversed(checkpoint_dirs(output_dir)):
        if read_manifest(path) is not None:
            return path
    return None


def checkpoint_step(ckpt: Path) -> int:
    """The global step a verified checkpoint was saved at (from its manifest, whatever the folder is called)."""
    manifest = read_manifest(ckpt, check_hashes=False)
    if manifest is None:
        raise RecipeError(f"{ckpt} is not a verified checkpoint")
    return manifest["step"]


def resolve_resume(mode: str, output_dir: str) -> Path | None:
    """`train.resume` -> the checkpoint to start from: auto = newest verified of this output dir."""
    if mode == "never":
        return None
    if mode == "auto":
        return latest_verified(output_dir)
    path = Path(mode).expanduser()
    if read_manifest(path) is None:
        raise RecipeError(f"train.resume={mode}: not a verified checkpoint (no valid {MANIFEST}); "
                          f"use train.resume=auto to pick the newest verified one")
    step = checkpoint_step(path)
    newer = [p.name for s, p in checkpoint_dirs(output_dir) if s > step and read_manifest(p, check_hashes=False)]
    if newer:
        raise RecipeError(f"train.resume={mode}: {output_dir} holds newer verified checkpoints ({', '.join(newer)}) "
                          f"that this run would overwrite; resume into a new train.output_dir, or delete them")
    return path


def discard_newer_unverified(output_dir: str | Path, start: Path | None) -> list[Path]:
    """Remove checkpoints newer than the one we resume from that do not verify (torn or damaged saves): the
    Trainer would save into those folders again, beside a stale manifest."""
    start_step = checkpoint_step(start) if start else -1
    bad = [p for step, p in checkpoint_dirs(output_dir) if step > start_step and read_manifest(p) is None]
    for p in bad:
        log.warning("removing %s: its save never finished or is damaged (no valid manifest)", p)
        delete_checkpoint(p)
    return bad


def retention_plan(output_dir: str | Path, keep_last: int | None, keep_best: bool) -> list[Path]:
    """Checkpoints to delete: keep the newest `keep_last` verified ones, the best by eval loss, and always
    the newest verified one; torn ones older than it go too. Unverified ones newer than it are left
    alone (they may be a save in progress)."""
    if keep_last is None:
        return []
    verified, torn = [], []
    for step, path in checkpoint_dirs(output_dir):
        manifest = read_manifest(path, check_hashes=False)
        (verified if manifest else torn).append((step, path, manifest))
    if not verified:
        return []
    keep = {p for _, p, _ in verified[-max(keep_last, 1):]}
    if keep_best:
        scored = [(m["metrics"]["eval_loss"], p) for _, p, m in verified
                  if isinstance(m.get("metrics", {}).get("eval_loss"), (int, float))]
        if scored:
            keep.add(min(scored, key=lambda t: t[0])[1])
    newest = verified[-1][0]
    return [p for _, p, _ in verified if p not in keep] + [p for step, p, _ in torn if step < newest]


def delete_checkpoint(path: Path) -> None:
    """Unverify first (manifest removed atomically), so a crash mid-delete never leaves a 'verified' husk."""
    (path / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)
