"""The job registry: every job, attempt and checkpoint, whichever launcher ran it (see DESIGN.md)."""
from medscale.registry.records import (AttemptInfo, AttemptView, CheckpointInfo, CheckpointView, JobSpec, JobView,
                                       MetricRow, ResultInfo, ResultView, SweepBase, SweepInfo, SweepView, TrialCell,
                                       TrialView, utcnow)
from medscale.registry.engine import RegistryError, default_url, redact, scrub
from medscale.registry.store import CancelOutcome, Registry, heartbeat_interval, pid_alive

__all__ = ["AttemptInfo", "AttemptView", "CancelOutcome", "CheckpointInfo", "CheckpointView", "JobSpec", "JobView",
           "MetricRow", "Registry", "RegistryError", "ResultInfo", "ResultView", "SweepBase", "SweepInfo", "SweepView",
           "TrialCell", "TrialView", "default_url", "heartbeat_interval", "pid_alive", "redact", "scrub", "utcnow"]
