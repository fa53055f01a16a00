"""The registry as a running job sees it, and rebuilding registry rows from an output dir.

`RunRegistry` is global rank 0's client: typed calls that never raise. A failure is logged loudly
(`REGISTRY UNREACHABLE`) and the call is skipped; calls are retried after RETRY_S, and the first one that gets
through first restores the job's rows from disk (`sync_output_dir`). A SQLite registry file deleted or replaced
mid-run counts as unreachable too: the run reopens the file at that path and restores its rows there.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

from medscale.jobs.checkpoint import checkpoint_dirs, damaged_dirs, load_manifest, problem
from medscale.jobs.errors import JobStateError
from medscale.jobs.record import JOURNAL, RECIPE_FILE, read_journal, trainer_log
from medscale.jobs.status import JobStatus
from medscale.registry import CheckpointInfo, JobSpec, MetricRow, Registry, default_url, redact, scrub

log = logging.getLogger("medscale.registry")
T = TypeVar("T")


def sync_output_dir(reg: Registry, output_dir: str | Path) -> dict:
    """Rebuild a job's rows from its output dir: the job, every attempt, every checkpoint (verified or not), the
    per-step metrics (the newest `trainer_state.json`'s log), and mark the registry's checkpoints that are gone from
    disk as deleted."""
    out = Path(os.path.abspath(output_dir))
    journal = read_journal(out)
    if journal is None:
        raise JobStateError(f"{out}: no {JOURNAL} (not a medscale output dir, or no attempt ever started there)")
    recipe_file = out / RECIPE_FILE
    spec = journal.spec(recipe_file.read_text(encoding="utf-8") if recipe_file.is_file() else "")
    spec.output_dir = str(out)
    for i, a in enumerate(journal.attempts):
        reg.upsert_attempt(spec, a, current=i == len(journal.attempts) - 1, beat=False)
    on_disk, verified = set(), 0
    for step, path in checkpoint_dirs(out):
        manifest = load_manifest(path) if problem(path, check_hashes=False) is None else None
        on_disk.add(str(path))
        verified += manifest is not None
        m = manifest or {}
        reg.record_checkpoint(spec, CheckpointInfo(step, str(path), manifest is not None, m.get("attempt", 0),
                                                   m.get("metrics", {}), m.get("size_bytes", 0)))
    if journal.stopped_early:
        reg.set_status(reg.find_by_key(spec), JobStatus.STOPPED_EARLY)
    history = trainer_log(out)
    reg.record_metrics(spec, [MetricRow.from_log(h["step"], h) for h in history if "step" in h])
    job_id = reg.find_by_key(spec)
    gone = [c.path for c in reg.job(job_id).checkpoints if c.path not in on_disk and not c.deleted]
    reg.mark_deleted(spec, gone)
    return {"job": spec.name, "output_dir": str(out), "attempts": len(journal.attempts),
            "checkpoints": len(on_disk), "verified": verified, "marked_deleted": len(gone),
            "metric_steps": len({h.get("step") for h in history}),
            "damaged": [p.name for p in damaged_dirs(out)]}


class RunRegistry:
    """Rank 0's registry client for one job; see the module docstring."""

    RETRY_S = 60.0

    def __init__(self, url: str | None, output_dir: str):
        self.url, self.output_dir = url or default_url(), output_dir
        self._reg: Registry | None = None
        self._retry_at, self._behind = 0.0, False
        self._lock = threading.Lock()  # the heartbeat thread and the training thread share it

    def _call(self, what: str, fn: Callable[[Registry], T]) -> T | None:
        with self._lock:
            if time.monotonic() < self._retry_at:
                return None
            try:
                if self._reg is not None and self._reg.file_replaced():
                    self._reg.close()
                    self._reg, self._behind = None, True
                    log.error("REGISTRY UNREACHABLE: the registry file %s was deleted or replaced during the run; "
                              "reopening it and restoring this job's rows from %s", redact(self.url), self.output_dir)
                if self._reg is None:
                    self._reg = Registry(self.url)
                if self._behind:
                    sync_output_dir(self._reg, self.output_dir)
                    self._behind = False
                    log.warning("registry %s reachable again: rows restored from %s", redact(self.url), self.output_dir)
                return fn(self._reg)
            except Exception as e:
                self._behind, self._retry_at = True, time.monotonic() + self.RETRY_S
                reason = str(e).splitlines()[0] if str(e) else ""
                log.error("REGISTRY UNREACHABLE: %s failed on %s (%s: %s). Training continues; the job's rows "
                          "will be restored on reconnect or by `medscale jobs sync %s`.", what, redact(self.url),
                          type(e).__name__, scrub(reason, self.url), self.output_dir)
                return None

    def attempt(self, spec: JobSpec, a, launched_at=None) -> bool:
        """Record the attempt (and beat its heartbeat); True when a cancel of the job applies to it."""
        return bool(self._call("recording the attempt", lambda r: r.upsert_attempt(spec, a, launched_at=launched_at)))

    def checkpoint(self, spec: JobSpec, c: CheckpointInfo) -> None:
        self._call("recording a checkpoint", lambda r: r.record_checkpoint(spec, c))

    def results(self, spec: JobSpec, rows: list) -> None:
        """Store measurements (ResultInfo) of this job."""
        def write(r):
            job_id = r.find_by_key(spec)
            for row in rows:
                r.record_result(row, job_id)

        self._call("recording results", write)

    def metrics(self, spec: JobSpec, rows: list[MetricRow]) -> None:
        self._call("recording metrics", lambda r: r.record_metrics(spec, rows))

    def deleted(self, spec: JobSpec, paths: list[str]) -> None:
        if paths:
            self._call("marking checkpoints deleted", lambda r: r.mark_deleted(spec, paths))

    def close(self) -> None:
        with self._lock:
            if self._reg is not None:
                self._reg.close()
                self._reg = None
