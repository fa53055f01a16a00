"""A stopped sweep (issue 20, item 22): SIGTERM to `medscale sweep run` reaches its running trial, which saves and
ends preempted. A real process: the point is a signal."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medscale.errors import EXIT_PREEMPTED
from medscale.jobs.checkpoint import latest_verified
from medscale.jobs.record import RECIPE_FILE, read_journal
from medscale.jobs.resume import plan_start
from medscale.recipe import load_recipe
from medscale.registry import Registry
from medscale.sweep.spec import load_spec, plan_sweep
from medscale.sweep.tune import pending

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

