"""A stopped sweep and a rerun that repairs the registry (issue 20, items 22 and 18): SIGTERM to `medscale sweep run`
reaches its running trial, which saves and ends preempted; a local rerun of a job whose end the registry missed
repairs the job's row before it does anything else. A real process where the point is a signal."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import cli
from medscale.errors import EXIT_PREEMPTED
from medscale.jobs.attempt import Attempt
from medscale.jobs.checkpoint import latest_verified
from medscale.jobs.launch import LaunchInfo
from medscale.jobs.record import RECIPE_FILE, read_journal
from medscale.jobs.resume import plan_start
from medscale.jobs.stop import StopFlag
from medscale.recipe import load_recipe
from medscale.registry import Registry
from medscale.sweep.spec import load_spec, plan_sweep
from medscale.sweep.tune import pending
from test_trust_signals import _registry_away, _status

if os.environ.get("CI"):
    import ray  # noqa: F401  (under CI a missing Ray is a failure, never a skip)


# --------------------------------------------------------------------------- 22. SIGTERM to `medscale sweep run`

def _stepped(out: Path) -> bool:
    """The trial's attempt has trained a step (its heartbeat says so in the registry)."""
    reg = Registry()
    try:
        return any(j.step >= 1 and j.output_dir == str(out) for j in reg.jobs())
    finally:
        reg.close()


@pytest.mark.slow
def test_sigterm_to_sweep_run_stops_its_trial_preempted_with_a_checkpoint(tiny_model_dir, tmp_path, medscale_home):
    """Defect: SIGTERM to the sweep driver ended it, and the Ray shutdown after it killed the running trial: no
    checkpoint, the attempt `lost`. The stop is now passed on to the trial, which saves at its next step and ends
    preempted before the driver exits 75; a rerun of the sweep resumes it from that checkpoint. (Ray's driver took
    SIGTERM for itself too: a stack dump and an abort.)"""
    pytest.importorskip("ray.tune", reason="ray[tune] not installed")
    spec = tmp_path / "stopped.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "stopped", "recipes": [{"recipe": "tiny-demo"}], "output_root": str(tmp_path / "runs"),
        "grid": {"lr": {"only": {"train.learning_rate": 3.0e-3}}},
        "overrides": {"model.path": str(tiny_model_dir), "track.swanlab": None, "train.max_steps": 100_000,
                      "train.logging_steps": 1, "train.save_steps": 100_000, "eval.eval_strategy": "no",
                      "data.max_length": 256, "data.system_prompt": None,
                      "data.sources": [{"path": "${MEDSCALE_DEMO_DATA}/medical_r1_demo.jsonl", "format": "r1-think",
                                        "limit": 40}]}}))
    out = tmp_path / "runs" / "stopped" / "only"
    with open(tmp_path / "stdout", "wb") as stdout, open(tmp_path / "stderr", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "medscale.cli", "sweep", "run", str(spec)], stdout=stdout,
                                stderr=stderr, env={**os.environ, "MEDSCALE_HEARTBEAT_S": "0.2"})
        try:
            while not _stepped(out):
                assert proc.poll() is None, (tmp_path / "stderr").read_text()[-4000:]
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = (tmp_path / "stderr").read_text()
    said = (tmp_path / "stdout").read_text() + err
    assert code == EXIT_PREEMPTED, err[-4000:]
    assert "Traceback" not in err, err[-4000:]
    last = read_journal(out).last
    assert last.status == "preempted" and "with a verified checkpoint" in last.exit_reason, last
    assert latest_verified(out) == out / f"checkpoint-{last.step}"  # saved at the stop (save_steps is far away)
    assert f"trial only: preempted: {last.exit_reason}" in said, said[-4000:]
    # what a rerun of the sweep does with it: runs it again (pending), and its entry resumes from that checkpoint
    reg = Registry()
    try:
        assert [t.label for t in pending(reg, plan_sweep(*load_spec(str(spec))))] == ["only"]
    finally:
        reg.close()
    assert plan_start(load_recipe(str(out / RECIPE_FILE))).resume == out / f"checkpoint-{last.step}"


# --------------------------------------------------------------------------- 18. a rerun repairs a missed end

def test_a_local_rerun_repairs_the_jobs_row_before_it_trains(two_runs, tmp_path, medscale_home):
    """Defect: a job whose last attempt ended while the registry was away stayed `running` (then `lost`) through a
    rerun; only `jobs sync` repaired it. `medscale train` of the same job now reconciles the row from the output dir
    first. The job here has finished, so the rerun trains nothing and writes no attempt: only that repair can change
    its row."""
    out = tmp_path / "trained"
    shutil.copytree(two_runs["lora"], out)
    assert cli("jobs", "sync", str(out)).returncode == 0  # the registry knows the job, as it did when it ran
    same_job = [str(out / RECIPE_FILE), f"train.output_dir={out}"]
    recipe = load_recipe(same_job[0], same_job[1:])
    # its last attempt (the final evaluation and summary, from the final checkpoint) ends while the registry is away
    attempt = Attempt(recipe, LaunchInfo("local"), rank=0, world_size=1, stop=StopFlag()).__enter__()
    with _registry_away(medscale_home / "registry.db"):
        attempt.__exit__(None, None, None)
    assert _status(recipe.name) == "running"  # as the registry last heard
    r = cli("train", *same_job)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(read_journal(out).attempts) == 2  # nothing retrained: the job had finished
    assert _status(recipe.name) == "succeeded"
