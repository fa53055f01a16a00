"""Job operations behind `medscale jobs ...`: list, show, resume, cancel, sync, gc. Each returns data; the CLI
renders it. They work the same whichever launcher ran the job: everything goes through the registry and the
on-disk record (journal + checkpoint manifests); a resume goes through the launcher the job recorded, taken from
the name -> launcher map the caller hands in (this package never imports a launcher)."""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from medscale import medscale_home
from medscale.jobs.checkpoint import checkpoint_dirs, damaged_dirs, delete_checkpoint, retention_plan
from medscale.jobs.client import reconcile, sync_output_dir
from medscale.jobs.errors import JobStateError
from medscale.jobs.kinds import JobKind, recorded_spec
from medscale.jobs.launch import Launcher, LaunchRequest, entry_for
from medscale.jobs.leftovers import run_leftovers
from medscale.jobs.record import JOURNAL, PRIVATE, RunSummary, find_output_dirs, read_journal, write_text_atomic
from medscale.recipe import Recipe
from medscale.registry import CancelOutcome, JobSpec, JobView, Registry, RegistryError, ResultView, heartbeat_interval
from medscale.status import VISIBLE_JOB_STATUSES, AttemptStatus, JobStatus

RESUME_OVERRIDES = ["train.resume=auto"]


def list_jobs(reg: Registry, status: str | None = None) -> list[JobView]:
    """Every job (one row each), optionally only those a person would see with `status` (lost included); rows
    behind their output dir are brought up to date first (`reconcile`), so the filter sees their real status."""
    if status is not None and status not in VISIBLE_JOB_STATUSES:
        raise RegistryError(f"unknown status '{status}' (one of: {', '.join(VISIBLE_JOB_STATUSES)})")
    reconcile(reg, reg.jobs())
    return reg.jobs(status)


@dataclass
class JobDetail:
    """A job as `jobs show` presents it: the registry's view plus what only its output dir knows."""

    job: JobView
    damaged: list[str] = field(default_factory=list)  # checkpoints set aside because they did not verify
    results: list[ResultView] = field(default_factory=list)  # benchmark / control measurements of this job
    summary: RunSummary | None = None  # run_summary.json: a finished run's verdicts (None before it finished)

    def to_dict(self) -> dict:
        return {**self.job.to_dict(), "damaged_checkpoints": self.damaged,
                "results": [r.to_dict() for r in self.results],
                "summary": self.summary.model_dump(mode="json") if self.summary else None}


def show_job(reg: Registry, ref: str) -> JobDetail:
    """One job with its attempts, checkpoints, results, recorded recipe and run summary, found by id, (unambiguous)
    name or output dir."""
    job = reg.job(reg.find(ref))
    if reconcile(reg, [job]):
        job = reg.job(job.id)
    return JobDetail(job, [str(p) for p in damaged_dirs(job.output_dir)], reg.results(job_id=job.id),
                     RunSummary.load(job.output_dir))


def _running(job: JobView):
    last = job.attempt_list[-1] if job.attempt_list else None
    return last if last and last.status == AttemptStatus.RUNNING else None


def resume_job(reg: Registry, ref: str, launchers: Mapping[str, Launcher], wait: bool | None = None) -> int:
    """Start a new attempt of a stopped job from its recorded recipe, entry and launcher options, so a resume never
    depends on the recipe file (or built-in) still saying what it said; it continues from the newest verified
    checkpoint. Returns the launcher's exit code (0 once queued, for launchers that only submit)."""
    job = reg.job(reg.find(ref))
    if live := _running(job):
        raise JobStateError(f"job {job.name} (id {job.id}) is running (attempt {live.number} on host {live.host}, "
                            f"pid {live.pid}); cancel it first (`medscale jobs cancel {job.id}`)")
    if job.status == JobStatus.STOPPED_EARLY:
        raise JobStateError(f"job {job.name} (id {job.id}) was stopped early by its sweep's scheduler and is not "
                            f"resumed; start a new job to train it further")
    if job.launcher not in launchers:
        raise JobStateError(f"job {job.name} was started by launcher '{job.launcher}', which this medscale does not "
                            f"know (known: {', '.join(sorted(launchers))})")
    if not job.recipe_yaml:
        raise JobStateError(f"job {job.name} (id {job.id}) has no recorded recipe (its output dir had no recipe file "
                            f"when it was synced): run `medscale train RECIPE` with train.output_dir={job.output_dir}")
    path = medscale_home() / "jobs" / str(job.id) / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, job.recipe_yaml, mode=PRIVATE)
    entry = entry_for(job.kind)  # an evaluation continues from the scores it kept: it has no resume key
    overrides = [] if entry.kind is JobKind.EVAL else list(RESUME_OVERRIDES)
    recorded_out = recorded_spec(job).train.output_dir
    if recorded_out != job.output_dir:  # a relative output_dir recorded from another cwd: keep the job's dir
        overrides.append(f"train.output_dir={job.output_dir}")
    launcher = launchers[job.launcher]
    request = LaunchRequest(entry.load_spec(str(path), overrides), str(path), overrides, entry,
                            dict(job.launcher_options))
    handle = launcher.submit(launcher.prepare(request))
    waits = getattr(launcher, "waits_by_default", False) if wait is None else wait
    return launcher.wait(handle) if waits else 0


@dataclass
class CancelResult:
    job: str
    id: int
    outcome: str  # a CancelOutcome value
    message: str

    @property
    def took_effect(self) -> bool:
        return self.outcome != CancelOutcome.NOTHING


def _seconds(x: float) -> str:
    return f"{x:.0f}" if x >= 10 or x == int(x) else f"{x:.1f}"


def cancel_job(reg: Registry, ref: str) -> CancelResult:
    """Ask a running job to save and stop (its heartbeat sees the request), mark a queued or stopped one cancelled
    (an attempt already on its way stops as it starts), and say plainly when there is nothing to cancel."""
    job = reg.job(reg.find(ref))
    outcome = reg.request_cancel(job.id)
    last = job.attempt_list[-1] if job.attempt_list else None
    if outcome == CancelOutcome.NOTHING:
        msg = f"not cancelled: job {job.name} (id {job.id}) has already {job.status}; nothing is running"
    elif outcome == CancelOutcome.STOPPING:
        msg = (f"cancel requested: attempt {last.number} on host {last.host} will save a checkpoint and stop within "
               f"~{_seconds(4 * heartbeat_interval())} s")
    elif job.status == AttemptStatus.LOST and last:
        msg = (f"job {job.name}: attempt {last.number} on host {last.host} is lost (no heartbeat, or its process is "
               f"gone); marked cancelled: if it is still alive it stops at its next heartbeat")
    else:
        msg = (f"job {job.name} (id {job.id}) marked cancelled: an attempt that starts from an earlier submission "
               f"stops at once; `medscale jobs resume` runs it again")
    return CancelResult(job.name, job.id, outcome.value, msg)


def sync_jobs(reg: Registry, dirs: list[str] | None = None) -> list[dict]:
    """Rebuild the registry from output dirs (the source of truth): the given ones, else every dir the registry
    knows plus every output dir under $MEDSCALE_HOME/runs (a registry file that was lost is rebuilt from disk);
    dirs that are gone are reported, their rows kept."""
    if dirs:
        bad = [d for d in dirs if read_journal(d) is None]
        if bad:  # check all before writing anything: a typo should not leave half a sync behind
            raise JobStateError(f"not a medscale output dir (no {JOURNAL}): {', '.join(bad)}")
        return [{**sync_output_dir(reg, d), "result": "synced"} for d in dirs]
    out, seen = [], set()
    known = [(j.output_dir, j.name, j.id) for j in reg.jobs()]
    found = [(str(d), d.name, None) for d in find_output_dirs(medscale_home() / "runs")]
    for d, name, job_id in known + found:
        d = os.path.abspath(d)
        if d in seen:
            continue
        seen.add(d)
        if not Path(d).is_dir() or read_journal(d) is None:
            why = "output dir is gone" if not Path(d).is_dir() else f"no {JOURNAL} in the output dir"
            out.append({"job": name, "id": job_id, "output_dir": d, "result": "missing",
                        "reason": f"{why}; its registry rows are kept"})
        else:
            out.append({**sync_output_dir(reg, d), "result": "synced"})
    return out


def stop_early(reg: Registry, job_id: int, reason: str) -> None:
    """End a job for good on a sweep scheduler's decision: its record says why (journal: the last attempt's exit
    reason and `stopped_early`, so `jobs sync` keeps it), its status becomes `stopped_early`, and neither `jobs resume`
    nor a new run of its recipe in its output dir ever continues it."""
    spec = reg.job_spec(job_id)
    journal = read_journal(spec.output_dir)
    if journal is None:  # stopped before its first attempt: only the registry knows the job
        reg.set_status(job_id, JobStatus.STOPPED_EARLY)
        return
    journal.stopped_early = reason
    if journal.last is not None and journal.last.status != AttemptStatus.RUNNING:
        journal.last.exit_reason = reason
    journal.save()
    sync_output_dir(reg, spec.output_dir)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _retention(spec: JobSpec) -> tuple[int | None, bool | str]:
    """(train.save_total_limit, train.keep_best_checkpoint) of the recipe a job recorded; a job that recorded none,
    or an evaluation's or judgement's spec (no checkpoints of its own), keeps all and the best."""
    recorded = recorded_spec(spec)
    if not isinstance(recorded, Recipe):
        return None, True
    return recorded.train.save_total_limit, recorded.train.keep_best_checkpoint


@dataclass(kw_only=True)
class GcResult:
    job: str
    id: int
    output_dir: str
    keep_last: int | None
    keep_best: bool | str
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # temporary folders of killed final saves and exports
    kept: int = 0
    freed_bytes: int = 0
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def gc_jobs(reg: Registry, ref: str | None = None, keep_last: int | None = None,
            dry_run: bool = False) -> list[GcResult]:
    """Apply checkpoint retention after the fact (newest N verified + best eval loss + always the newest), for
    one job or all, with each job's own recipe policy unless --keep-last overrides it; checkpoints set aside as
    damaged are deleted here and nowhere else, and so are the temporary folders killed final saves and exports left
    (never one a live process still holds)."""
    ids = [reg.find(ref)] if ref is not None else [j.id for j in reg.jobs()]
    results = []
    for job_id in ids:
        spec = reg.job_spec(job_id)
        limit, keep_best = _retention(spec)
        k = keep_last if keep_last is not None else limit
        r = GcResult(job=spec.name, id=job_id, output_dir=spec.output_dir, keep_last=k, keep_best=keep_best,
                     dry_run=dry_run)
        results.append(r)
        if not Path(spec.output_dir).is_dir():
            r.note = "output dir is gone: nothing to delete"
            continue
        on_disk = checkpoint_dirs(spec.output_dir)
        doomed = retention_plan(spec.output_dir, k, keep_best) if k is not None else []
        damaged = damaged_dirs(spec.output_dir)
        leftovers = run_leftovers(Path(spec.output_dir))
        r.freed_bytes = sum(_dir_bytes(p) for p in doomed + damaged + leftovers)
        r.deleted = [str(p) for p in doomed + damaged]
        r.leftovers = [str(p) for p in leftovers]
        r.kept = len(on_disk) - len(doomed)
        if k is None and not damaged:
            r.note = "no retention policy (train.save_total_limit is null): no checkpoint deleted; pass --keep-last N"
        if dry_run:
            continue
        run_leftovers(Path(spec.output_dir), remove=True)
        if r.note:
            continue
        for p in doomed:
            delete_checkpoint(p)
        for p in damaged:
            shutil.rmtree(p, ignore_errors=True)
        reg.mark_deleted(spec, [str(p) for p in doomed])
    return results
