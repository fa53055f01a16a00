"""Errors of the job record: each a UserError (one line, exit 2) that names the job or folder and the way out."""
from __future__ import annotations

from medscale.errors import UserError


class CheckpointError(UserError):
    """A checkpoint cannot be resumed from, or resuming would lose or misdescribe work."""


class JobStateError(UserError):
    """What was asked cannot be done in the job's current state (already running, finished, unknown launcher)."""
