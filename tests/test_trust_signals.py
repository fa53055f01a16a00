"""Stops and records that must hold whatever surrounds a run (issue 20): a stdout pipe that breaks, a stop signal to a
command that is not training, a registry away at the end of a run, a PID reused by another process, a sweep
stopped by SIGTERM. Real processes where the point is a signal or a pipe."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import cli
from medscale.errors import EXIT_CANCELLED, EXIT_PREEMPTED
from medscale.jobs import stop
from medscale.jobs.attempt import Attempt
from medscale.jobs.checkpoint import latest_verified
from medscale.jobs.errors import JobStateError
from medscale.jobs.launch import LaunchInfo
from medscale.jobs.record import Journal
from medscale.jobs.resume import plan_start, refuse_if_running
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


# --------------------------------------------------------------------------- 12. a stdout pipe whose reader goes away

def _start(module: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m MODULE ARGS` with stdout and stderr on one pipe, as under `2>&1 | tee log`."""
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def _wait_draining(cond, proc: subprocess.Popen, what: str) -> bytes:
    """Wait for `cond` while reading the pipe (a full pipe would block the writer); what was read comes back."""
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    while not cond():
        seen += proc.stdout.read() or b""
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}:\n{seen[-4000:].decode()}")
        time.sleep(0.05)
    return seen


def _last_attempt(out: Path) -> dict:
    return json.loads((out / "medscale_job.json").read_text())["attempts"][-1]


def _stepped(out: Path):
    def check():
        reg = Registry()
        try:
            return any(j.step >= 1 for j in reg.jobs())
        finally:
            reg.close()
    return check


def test_ctrl_c_after_the_pipe_reader_is_gone_still_saves_and_exits_4(tiny_model_dir, tmp_path):
    """Defect: `medscale demo | tee log` and Ctrl-C: tee died with the same Ctrl-C, the run's next write to the pipe
    raised BrokenPipeError and the attempt ended `failed` with nothing saved. The reader going away is now no error."""
    out = tmp_path / "piped"
    proc = _start("medscale.cli", "train", "tiny-demo", f"model.path={tiny_model_dir}", f"train.output_dir={out}",
                  "eval.eval_strategy=no", "track.swanlab=null", "train.logging_steps=1", "train.max_steps=200",
                  "train.save_steps=1000", env={"MEDSCALE_HEARTBEAT_S": "0.2"})
    _wait_draining(_stepped(out), proc, "the first step")
    proc.stdout.close()  # the reader is gone: every later write to stdout or stderr meets a broken pipe
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=600) == EXIT_CANCELLED
    last = _last_attempt(out)
    assert last["status"] == "cancelled" and "with a verified checkpoint" in last["exit_reason"], last
    assert latest_verified(out) == out / f"checkpoint-{last['step']}"


# --------------------------------------------------------------------------- 17. stop signals outside training

@pytest.fixture
def trained(two_runs, tmp_path) -> Path:
    """A copy of a shared trained job (6 steps, verified checkpoints) that a test may write beside."""
    out = tmp_path / "trained"
    shutil.copytree(two_runs["lora"], out)
    return out


def test_sigterm_to_the_eval_entry_ends_it_preempted_with_exit_75(trained, eval_data, tiny_model_dir):
    """Defect: `python -m medscale.eval` (what SLURM and Ray run) ignored SIGTERM and ran to the end, so a preempted
    evaluation was killed at the grace period's end, never requeued. Now it stops at once: exit 75, its attempt
    preempted, no report."""
    proc = _start("medscale.eval", "tiny-demo", "name=run-lora", f"model.path={tiny_model_dir}",
                  f"train.output_dir={trained}", f"eval.benchmarks=['{eval_data['mcq']}']")
    record = trained / "eval" / "medscale_job.json"
    _wait_draining(record.is_file, proc, "the evaluation's attempt")
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == EXIT_PREEMPTED, log[-4000:]
    assert "Traceback" not in log and "stopped at once (preempted)" in log, log[-4000:]
    last = _last_attempt(trained / "eval")
    assert last["status"] == "preempted" and "SIGTERM" in last["exit_reason"], last
    assert not (trained / "eval" / "eval.json").exists()


def _handles_sigterm(pid: int) -> bool:
    """The process has installed its own SIGTERM handler (the kernel's mask of caught signals)."""
    mask = Path(f"/proc/{pid}/status").read_text().split("SigCgt:")[1].split()[0]
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("command, sig, code", [("eval", signal.SIGTERM, EXIT_PREEMPTED),
                                                ("export", signal.SIGINT, EXIT_CANCELLED)])
def test_a_stop_signal_ends_any_command_with_its_exit_code(trained, eval_data, command, sig, code):
    """Defect: the CLI installed training's handler for every command: `eval` and `export` ran to the end and exited 0
    after SIGTERM or a single Ctrl-C."""
    args = {"eval": ["eval", str(trained), "--bench", str(eval_data["mcq"])],
            "export": ["export", str(trained), "--merge", "--out", str(trained.parent / "merged")]}[command]
    proc = _start("medscale.cli", *args)
    _wait_draining(lambda: _handles_sigterm(proc.pid), proc, "the stop handler")
    proc.send_signal(sig)
    log = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == code, log[-4000:]
    assert "Traceback" not in log and "stopped at once" in log, log[-4000:]
    assert not (trained.parent / "merged").exists()


# --------------------------------------------------------------------------- 18. a registry away at the end of a run

@contextlib.contextmanager
def _registry_away(db: Path):
    """The SQLite registry file is unreachable (a folder stands at its path) for the duration, then back as it was."""
    aside = db.with_name(db.name + ".away")
    db.rename(aside)
    db.mkdir()
    try:
        yield
    finally:
        db.rmdir()
        aside.rename(db)


def _status(name: str) -> str:
    reg = Registry()
    try:
        return next(j.status for j in reg.jobs() if j.name == name)
    finally:
        reg.close()


def _attempt(tmp_path, name: str) -> Attempt:
    recipe = load_recipe("tiny-demo", [f"name={name}", f"train.output_dir={tmp_path / name}"])
    return Attempt(recipe, LaunchInfo("local"), rank=0, world_size=1, stop=stop.StopFlag())


def test_an_outage_just_before_the_end_does_not_leave_a_finished_job_lost(tmp_path, medscale_home, caplog):
    """Defect: after one failed write every registry call was skipped for 60 s, the final "completed" included:
    the finished job stayed running, then lost, for good."""
    with _attempt(tmp_path, "brief-outage") as attempt:
        with _registry_away(medscale_home / "registry.db"):
            attempt.metrics_logged(1, {"loss": 1.0})
        assert "REGISTRY UNREACHABLE" in caplog.text
    assert _status("brief-outage") == "succeeded"


def test_jobs_show_and_list_repair_a_job_whose_end_the_registry_missed(tmp_path, medscale_home):
    """Defect: only `jobs sync` repaired it. The output dir is the source of truth: show and list reconcile."""
    attempts = [_attempt(tmp_path, name).__enter__() for name in ("shown", "listed")]
    with _registry_away(medscale_home / "registry.db"):
        for attempt in attempts:
            attempt.__exit__(None, None, None)  # they end while it is away, through every retry
    assert _status("shown") == _status("listed") == "running"  # as the registry last heard
    r = cli("jobs", "show", "shown")
    assert r.returncode == 0 and "succeeded" in r.stdout, r.stdout + r.stderr
    assert _status("listed") == "running"  # show touched only its own job
    r = cli("jobs", "list")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _status("listed") == "succeeded"
