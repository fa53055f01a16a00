"""Verified checkpoints: a checkpoint counts only once its manifest is on disk and every file matches it.

Protocol (DESIGN.md): the Trainer writes `checkpoint-N/` on every rank; after a barrier, global rank 0 reads
every file once, hashing it (sha256) and fsyncing it, then writes `manifest.json` (each file's size and hash, the
step, attempt and metrics) under a temporary name, fsyncs it and renames it into place. A crash at any moment
leaves either no manifest (a torn save: ignored, then removed) or a complete one. A folder without a manifest is
judged torn only when the job record (`verified_steps` of the journal) says that step never verified: a checkpoint
whose manifest was lost after it verified, or one with no record to tell, is set aside, never deleted. Resuming
re-hashes every file and cross-checks the step against the folder name and `trainer_state.json`, so a checkpoint
damaged after the fact is never resumed from: it is set aside as `checkpoint-N.damaged` (a transient read error
must never destroy a good checkpoint) and only `medscale jobs gc` deletes it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

from medscale import settings
from medscale.jobs.record import fsync_dir, read_journal, write_json_atomic

log = logging.getLogger("medscale.checkpoint")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2  # 2: every file hashed. 1 (medscale <= 0.1): files over 64 MB were checked by size only
DAMAGED = ".damaged"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
_BLOCK = 4 * 2**20


def _hash_and_sync(path: Path) -> str:
    """sha256 of a file, read once; the same descriptor is fsynced (pages written by any rank on this node)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(fd, _BLOCK):
            h.update(block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith(f".{MANIFEST}"))


def failpoint(name: str, step: int) -> None:
    """Test hook: `MEDSCALE_FAILPOINT=name@step` kills this process with SIGKILL at that point, so the
    crash-recovery tests crash exactly where a real crash would hurt most. Unset in real runs."""
    if settings.FAILPOINT.get() == f"{name}@{step}":
        log.warning("failpoint %s@%d: killing this process", name, step)
        os.kill(os.getpid(), signal.SIGKILL)


def write_manifest(ckpt: Path, step: int, meta: dict) -> dict:
    """Make `ckpt` durable, then mark it verified by writing its manifest last, atomically."""
    files = {str(p.relative_to(ckpt)): {"size": p.stat().st_size, "sha256": _hash_and_sync(p)} for p in _files(ckpt)}
    for d in {p.parent for p in _files(ckpt)}:
        fsync_dir(d)
    failpoint("before_manifest", step)
    manifest = {"format": MANIFEST_FORMAT, "step": step, **meta, "files": files,
                "size_bytes": sum(f["size"] for f in files.values())}
    write_json_atomic(ckpt / MANIFEST, manifest)
    failpoint("after_manifest", step)
    return manifest


def _well_formed(m) -> bool:
    if not isinstance(m, dict):
        return False
    files = m.get("files")
    return (m.get("format") in (1, MANIFEST_FORMAT) and isinstance(m.get("step"), int) and isinstance(files, dict)
            and bool(files) and all(isinstance(f, dict) and isinstance(f.get("size"), int) for f in files.values()))


def load_manifest(ckpt: Path) -> dict | None:
    """The manifest as written, if there is one of a known shape; nothing is checked against the files."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if _well_formed(manifest) else None


def problem(ckpt: Path, check_hashes: bool = True) -> str | None:
    """Why `ckpt` cannot be resumed from, or None when it verifies."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no manifest (a save that never finished)"
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    if not _well_formed(manifest):
        return "manifest of an unknown format"
    m = _CKPT.match(ckpt.name)
    if m and int(m.group(1)) != manifest["step"]:
        return f"its manifest says step {manifest['step']}, its name says {m.group(1)}"
    for rel, want in manifest["files"].items():
        p = ckpt / rel
        if not p.is_file() or p.stat().st_size != want["size"]:
            return f"{rel} is missing or has the wrong size"
        if check_hashes and want.get("sha256") and _sha256(p) != want["sha256"]:
            return f"{rel} does not match its checksum"
        if check_hashes and not want.get("sha256"):
            log.warning("%s: %s was saved by an older medscale without a checksum: checked by size only", ckpt, rel)
    if "trainer_state.json" in manifest["files"]:
        try:
            state_step = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8")).get("global_step")
        except (OSError, ValueError):
            return "trainer_state.json is unreadable"
        if state_step != manifest["step"]:
            return f"its manifest says step {manifest['step']}, trainer_state.json says {state_step}"
    return None


def read_manifest(ckpt: Path, check_hashes: bool = True) -> dict | None:
    """The manifest if the checkpoint is complete and intact, else None (with the reason logged)."""
    why = problem(ckpt, check_hashes)
    if why is not None:
        (log.info if why.startswith("no manifest") else log.warning)("%s: %s: not resumable", ckpt, why)
        return None
    return load_manifest(ckpt)


def checkpoint_dirs(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoint-N` folder, oldest first (set-aside `.damaged` ones excluded)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CKPT.match(p.name))]
    return sorted(found)


def damaged_dirs(output_dir: str | Path) -> list[Path]:
    """Checkpoints set aside because they did not verify, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    return sorted((p for p in out.iterdir() if p.is_dir() and DAMAGED in p.name and p.name.startswith("checkpoint-")),
                  key=lambda p: p.name)


def latest_verified(output_dir: str | Path) -> Path | None:
    """The newest checkpoint with a valid manifest; torn or damaged ones are skipped."""
    for _, path in reversed(checkpoint_dirs(output_dir)):
        if read_manifest(path) is not None:
            return path
    return None


def checkpoint_step(ckpt: Path) -> int:
    """The global step a checkpoint was saved at, from its manifest (whatever the folder is called)."""
    manifest = load_manifest(ckpt)
    if manifest is None:
        from medscale.jobs.errors import CheckpointError

        raise CheckpointError(f"{ckpt} is not a verified checkpoint (no valid {MANIFEST})")
    return manifest["step"]


def set_aside(path: Path, why: str) -> Path:
    """Rename a checkpoint that does not verify to `checkpoint-N.damaged[-k]`: never resumed from, never
    overwritten by a new save of that step, deleted only by `medscale jobs gc`."""
    target = path.with_name(path.name + DAMAGED)
    k = 1
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}{DAMAGED}-{k}")
    path.rename(target)
    fsync_dir(path.parent)
    log.warning("set %s aside as %s: %s (nothing was deleted; `medscale jobs gc` deletes it)", path, target, why)
    return target


def recorded_steps(output_dir: str | Path) -> set[int] | None:
    """The steps the job record says once had a verified checkpoint; None when there is no readable record (then no
    folder can be judged a save that never finished)."""
    try:
        journal = read_journal(output_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if journal is None else set(journal.verified_steps)


def torn(step: int, recorded: set[int] | None) -> str | None:
    """Why a checkpoint without a manifest must be set aside rather than removed as a torn save, or None when it is
    a save that never finished (the record knows its step never verified)."""
    if recorded is None:
        return "it has no valid manifest and there is no job record to tell a torn save from a verified checkpoint"
    if step in recorded:
        return f"its manifest is missing or unreadable, but the job record lists step {step} as verified"
    return None


def discard(step: int, path: Path, why: str, recorded: set[int] | None) -> Path | None:
    """A checkpoint that does not verify, out of the Trainer's way: a torn save (no manifest, a step the record says
    never verified) is removed (returns None), anything else set aside (returns where)."""
    if not (path / MANIFEST).exists():
        why = torn(step, recorded)
    if why is not None:
        return set_aside(path, why)
    log.warning("removing %s: its save never finished (no manifest, and the job record never verified step %d)",
                path, step)
    delete_checkpoint(path)
    return None


def clear_newer_than(output_dir: str | Path, start: Path | None) -> tuple[list[Path], list[Path]]:
    """Checkpoints newer than the resume point that do not verify, which the Trainer would save into again:
    torn saves are removed, anything else set aside (see `discard`). Returns (removed, set aside)."""
    start_step = checkpoint_step(start) if start else -1
    recorded = recorded_steps(output_dir)
    removed, aside = [], []
    for step, p in checkpoint_dirs(output_dir):
        if step <= start_step or (why := problem(p)) is None:
            continue
        if (where := discard(step, p, why, recorded)) is None:
            removed.append(p)
        else:
            aside.append(where)
    return removed, aside


def newest_saved(output_dir: str | Path) -> Path | None:
    """The newest checkpoint whose save finished (its manifest is there; not re-hashed: cheap, for messages and
    clean-up; resuming verifies)."""
    return next((p for _, p in reversed(checkpoint_dirs(output_dir)) if load_manifest(p) is not None), None)


def remove_torn_saves(output_dir: str | Path) -> list[Path]:
    """After an attempt failed (a full disk, a crash in a save): the checkpoint folders newer than every one with a
    manifest, which its failed save left half-written, are removed (those the record calls verified are set aside);
    checkpoints with a manifest are not touched. Returns the removed ones."""
    newest = newest_saved(output_dir)
    newest_step = -1 if newest is None else checkpoint_step(newest)
    recorded = recorded_steps(output_dir)
    unfinished = [(step, p) for step, p in checkpoint_dirs(output_dir) if step > newest_step]
    return [p for step, p in unfinished if discard(step, p, "no valid manifest", recorded) is None]


def best_metric(keep_best: bool | str) -> tuple[str, bool] | None:
    """`train.keep_best_checkpoint` -> (metric, higher is better), or None: true means the lowest eval loss."""
    if keep_best is False or keep_best in ("false", ""):
        return None
    metric = "eval_loss" if keep_best is True or keep_best == "true" else str(keep_best)
    return metric, metric.endswith(("acc", "accuracy"))


def retention_plan(output_dir: str | Path, keep_last: int | None, keep_best: bool | str) -> list[Path]:
    """Checkpoints to delete: keep the newest `keep_last` verified ones, the best by `keep_best`'s metric (eval
    loss, a benchmark's accuracy, the control loss), and always the newest verified one; torn ones older than it go
    too, unless the job record calls them verified (a lost manifest is no torn save) or there is no record to tell.
    Unverified ones newer than it are left alone (they may be a save in progress)."""
    if keep_last is None:
        return []
    verified, unverified = [], []
    for step, path in checkpoint_dirs(output_dir):
        manifest = load_manifest(path)
        (verified if manifest else unverified).append((step, path, manifest))
    if not verified:
        return []
    keep = {p for _, p, _ in verified[-max(keep_last, 1):]}
    if (best := best_metric(keep_best)) is not None:
        metric, higher = best
        scored = [(m["metrics"][metric], p) for _, p, m in verified
                  if isinstance(m.get("metrics", {}).get(metric), (int, float))]
        if scored:
            keep.add((max if higher else min)(scored, key=lambda t: t[0])[1])
    newest = verified[-1][0]
    recorded = recorded_steps(output_dir)
    return [p for _, p, _ in verified if p not in keep] + [p for step, p, _ in unverified
                                                           if step < newest and torn(step, recorded) is None]


def delete_checkpoint(path: Path) -> None:
    """Unverify first (manifest removed atomically), so a crash mid-delete never leaves a 'verified' husk."""
    (path / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def deepspeed_layout(ckpt: Path) -> tuple[str, int]:
    """How a checkpoint was saved: ("no DeepSpeed" | "ZeRO-1/2" | "ZeRO-3", DeepSpeed processes or 0)."""
    tag = (ckpt / "latest").read_text().strip() if (ckpt / "latest").is_file() else None
    shards = ckpt / tag if tag and (ckpt / tag).is_dir() else None
    if shards is None:
        return "no DeepSpeed", 0
    layout = "ZeRO-3" if list(shards.glob("zero_pp_rank_*_model_states.pt")) else "ZeRO-1/2"
    return layout, len(list(shards.glob("*zero_pp_rank_*_optim_states.pt")))
