"""The registry as a running job sees it, and rebuilding registry rows from an output dir.

`RunRegistry` is global rank 0's client: typed calls that never raise. A failure is logged loudly
(`REGISTRY UNREACHABLE`) and the call is skipped; calls are retried after RETRY_S, and the first one that gets
through first restores the job's rows from disk (`sync_output_dir`). The attempt's final status is never skipped: it
is tried at once and again after FINAL_WAITS_S. A SQLite registry file deleted or replaced mid-run counts as
unreachable too: the run reopens the file at that path and restores its rows there.

Whatever still fell behind is repaired by whoever next touches the job (`reconcile`: a rerun, `jobs show`, `jobs
list`): the output dir is the source of truth.
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
from medscale.registry import (CheckpointInfo, JobSpec, JobView, MetricRow, Registry, RegistryError, default_url, redact,
                               scrub)
from medscale.status import AttemptStatus, JobStatus

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
        reg.record_checkpoint(spec, CheckpointInfo(
            step=step, path=str(path), verified=manifest is not None, attempt_number=m.get("attempt", 0),
            metrics=m.get("metrics", {}), size_bytes=m.get("size_bytes", 0)))
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


def behind(job: JobView) -> bool:
    """Whether the registry's rows of `job` miss what its output dir's journal records: an attempt it never heard
    of, or the end of one it still shows running (or lost: running, without a heartbeat)."""
    journal = read_journal(job.output_dir) if job.output_dir else None
    if journal is None or not journal.attempts:
        return False
    ended = journal.last.status != AttemptStatus.RUNNING
    return len(journal.attempts) > job.attempts or (ended and job.status in (JobStatus.RUNNING, AttemptStatus.LOST))


def reconcile(reg: Registry, jobs: list[JobView]) -> bool:
    """Sync the jobs whose rows are `behind` from their output dirs; True when any was. A registry that takes no
    writes (read-only access) keeps its view, with a warning."""
    stale = [j for j in jobs if behind(j)]
    for job in stale:
        try:
            sync_output_dir(reg, job.output_dir)
        except Exception as e:
            log.warning("job %s: the registry is behind %s and could not be updated (%s: %s); `medscale jobs sync "
                        "%s` repairs it", job.name, job.output_dir, type(e).__name__, e, job.output_dir)
            return False
        log.warning("job %s: the registry had missed the end of its attempts; restored from %s", job.name,
                    job.output_dir)
    return bool(stale)


def reconcile_output_dir(output_dir: str | Path) -> None:
    """`reconcile` the job recorded in `output_dir`, as a rerun of it starts; a registry that cannot be reached is
    left to the run itself, which reports it."""
    journal = read_journal(output_dir)
    if journal is None:
        return
    try:
        reg = Registry()
    except RegistryError:
        return
    with reg:
        job_id = reg.find_by_key(journal.spec(""))
        if job_id is not None:
            reconcile(reg, [reg.job(job_id)])


class RunRegistry:
    """Rank 0's registry client for one job; see the module docstring."""

    RETRY_S = 60.0
    FINAL_WAITS_S = (0.5, 2.0, 5.0)  # a short outage at the end of a run must not leave a finished job `lost`

    def __init__(self, url: str | None, output_dir: str):
        self.url, self.output_dir = url or default_url(), output_dir
        self._reg: Registry | None = None
        self._retry_at, self._behind = 0.0, False
        self._lock = threading.Lock()  # the heartbeat thread and the training thread share it

    def _call(self, what: str, fn: Callable[[Registry], T], *, final: bool = False) -> T | None:
        with self._lock:
            if time.monotonic() < self._retry_at and not final:
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

    def ended(self, spec: JobSpec, a) -> None:
        """Record how the attempt ended: tried now, whatever failed before, and again after each FINAL_WAITS_S."""
        for wait in (0.0, *self.FINAL_WAITS_S):
            time.sleep(wait)
            self._call("recording the end of the attempt", lambda r: r.upsert_attempt(spec, a), final=True)
            if not self._behind:
                return

    def job_id(self, spec: JobSpec) -> int | None:
        """The registry's id of the job (trackers tag the run with it); None while the registry is unreachable."""
        return self._call("looking up the job's id", lambda r: r.find_by_key(spec))

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
