"""The registry store: short transactions over SQLAlchemy, SQLite by default, any URL by env.

Every write is an idempotent upsert keyed by (job name, output dir), attempt number and checkpoint
path, so a run that could not reach the registry, `medscale jobs sync` and a concurrent writer all
converge on the same rows. SQLite runs in WAL mode with a busy timeout and takes its write lock at
BEGIN (a deferred transaction that later writes can fail with "database is locked" without waiting).
"""
from __future__ import annotations

from medscale.errors import UserError

import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, event, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from medscale import medscale_home
from medscale.registry.models import Attempt, Checkpoint, Job, utcnow

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x6D656473  # any constant: serializes concurrent first-time migrations on PostgreSQL

# attempt status -> job status
_JOB_STATUS = {"running": "running", "completed": "succeeded", "failed": "failed", "preempted": "preempted",
               "cancelled": "cancelled", "lost": "failed"}


class RegistryError(UserError):
    """The registry cannot answer (unreachable, newer schema, unknown job); the message says which."""


def heartbeat_interval() -> float:
    """Seconds between rank-0 heartbeats; an attempt silent for 4 intervals shows as `lost`."""
    return float(os.environ.get("MEDSCALE_HEARTBEAT_S", "30"))


def default_url() -> str:
    return os.environ.get("MEDSCALE_REGISTRY_URL") or f"sqlite:///{medscale_home() / 'registry.db'}"


def redact(url: str) -> str:
    """The URL as it may be logged: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: say nothing of it rather than risk printing a secret
        return "<unparseable registry URL>"


@dataclass
class JobSpec:
    name: str
    output_dir: str
    launcher: str
    recipe_yaml: str
    fingerprint: str


@dataclass
class AttemptInfo:
    number: int
    launcher: str
    host: str
    pid: int
    fingerprint: str
    world_size: int = 1
    slurm_job_id: str | None = None
    ray_job_id: str | None = None
    resumed_from: str | None = None
    status: str = "running"
    step: int = 0
    exit_reason: str | None = None
    started_at: datetime = field(default_factory=utcnow)
    ended_at: datetime | None = None


@dataclass
class CheckpointInfo:
    step: int
    path: str
    verified: bool
    attempt_number: int
    metrics: dict = field(default_factory=dict)
    size_bytes: int = 0
    created_at: datetime = field(default_factory=utcnow)


def _sqlite_engine(url) -> Engine:
    path = url.database
    if path and path != ":memory:":
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # pysqlite must not open transactions itself; BEGIN below does
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=60000")  # before WAL: switching the journal mode needs the lock
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_engine(url: str, connect_timeout: float = 5) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return _sqlite_engine(u)
    args = {"connect_timeout": int(connect_timeout)} if u.get_backend_name() == "postgresql" else {}
    return create_engine(u, pool_pre_ping=True, connect_args=args)


def _migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision, once, under a lock; refuse a schema newer than this code."""
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE already serializes writers
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        current = MigrationContext.configure(conn).get_current_revision()
        if current == head:
            return
        known = {rev.revision for rev in script.walk_revisions()}
        if current is not None and current not in known:
            raise RegistryError(f"the registry's schema revision {current} is newer than this medscale knows "
                                f"(head {head}): upgrade medscale")
        from alembic import command

        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Registry:
    """Jobs, attempts and checkpoints. Construct once per process; every method is one short transaction."""

    def __init__(self, url: str | None = None, connect_timeout: float = 5):
        self.url = url or default_url()
        self.url_redacted = redact(self.url)
        try:
            self.engine = make_engine(self.url, connect_timeout)
            _migrate(self.engine)
        except RegistryError:
            raise
        except Exception as e:
            raise RegistryError(f"registry {self.url_redacted} unreachable: {type(e).__name__}: "
                                f"{scrub(str(e), self.url)}") from None
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ writes (global rank 0, sync, CLI)

    def _job(self, s: Session, spec: JobSpec, refresh: bool = False) -> Job:
        keys = {"name": spec.name, "output_dir": spec.output_dir}
        job = s.scalar(select(Job).filter_by(**keys))
        if job is None or refresh:
            job = _upsert(s, Job, keys, {"launcher": spec.launcher, "recipe_yaml": spec.recipe_yaml,
                                         "fingerprint": spec.fingerprint})
        return job

    def upsert_attempt(self, spec: JobSpec, a: AttemptInfo, current: bool = True, beat: bool = True) -> bool:
        """Create or update attempt `a.number`; `beat` refreshes its heartbeat (the live run does, `jobs sync` does
        not: replaying a journal must not make a dead attempt look alive). When it is the job's current attempt
        the job's status follows it. Returns whether a cancel of the job was requested."""
        values = {k: v for k, v in asdict(a).items() if k != "number"}
        if a.status != "running":
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
                if new and a.status == "running":
                    job.cancel_requested = False  # starting or resuming a job is a fresh request to run it
                    for old in s.scalars(select(Attempt).where(Attempt.job_id == job.id, Attempt.number < a.number,
                                                               Attempt.status == "running")):
                        old.status = "lost"  # it never ended: it was killed
                        old.exit_reason = old.exit_reason or f"never ended; attempt {a.number} started after it"
                cancelled = job.cancel_requested and a.status not in ("running", "completed")
                job.status = "cancelled" if cancelled else _JOB_STATUS[a.status]
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

    def request_cancel(self, job_id: int) -> None:
        """A running attempt sees this at its next heartbeat, saves and stops; a stopped job is marked cancelled."""
        with self._session.begin() as s:
            job = _get(s, job_id)
            job.cancel_requested = True
            if not (job.attempts and attempt_state(job.attempts[-1]) == "running"):
                job.status = "cancelled"

    # ------------------------------------------------------------------ reads

    def find_by_key(self, spec: JobSpec) -> int | None:
        with self._session() as s:
            return s.scalar(select(Job.id).filter_by(name=spec.name, output_dir=spec.output_dir))

    def find(self, ref: str) -> int:
        """Job id from an id, a name or an output dir; a name shared by several output dirs must be given as
        an id or a dir."""
        with self._session() as s:
            if ref.isdigit() and s.get(Job, int(ref)) is not None:
                return int(ref)
            where = Job.output_dir == os.path.abspath(ref) if os.sep in ref else Job.name == ref
            rows = s.execute(select(Job.id, Job.output_dir).where(where).order_by(Job.id)).all()
        if not rows:
            raise RegistryError(f"no job '{ref}' in the registry {self.url_redacted} (see `medscale jobs list`)")
        if len(rows) > 1:
            listing = ", ".join(f"{i} ({d})" for i, d in rows)
            raise RegistryError(f"job name '{ref}' is used by {len(rows)} output dirs; give the id: {listing}")
        return rows[0][0]

    def jobs(self, status: str | None = None) -> list[dict]:
        with self._session() as s:
            query = select(Job).order_by(Job.id).options(selectinload(Job.attempts), selectinload(Job.checkpoints))
            out = [_job_dict(j, brief=True) for j in s.scalars(query)]
        return [j for j in out if status is None or j["status"] == status]

    def job(self, job_id: int) -> dict:
        with self._session() as s:
            return _job_dict(_get(s, job_id), brief=False)

    def job_spec(self, job_id: int) -> JobSpec:
        with self._session() as s:
            j = _get(s, job_id)
            return JobSpec(j.name, j.output_dir, j.launcher, j.recipe_yaml, j.fingerprint)


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


def scrub(text: str, url: str) -> str:
    """Drivers sometimes echo the connection string; never let its password through."""
    try:
        pw = make_url(url).password
    except Exception:
        return "(detail withheld)"
    return text.replace(pw, "***") if pw else text


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def attempt_state(a: Attempt, now: datetime | None = None) -> str:
    """The status a person should see: `lost` for a running attempt that stopped beating or whose
    process is gone from this host (a kill -9, a node failure)."""
    if a.status != "running":
        return a.status
    now = now or utcnow()
    if now - a.heartbeat_at > timedelta(seconds=4 * heartbeat_interval()):
        return "lost"
    if a.host == socket.gethostname() and not pid_alive(a.pid):
        return "lost"
    return "running"


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") + "Z" if t else None


def _job_dict(j: Job, brief: bool) -> dict:
    attempts = [{"number": a.number, "status": attempt_state(a), "launcher": a.launcher, "host": a.host,
                 "pid": a.pid, "world_size": a.world_size, "slurm_job_id": a.slurm_job_id,
                 "ray_job_id": a.ray_job_id, "resumed_from": a.resumed_from, "step": a.step,
                 "fingerprint": a.fingerprint, "exit_reason": a.exit_reason, "started_at": _iso(a.started_at),
                 "heartbeat_at": _iso(a.heartbeat_at), "ended_at": _iso(a.ended_at)} for a in j.attempts]
    live = [c for c in j.checkpoints if c.deleted_at is None]
    verified = [c for c in live if c.verified]
    status = j.status
    if status == "running" and attempts and attempts[-1]["status"] == "lost":
        status = "lost"
    latest = verified[-1] if verified else None
    out = {"id": j.id, "name": j.name, "output_dir": j.output_dir, "status": status, "launcher": j.launcher,
           "fingerprint": j.fingerprint, "attempts": len(attempts),
           "step": max((a["step"] for a in attempts), default=0),
           "latest_checkpoint": latest.path if latest else None,
           "latest_metrics": latest.metrics if latest else {},
           "cancel_requested": j.cancel_requested,
           "created_at": _iso(j.created_at), "updated_at": _iso(j.updated_at)}
    if not brief:
        out["attempt_list"] = attempts
        out["checkpoints"] = [{"step": c.step, "path": c.path, "verified": c.verified, "attempt": c.attempt_number,
                               "metrics": c.metrics, "size_bytes": c.size_bytes, "created_at": _iso(c.created_at),
                               "deleted": c.deleted_at is not None} for c in j.checkpoints]
        out["recipe_yaml"] = j.recipe_yaml
    return out
