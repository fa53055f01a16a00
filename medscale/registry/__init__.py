"""The job registry: every job, attempt and checkpoint, whichever launcher ran it (see DESIGN.md)."""
from medscale.registry.store import (AttemptInfo, CheckpointInfo, JobSpec, Registry, RegistryError, default_url,
                                     heartbeat_interval, pid_alive, redact, scrub)

__all__ = ["AttemptInfo", "CheckpointInfo", "JobSpec", "Registry", "RegistryError", "default_url",
           "heartbeat_interval", "pid_alive", "redact", "scrub"]
