"""Job and attempt statuses (DESIGN.md, "Registry semantics"): the one definition every module compares against.
A leaf of its own: the job record writes them and the registry stores them, so neither package imports the other
for them.

`str` enums: they are stored, printed and compared as their plain values ("running" == AttemptStatus.RUNNING).
"""
from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    QUEUED = "queued"  # submitted (sbatch, ray job submit), no attempt started yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PREEMPTED = "preempted"  # stopped with a verified checkpoint; a requeue or `jobs resume` continues it
    CANCELLED = "cancelled"
    STOPPED_EARLY = "stopped_early"  # a sweep scheduler ended it on purpose; never resumed

    def __str__(self) -> str:
        return self.value


class AttemptStatus(str, Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PREEMPTED = "preempted"
    CANCELLED = "cancelled"
    LOST = "lost"  # never ended: killed, or its node died (computed from a stale heartbeat or a gone pid)

    def __str__(self) -> str:
        return self.value

    @property
    def ended(self) -> bool:
        return self is not AttemptStatus.RUNNING

    def job_status(self) -> JobStatus:
        """What the job is when this is its newest attempt."""
        return {AttemptStatus.RUNNING: JobStatus.RUNNING, AttemptStatus.COMPLETED: JobStatus.SUCCEEDED,
                AttemptStatus.FAILED: JobStatus.FAILED, AttemptStatus.PREEMPTED: JobStatus.PREEMPTED,
                AttemptStatus.CANCELLED: JobStatus.CANCELLED, AttemptStatus.LOST: JobStatus.FAILED}[self]


# Statuses a person can filter `jobs list` on: every job status, plus `lost` (a running job whose attempt went silent).
VISIBLE_JOB_STATUSES = (*(s.value for s in JobStatus), AttemptStatus.LOST.value)
