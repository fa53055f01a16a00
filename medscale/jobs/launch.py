"""How a job gets started: the entry a launcher runs, the launcher protocol, and what a launcher tells the processes
it starts (through the environment, so every launcher, `accelerate launch` and `ray job submit` alike, works).

A launcher only decides *where* processes start and how many; what they run is an `Entry` it is given, so the same
three launchers (local, SLURM, Ray) run training, an evaluation or a sweep trial. `medscale.jobs` never imports a
launcher module: the CLI hands `ops.resume_job` a name -> launcher map.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from medscale import settings
from medscale.jobs.kinds import ROADS, JobKind
from medscale.registry.records import utcnow

if TYPE_CHECKING:
    from medscale.recipe import Recipe


@dataclass(frozen=True)
class Entry:
    """What every launched process of a job of `kind` runs: `python -m medscale.jobs KIND REF [key=value ...]` (its
    alias, `python -m <module> REF ...`, on the command lines launchers build), or, in-process (one local process,
    a Ray worker), the kind's `run(spec, launch, callbacks)`. The spec is what `load_spec(ref, overrides)` reads:
    a Recipe for train and trial, an EvalSpec for eval."""

    kind: JobKind

    @property
    def module(self) -> str:
        return ROADS[self.kind].alias

    def load(self):
        """The kind's run function (imported now: torch may come with it)."""
        return ROADS[self.kind].runner()

    def load_spec(self, ref: str, overrides: list[str] | None = None):
        return ROADS[self.kind].loader()(ref, list(overrides or []))

    def check(self, spec, *, devices: bool, paths_must_exist: bool = True):
        """The kind's pre-flight report for a launcher's prepare (medscale.preflight.Report)."""
        return ROADS[self.kind].checker()(spec, devices=devices, paths_must_exist=paths_must_exist)

    def passed(self, spec, *, devices: bool):
        """The kind's pre-flight report where it passed; else its PreflightError (every problem at once), raised
        where the check ran: a launcher that starts the job itself carries only a report that passed."""
        return self.check(spec, devices=devices).raise_if_failed()


ENTRIES = {kind.value: Entry(kind) for kind in ROADS}


def entry_for(kind: str | JobKind) -> Entry:
    if str(kind) not in ENTRIES:
        from medscale.errors import UserError

        raise UserError(f"--entry {kind}: unknown entry (known: {', '.join(ENTRIES)}; "
                        f"{', '.join(k.value for k in JobKind if k not in ROADS)} have none yet)")
    return ENTRIES[str(kind)]


@dataclass
class LaunchRequest:
    """A validated recipe, how to name it again on another host (a built-in name or a YAML path), its overrides,
    the entry to run, and the launcher's own options (saved with the job for `jobs resume`)."""

    recipe: "Recipe"
    ref: str
    overrides: list[str]
    entry: Entry
    options: dict = field(default_factory=dict)


class Launcher(Protocol):
    """prepare (validate, resolve options, build the command; no side effects) -> submit (start or queue it; the
    job is registered `queued`) -> wait (its exit code: 0, EXIT_PREEMPTED, EXIT_CANCELLED, ...)."""

    name: str

    def prepare(self, request: LaunchRequest) -> Any: ...

    def submit(self, prepared: Any) -> Any: ...

    def wait(self, handle: Any) -> int: ...


# --------------------------------------------------------------------------- launcher -> process environment

ENV_RAY_JOB_ID = settings.RAY_JOB_ID.name  # the Ray launcher's modules set it


@dataclass
class LaunchInfo:
    """Who started this process, for the attempt row: the launcher's name, its ids and options, and when."""

    launcher: str = "python"
    ids: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    launched_at: datetime | None = None

    @classmethod
    def from_env(cls, env=os.environ) -> "LaunchInfo":
        ids = {}
        slurm = env.get("SLURM_JOB_ID")
        if env.get("SLURM_ARRAY_JOB_ID"):
            slurm = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
        if slurm:
            ids["slurm_job_id"] = slurm
        if ray_job := settings.RAY_JOB_ID.get(env):
            ids["ray_job_id"] = ray_job
        launcher = settings.LAUNCHER.get(env) or (
            "slurm" if slurm else "accelerate" if "ACCELERATE_MIXED_PRECISION" in env else "python")
        try:
            options = json.loads(settings.LAUNCH_OPTIONS.get(env))
        except ValueError:
            options = {}
        return cls(launcher, ids, options if isinstance(options, dict) else {},
                   settings.LAUNCHED_AT.get(env) or utcnow())

    def env(self) -> dict[str, str]:
        """The variables a launcher sets for the processes it starts."""
        return {settings.LAUNCHER.name: self.launcher,
                settings.LAUNCH_OPTIONS.name: json.dumps(self.options, sort_keys=True),
                settings.LAUNCHED_AT.name: (self.launched_at or utcnow()).isoformat()}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def popen_tied(cmd: list[str], env: dict, **kw) -> subprocess.Popen:
    """Start `cmd` in its own session (so a terminal's Ctrl-C reaches it only through us) and tied to this process:
    the kernel kills it when this process dies, however it dies (a launcher's accelerate, a sweep trial's process
    under its Ray actor)."""
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent, **kw)


def register_submitted(request: LaunchRequest, launcher: str) -> None:
    """Record a job a launcher has just queued (sbatch, ray job submit) as `queued`, with its entry kind and the
    launcher's options; a registry that cannot be reached only warns: the first attempt records the job anyway."""
    import logging

    from medscale.registry import JobSpec, Registry, RegistryError

    r = request.recipe
    spec = JobSpec(r.name, os.path.abspath(r.train.output_dir), launcher, r.to_yaml(), r.fingerprint(),
                   kind=request.entry.kind, launcher_options=request.options)
    try:
        with Registry() as reg:
            reg.register(spec)
    except RegistryError as e:
        logging.getLogger("medscale.launcher").warning("%s; the job is recorded when its first attempt starts", e)
