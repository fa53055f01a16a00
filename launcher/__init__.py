"""Launch backends: each decides where and how many processes start; what they run is the Entry it is given.

Every backend implements `medscale.jobs.launch.Launcher` (prepare -> submit -> wait). `launchers()` is the
name -> launcher map the CLI hands to `medscale.jobs.ops` (which never imports this package): a job recorded with
launcher NAME is resumed by `launchers()[NAME]`.
"""
from __future__ import annotations

from medscale.errors import UserError


class LaunchError(UserError):
    """A backend cannot take this submission: its scheduler or job server missing, unreachable or refusing, an
    option it cannot parse or carry safely, no project to upload. One class for every backend (exit 2)."""


def launchers() -> dict:
    from launcher.local import LocalLauncher
    from launcher.ray import RayLauncher
    from launcher.slurm import SlurmLauncher

    local = LocalLauncher()
    # a job started by hand (`python -m medscale.train`, `accelerate launch`) records `python` / `accelerate`
    return {"local": local, "python": local, "accelerate": local, "slurm": SlurmLauncher(), "ray": RayLauncher()}
