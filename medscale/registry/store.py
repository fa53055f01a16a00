"""The registry store: short transactions over SQLAlchemy, SQLite by default, any URL by env.

Every write is an idempotent upsert keyed by (job name, output dir), attempt number and checkpoint
path, so a run that could not reach the registry, `medscale jobs sync` and a concurrent writer all
converge on the same rows (the engine, SQLite's locking and the migrations are `engine`'s). Reads
return the typed views of `records`, never ORM rows or dicts.
"""
from __future__ import annotations

import os
import socket
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from medscale import settings
from medscale.registry.engine import RegistryError, default_url, make_engine, migrate, redact, scrub, sqlite_path
from medscale.registry.models import Attempt, Checkpoint, Job, Metric, Result, Sweep, SweepTrial
from medscale.registry.records import (METRIC_COLUMNS, AttemptInfo, AttemptView, CheckpointInfo, CheckpointView,
                                       JobSpec, JobView, MetricRow, ResultInfo, ResultView, SweepInfo, SweepView,
                                       TrialView, iso, utcnow)
from medscale.jobkind import JobKind
from medscale.status import AttemptStatus, JobStatus


class CancelOutcome(str, Enum):
    """What `request_cancel` did, so the CLI can say whether the cancel takes effect."""

    STOPPING = "stopping"  # a running attempt will save and stop at its next heartbeat
    CANCELLED = "cancelled"  # a queued or stopped job is now cancelled; an attempt starting later stops at once
    NOTHING = "nothing"  # the job already succeeded or was cancelled: nothing changed


def heartbeat_interval() -> float:
    """Seconds between rank-0 heartbeats; an attempt silent for 4 intervals shows as `lost`."""
    return settings.HEARTBEAT_S.get()


class Registry:
    """Jobs, attempts and checkpoints. Construct once per process; every method is one short transaction.
    A session that ends is a `with Registry() as reg:` block: closed however the block ends."""

    def __init__(self, url: str | None = None, connect_timeout: float = 5):
        self.url = url or default_url()
        self.url_redacted = redact(self.url)
        try:
            self.engine = make_engine(self.url, connect_timeout)
            migrate(self.engine)
        except RegistryError:
            raise
        except Exception as e:
            raise RegistryError(f"registry {self.url_redacted} unreachable: {type(e).__name__}: "
                                f"{scrub(str(e).splitlines()[0] if str(e) else '', self.url)}") from None
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self.file_identity = _identity(sqlite_path(self.url))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def file_replaced(self) -> bool:
        """True when this SQLite registry's file was deleted or replaced since it was opened: writes through the
        open connection would go to a file nobody can see any more."""
        path = sqlite_path(self.url)
        return path is not None and _identity(path) != self.file_identity

    # ------------------------------------------------------------------ writes (global rank 0, sync, CLI)

    def _job(self, s: Session, spec: JobSpec, refresh: bool = False) -> Job:
        keys = {"name": spec.name, "output_dir": spec.output_dir}
        job = s.scalar(select(Job).filter_by(**keys))
        if job is None or refresh:
            job = _upsert(s, Job, keys, {"launcher": spec.launcher, "recipe_yaml": spec.recipe_yaml,
                                         "fingerprint": spec.fingerprint, "kind": spec.kind.value,
                                         "launcher_options": spec.launcher_options})
        return job

    def register(self, spec: JobSpec) -> int:
        """A submitted job (sbatch, ray job submit, a sweep trial): its row, `queued` unless an attempt of it is
        running. Returns its id."""
        with self._session.begin() as s:
            job = self._job(s, spec, refresh=True)
            if not job.attempts or attempt_state(job.attempts[-1]) != AttemptStatus.RUNNING:
                job.status = JobStatus.QUEUED.value
            s.flush()
            return job.id

    def upsert_attempt(self, spec: JobSpec, a: AttemptInfo, current: bool = True, beat: bool = True,
                       launched_at: datetime | None = None) -> bool:
        """Create or update attempt `a.number`; `beat` refreshes its heartbeat (the live run does, `jobs sync` does
        not: replaying a journal must not make a dead attempt look alive). When it is the job's current attempt
        the job's status follows it. Returns whether a cancel applies to this attempt.

        A new attempt clears a cancel request made before `launched_at` (the submit or command that started it: a
        person ran the job again), and obeys one made after it (a cancel of a queued or starting job)."""
        values = {k: v for k, v in asdict(a).items() if k != "number"} | {"status": a.status.value}
        if a.status != AttemptStatus.RUNNING:
            values["heartbeat_at"] = a.ended_at or utcnow()
        elif beat:
            values["heartbeat_at"] = utcnow()
        with self._session.begin() as s:
            job = self._job(s, spec, refresh=current)
            new = s.scalar(select(Attempt.id).filter_by(job_id=job.id, number=a.number)) is None
            if new and "heartbeat_at" not in values:
                values["heartbeat_at"] = a.started_at
            _upsert(s, Attempt, {"job_id": job.id, "number": a.number}, values)
            if current:
                if new and a.status == AttemptStatus.RUNNING:
                    asked = job.cancel_requested_at
                    if job.cancel_requested and (asked is None or launched_at is None or asked < launched_at):
                        job.cancel_requested, job.cancel_requested_at = False, None
                    for old in s.scalars(select(Attempt).where(Attempt.job_id == job.id, Attempt.number < a.number,
                                                               Attempt.status == AttemptStatus.RUNNING.value)):
                        old.status = AttemptStatus.LOST.value  # it never ended: it was killed
                        old.exit_reason = old.exit_reason or f"never ended; attempt {a.number} started after it"
                status = AttemptStatus(a.status)
                cancelled = job.cancel_requested and status not in (AttemptStatus.RUNNING, AttemptStatus.COMPLETED)
                job.status = (JobStatus.CANCELLED if cancelled else status.job_status()).value
            return bool(job.cancel_requested)

    def record_checkpoint(self, spec: JobSpec, c: CheckpointInfo) -> None:
        with self._session.begin() as s:
            job = self._job(s, spec)
            _upsert(s, Checkpoint, {"job_id": job.id, "path": c.path},
                    {**{k: v for k, v in asdict(c).items() if k != "path"}, "deleted_at": None})

    def mark_deleted(self, spec: JobSpec, paths: list[str]) -> None:
        if not paths:
            return
        with self._session.begin() as s:
            job = self._job(s, spec)
            s.execute(update(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.path.in_(paths),
                                               Checkpoint.deleted_at.is_(None)).values(deleted_at=utcnow()))

    def set_status(self, job_id: int, status: JobStatus) -> None:
        """Set a job's status outside an attempt (a sweep's scheduler stopping a trial early)."""
        with self._session.begin() as s:
            _get(s, job_id).status = status.value

    def request_cancel(self, job_id: int) -> CancelOutcome:
        """A running attempt sees this at its next heartbeat, saves and stops; a queued or stopped job is marked
        cancelled (an attempt that starts from an earlier launch stops at once); a finished job is left alone."""
        with self._session.begin() as s:
            job = _get(s, job_id)
            if job.status in (JobStatus.SUCCEEDED.value, JobStatus.CANCELLED.value, JobStatus.STOPPED_EARLY.value):
                return CancelOutcome.NOTHING
            job.cancel_requested, job.cancel_requested_at = True, utcnow()
            if job.attempts and attempt_state(job.attempts[-1]) == AttemptStatus.RUNNING:
                return CancelOutcome.STOPPING
            job.status = JobStatus.CANCELLED.value
            return CancelOutcome.CANCELLED

    def record_result(self, r: ResultInfo, job_id: int | None = None) -> int:
        """Store one measurement (of a job's model when `job_id` is given); returns its id."""
        with self._session.begin() as s:
            if job_id is not None:
                _get(s, job_id)
            row = Result(job_id=job_id, **{**asdict(r), "role": r.role.value})
            s.add(row)
            s.flush()
            return row.id

    def record_metrics(self, spec: JobSpec, rows: list[MetricRow]) -> None:
        """Store what a run logged, one row per step: a later log of the same step (its evaluation, a resumed
        attempt training it again) fills in and replaces that step's figures."""
        if not rows:
            return
        with self._session.begin() as s:
            job = self._job(s, spec)
            existing = {m.step: m for m in s.scalars(select(Metric).where(
                Metric.job_id == job.id, Metric.step.in_({r.step for r in rows})))}
            for r in rows:
                m = existing.get(r.step)
                if m is None:
                    m = existing[r.step] = Metric(job_id=job.id, step=r.step, values={})
                    s.add(m)
                for k in METRIC_COLUMNS:
                    if getattr(r, k) is not None:
                        setattr(m, k, getattr(r, k))
                m.values = {**(m.values or {}), **r.values}
                m.logged_at = utcnow()

    def upsert_sweep(self, info: SweepInfo) -> int:
        """Create the sweep, or update its definition, grid and bases; returns its id."""
        with self._session.begin() as s:
            row = _upsert(s, Sweep, {"name": info.name}, {"definition_yaml": info.definition_yaml,
                                                          "grid": info.grid, "bases": info.bases})
            s.flush()
            return row.id

    def add_trial(self, sweep_id: int, spec: JobSpec, label: str, cell: dict) -> int:
        """Make a job (kind trial) one of the sweep's trials: its row is created `queued` if it has none; an existing
        job keeps its status and record (a finished trial stays finished). Returns the job id."""
        with self._session.begin() as s:
            job = self._job(s, spec)
            s.flush()
            _upsert(s, SweepTrial, {"sweep_id": sweep_id, "label": label}, {"job_id": job.id, "cell": cell})
            return job.id

    def set_trial_error(self, sweep_id: int, label: str, error: str | None) -> None:
        """Why a trial failed when its job record cannot say (None clears it)."""
        with self._session.begin() as s:
            trial = s.scalar(select(SweepTrial).filter_by(sweep_id=sweep_id, label=label))
            if trial is None:
                raise RegistryError(f"sweep {sweep_id} has no trial '{label}'")
            trial.error = error

    # ------------------------------------------------------------------ reads

    def results(self, job_id: int | None = None, benchmark: str | None = None, outcomes: bool = False,
                ids: list[int] | None = None) -> list[ResultView]:
        """Measurements, oldest first: of one job, of one benchmark, or by id; per-question outcomes only when asked
        (they are the bulk of a row)."""
        from sqlalchemy.orm import defer

        with self._session() as s:
            q = select(Result).order_by(Result.id)
            if not outcomes:
                q = q.options(defer(Result.outcomes))
            if job_id is not None:
                q = q.where(Result.job_id == job_id)
            if benchmark is not None:
                q = q.where(Result.benchmark == benchmark)
            if ids is not None:
                q = q.where(Result.id.in_(ids))
            fields = [f for f in ResultInfo.__dataclass_fields__ if f != "outcomes"]
            return [ResultView(**{f: getattr(r, f) for f in fields}, outcomes=list(r.outcomes) if outcomes else [],
                               id=r.id, job_id=r.job_id, created_at=iso(r.created_at)) for r in s.scalars(q)]

    def metrics(self, job_id: int, after_step: int | None = None) -> list[MetricRow]:
        """Everything the job's runs logged (after `after_step`, when given), one row per step, in step order."""
        with self._session() as s:
            _get(s, job_id)
            q = select(Metric).where(Metric.job_id == job_id).order_by(Metric.step)
            if after_step is not None:
                q = q.where(Metric.step > after_step)
            return [MetricRow(m.step, **{k: getattr(m, k) for k in METRIC_COLUMNS}, values=dict(m.values or {}))
                    for m in s.scalars(q)]

    def sweep(self, ref: str) -> SweepView:
        """A sweep by name or id, with its trials (each with its job's brief view)."""
        with self._session() as s:
            row = s.get(Sweep, int(ref)) if ref.isdigit() else None
            row = row or s.scalar(select(Sweep).filter_by(name=ref))
            if row is None:
                names = ", ".join(s.scalars(select(Sweep.name).order_by(Sweep.id))) or "none yet"
                raise RegistryError(f"no sweep '{ref}' in the registry {self.url_redacted} (sweeps: {names})")
            jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([t.job_id for t in row.trials]))
                                              .options(selectinload(Job.attempts), selectinload(Job.checkpoints)))}
            return SweepView(name=row.name, definition_yaml=row.definition_yaml, grid=list(row.grid or []),
                             bases=list(row.bases or []), id=row.id, created_at=iso(row.created_at),
                             updated_at=iso(row.updated_at),
                             trials=[TrialView(t.label, dict(t.cell or {}), t.error, _view(jobs[t.job_id], brief=False))
                              for t in row.trials])

    def sweeps(self) -> list[SweepInfo]:
        with self._session() as s:
            return [SweepInfo(r.name, r.definition_yaml, list(r.grid or []), list(r.bases or []))
                    for r in s.scalars(select(Sweep).order_by(Sweep.id))]

    def find_by_key(self, spec: JobSpec) -> int | None:
        with self._session() as s:
            return s.scalar(select(Job.id).filter_by(name=spec.name, output_dir=spec.output_dir))

    def candidates(self, ref: str) -> list[tuple[int, str, str]]:
        """(id, name, output dir) of every job `ref` may mean: an id, a name, or an output dir."""
        with self._session() as s:
            if ref.isdigit() and (job := s.get(Job, int(ref))) is not None:
                return [(job.id, job.name, job.output_dir)]
            where = Job.output_dir == os.path.abspath(ref) if os.sep in ref else Job.name == ref
            return [tuple(r) for r in s.execute(select(Job.id, Job.name, Job.output_dir).where(where).order_by(Job.id))]

    def find(self, ref: str) -> int:
        """Job id from an id, a name or an output dir; a name shared by several output dirs must be given as
        an id or a dir."""
        rows = self.candidates(ref)
        if not rows:
            raise RegistryError(f"no job '{ref}' in the registry {self.url_redacted} (see `medscale jobs list`)")
        if len(rows) > 1:
            listing = ", ".join(f"{i} ({d})" for i, _, d in rows)
            raise RegistryError(f"job name '{ref}' is used by {len(rows)} output dirs; give the id: {listing}")
        return rows[0][0]

    def jobs(self, status: str | None = None) -> list[JobView]:
        with self._session() as s:
            query = select(Job).order_by(Job.id).options(selectinload(Job.attempts), selectinload(Job.checkpoints))
            out = [_view(j, brief=True) for j in s.scalars(query)]
        return [j for j in out if status is None or j.status == status]

    def job(self, job_id: int) -> JobView:
        with self._session() as s:
            return _view(_get(s, job_id), brief=False)

    def job_spec(self, job_id: int) -> JobSpec:
        with self._session() as s:
            j = _get(s, job_id)
            return JobSpec(j.name, j.output_dir, j.launcher, j.recipe_yaml, j.fingerprint, kind=j.kind,
                           launcher_options=dict(j.launcher_options or {}))


def _identity(path: Path | None) -> tuple[int, int] | None:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st else None


def _get(s: Session, job_id: int) -> Job:
    job = s.get(Job, job_id)
    if job is None:
        raise RegistryError(f"no job with id {job_id} in the registry (see `medscale jobs list`)")
    return job


def _upsert(s: Session, model, keys: dict, values: dict):
    """Update the row with these keys, or insert it; a concurrent insert of the same keys is not an error."""
    row = s.scalar(select(model).filter_by(**keys))
    if row is None:
        try:
            with s.begin_nested():
                row = model(**keys, **values)
                s.add(row)
            return row
        except IntegrityError:
            row = s.scalar(select(model).filter_by(**keys))
    for k, v in values.items():
        setattr(row, k, v)
    return row


# An attempt's own process started before the attempt did; a live process with its PID that started later than
# this after the attempt is another one that got the PID after wrap-around. The slack covers start times stored to
# the second and the clock's granularity.
PID_START_SLACK = timedelta(seconds=2)


def process_started(pid: int) -> datetime | None:
    """When process `pid` of this host started (naive UTC, from /proc/PID/stat field 22 and the boot time), or None
    where /proc cannot say."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), timezone.utc).replace(tzinfo=None)


def pid_alive(pid: int, started_at: datetime | None = None) -> bool:
    """Whether process `pid` of this host is alive and, given the attempt's `started_at`, is that attempt's own
    process rather than a later one that reuses its PID."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    began = process_started(pid) if started_at is not None else None
    return began is None or began <= started_at + PID_START_SLACK


def attempt_state(a: Attempt, now: datetime | None = None) -> AttemptStatus:
    """The status a person should see: `lost` for a running attempt that stopped beating or whose
    process is gone from this host (a kill -9, a node failure)."""
    status = AttemptStatus(a.status)
    if status != AttemptStatus.RUNNING:
        return status
    now = now or utcnow()
    if now - a.heartbeat_at > timedelta(seconds=4 * heartbeat_interval()):
        return AttemptStatus.LOST
    if a.host == socket.gethostname() and not pid_alive(a.pid, a.started_at):
        return AttemptStatus.LOST
    return AttemptStatus.RUNNING


def _view(j: Job, brief: bool) -> JobView:
    attempts = [AttemptView(number=a.number, status=attempt_state(a), launcher=a.launcher, host=a.host, pid=a.pid,
                            world_size=a.world_size, launcher_ids=dict(a.launcher_ids or {}),
                            resumed_from=a.resumed_from, step=a.step, fingerprint=a.fingerprint,
                            exit_reason=a.exit_reason, recipe_changes=list(a.recipe_changes or []),
                            started_at=iso(a.started_at), heartbeat_at=iso(a.heartbeat_at), ended_at=iso(a.ended_at))
                for a in j.attempts]
    verified = [c for c in j.checkpoints if c.deleted_at is None and c.verified]
    status = JobStatus(j.status)
    if status is JobStatus.RUNNING and attempts and attempts[-1].status is AttemptStatus.LOST:
        status = AttemptStatus.LOST
    latest = verified[-1] if verified else None
    view = JobView(id=j.id, name=j.name, kind=JobKind(j.kind), output_dir=j.output_dir, status=status,
                   launcher=j.launcher, launcher_options=dict(j.launcher_options or {}), fingerprint=j.fingerprint,
                   attempts=len(attempts), step=max((a.step for a in attempts), default=0),
                   latest_checkpoint=latest.path if latest else None,
                   latest_metrics=dict(latest.metrics) if latest else {}, cancel_requested=j.cancel_requested,
                   created_at=iso(j.created_at), updated_at=iso(j.updated_at))
    if not brief:
        view.attempt_list = attempts
        view.checkpoints = [CheckpointView(step=c.step, path=c.path, verified=c.verified, attempt=c.attempt_number,
                                           metrics=dict(c.metrics), size_bytes=c.size_bytes,
                                           created_at=iso(c.created_at), deleted=c.deleted_at is not None)
                            for c in j.checkpoints]
        view.recipe_yaml = j.recipe_yaml
    return view
