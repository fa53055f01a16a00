"""Registry tables: a Job is a name + output dir; each execution of it is an Attempt; each save a Checkpoint.

Times are naive UTC everywhere (SQLite has no time zones, and one convention beats two).
The schema is owned by the Alembic migrations beside this file: change a column here, then add a
revision under migrations/versions/ so existing registry files upgrade in place.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from medscale.registry.records import utcnow
from medscale.jobkind import JobKind
from medscale.status import AttemptStatus, JobStatus
from medscale.verdicts import ResultRole


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("name", "output_dir", name="uq_jobs_name_output_dir"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16), default=JobKind.TRAIN.value)
    output_dir: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    launcher: Mapped[str] = mapped_column(String(32))
    launcher_options: Mapped[dict] = mapped_column(JSON, default=dict)
    recipe_yaml: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    attempts: Mapped[list["Attempt"]] = relationship(back_populates="job", order_by="Attempt.number",
                                                     cascade="all, delete-orphan")
    checkpoints: Mapped[list["Checkpoint"]] = relationship(back_populates="job", order_by="Checkpoint.step",
                                                           cascade="all, delete-orphan")


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_attempts_job_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=AttemptStatus.RUNNING.value)
    launcher: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    world_size: Mapped[int] = mapped_column(Integer, default=1)
    launcher_ids: Mapped[dict] = mapped_column(JSON, default=dict)  # slurm_job_id, ray_job_id, ... as the launcher has
    fingerprint: Mapped[str] = mapped_column(String(64))
    resumed_from: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    exit_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    recipe_changes: Mapped[list] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    job: Mapped[Job] = relationship(back_populates="attempts")


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "path", name="uq_checkpoints_job_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt_number: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    job: Mapped[Job] = relationship(back_populates="checkpoints")


class Result(Base):
    """One measurement of one model: a benchmark's accuracy or a control set's loss, with the per-question outcomes
    kept so two results on the same questions can be paired (a verdict is a comparison of two results)."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True, nullable=True)
    checkpoint: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # the checkpoint measured, if one
    model: Mapped[str] = mapped_column(String(200))  # its label: job, job@checkpoint-N, base, or a folder name
    role: Mapped[str] = mapped_column(String(16), default=ResultRole.TUNED.value)  # verdicts.ResultRole's values
    base_path: Mapped[str] = mapped_column(String(1024))
    adapter_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    kind: Mapped[str] = mapped_column(String(16), default="benchmark")  # benchmark | control
    benchmark: Mapped[str] = mapped_column(String(512))  # built-in name or file path
    fingerprint: Mapped[str] = mapped_column(String(64))  # of the questions (files + selection)
    mode: Mapped[str] = mapped_column(String(16))  # letter | option | generate | loss
    shots: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)  # training step, when measured during training
    n: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    figures: Mapped[dict] = mapped_column(JSON, default=dict)  # per subject, skipped, unparseable, ...
    outcomes: Mapped[list] = mapped_column(JSON, default=list)  # per question: id, chosen, correct, scores
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Metric(Base):
    """What a run logged at one optimizer step: the figures reports read in columns, every other scalar in
    `values` (throughput, benchmark accuracies at eval steps, ...). Train and eval logs of one step share the row."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_metrics_job_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    learning_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    grad_norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    epoch: Mapped[float | None] = mapped_column(Float, nullable=True)
    values: Mapped[dict] = mapped_column(JSON, default=dict)
    logged_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Sweep(Base):
    """A sweep definition: its YAML as given, the expanded grid (one entry per trial), the bases it ranks against."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    definition_yaml: Mapped[str] = mapped_column(Text)
    grid: Mapped[list] = mapped_column(JSON, default=list)
    bases: Mapped[list] = mapped_column(JSON, default=list)  # [{label, path}]
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    trials: Mapped[list["SweepTrial"]] = relationship(order_by="SweepTrial.id", cascade="all, delete-orphan")


class SweepTrial(Base):
    """A job (kind `trial`) as one cell of a sweep; `error` holds why it failed when its own record cannot say
    (it never started an attempt, or it trained but its evaluation failed)."""

    __tablename__ = "sweep_trials"
    __table_args__ = (UniqueConstraint("sweep_id", "label", name="uq_sweep_trials_sweep_label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    label: Mapped[str] = mapped_column(String(200))
    cell: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
