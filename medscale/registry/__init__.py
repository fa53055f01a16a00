"""The job registry: every job, attempt and checkpoint, whichever launcher ran it (see DESIGN.md)."""
from medscale.registry.records import (AttemptInfo, AttemptView, CheckpointInfo, CheckpointView, JobSpec, JobView,
                                       MetricRow, ResultInfo, ResultView, SweepInfo, SweepView, TrialView, utcnow)
from medscale.registry.store import (CancelOutcome, Registry, RegistryError, default_url, heartbeat_interval, pid_alive,
                                     redact, scrub)

__all__ = ["AttemptInfo", "AttemptView", "CancelOutcome", "CheckpointInfo", "CheckpointView", "JobSpec", "JobView",
           "MetricRow", "Registry", "RegistryError", "ResultInfo", "ResultView", "SweepInfo", "SweepView", "TrialView",
           "default_url", "heartbeat_interval", "pid_alive", "redact", "scrub", "utcnow"]
