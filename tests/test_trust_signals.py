"""Stops and records that must hold whatever surrounds a run (issue 20): a stdout pipe that breaks, a stop signal to a
command that is not training, a registry away at the end of a run, a PID reused by another process, a sweep
stopped by SIGTERM. Real processes where the point is a signal or a pipe."""
from __future__ import annotations

import socket
import subprocess
from datetime import timedelta

import pytest

from conftest import cli
from medscale.jobs.attempt import refuse_if_running
from medscale.jobs.errors import JobStateError
from medscale.jobs.record import Journal
from medscale.jobs.resume import plan_start
from medscale.recipe import load_recipe
from medscale.registry import AttemptInfo, Registry, utcnow


# --------------------------------------------------------------------------- 19. PID reuse

def _record_running_attempt(out, pid: int, started_at):
    """A job whose last attempt is recorded running as `pid` of this host, in its journal and in the registry."""
    recipe = load_recipe("tiny-demo", [f"train.output_dir={out}"])
    out.mkdir(parents=True)
    info = AttemptInfo(number=1, launcher="local", host=socket.gethostname(), pid=pid,
                       fingerprint=recipe.fingerprint(), started_at=started_at)
    journal = Journal(recipe.name, str(out), fingerprint=recipe.fingerprint(), attempts=[info])
    journal.save()
    reg = Registry()
    try:
        reg.upsert_attempt(journal.spec(recipe.to_yaml()), info)
    finally:
        reg.close()
    return recipe


def test_a_live_process_that_reuses_the_recorded_pid_neither_blocks_a_restart_nor_takes_a_cancel(tmp_path):
    """Defect: only the recorded PID's liveness was asked, so an unrelated process that got the PID after wrap-around
    kept `medscale train` refusing and `jobs cancel` promising a checkpoint. The process must also have started
    before the attempt did."""
    impostor = subprocess.Popen(["sleep", "600"])  # started now: an hour after the recorded attempt
    try:
        recipe = _record_running_attempt(tmp_path / "reused", impostor.pid, utcnow() - timedelta(hours=1))
        assert plan_start(recipe).resume is None  # train's start: no "already running"
        r = cli("jobs", "cancel", recipe.name)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "will save a checkpoint" not in r.stdout and "is lost" in r.stdout, r.stdout
    finally:
        impostor.kill()
        impostor.wait()


def test_the_attempts_own_live_process_still_blocks_a_second_run(tmp_path):
    """The check above still refuses a second run beside a live one: a process that started before its attempt."""
    runner = subprocess.Popen(["sleep", "600"])
    try:
        recipe = _record_running_attempt(tmp_path / "live", runner.pid, utcnow() + timedelta(seconds=5))
        with pytest.raises(JobStateError, match="already running"):
            refuse_if_running(tmp_path / "live", recipe.name)
        r = cli("jobs", "cancel", recipe.name)
        assert r.returncode == 0 and "will save a checkpoint" in r.stdout, r.stdout + r.stderr
    finally:
        runner.kill()
        runner.wait()
