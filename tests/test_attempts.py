"""The attempt lifecycle's pieces without training: launcher identity, stop signals, a registry that
goes away and comes back, the metrics a checkpoint records."""
from __future__ import annotations

import logging
import os
import signal

import pytest

from medscale.recipe import load_recipe
from medscale.registry import Registry
from medscale.train.lifecycle import (STOP_CANCELLED, STOP_NONE, STOP_PREEMPTED, JobTracker, LaunchInfo,
                                      SafeRegistry, StopFlag)


def test_launch_info_from_the_environment():
    assert LaunchInfo.from_env({}) == LaunchInfo("python", None, None)
    assert LaunchInfo.from_env({"ACCELERATE_MIXED_PRECISION": "no"}).launcher == "accelerate"
    assert LaunchInfo.from_env({"SLURM_JOB_ID": "812"}) == LaunchInfo("slurm", "812", None)
    array = {"SLURM_JOB_ID": "900", "SLURM_ARRAY_JOB_ID": "899", "SLURM_ARRAY_TASK_ID": "3"}
    assert LaunchInfo.from_env(array).slurm_job_id == "899_3"
    ray = {"MEDSCALE_LAUNCHER": "ray", "MEDSCALE_RAY_JOB_ID": "raysubmit_1"}
    assert LaunchInfo.from_env(ray) == LaunchInfo("ray", None, "raysubmit_1")


def test_sigterm_and_sigusr1_request_a_preemption_and_a_cancel_wins():
    flag = StopFlag()
    before = signal.getsignal(signal.SIGTERM)
    flag.install()
    try:
        assert flag.code == STOP_NONE
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.code == STOP_PREEMPTED
        flag.cancel()
        os.kill(os.getpid(), signal.SIGTERM)  # a later preemption does not undo a cancel
        assert flag.code == STOP_CANCELLED
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_registry_that_comes_back_gets_the_rows_written_while_it_was_away(tmp_path, caplog):
    recipe = load_recipe("tiny-demo", [f"train.output_dir={tmp_path / 'out'}"])
    tracker = JobTracker(recipe, LaunchInfo("local"), rank=0, world_size=1,
                         registry_url="postgresql+psycopg://u:hunter2@127.0.0.1:1/db")
    with caplog.at_level(logging.ERROR, logger="medscale.lifecycle"):
        tracker.start(None, on_cancel=lambda: None)
    assert "REGISTRY UNREACHABLE" in caplog.text and "hunter2" not in caplog.text
    tracker.step = 7
    tracker.registry.call("upsert_attempt", tracker.spec, tracker.attempt)  # still down: skipped, not raised

    good = f"sqlite:///{tmp_path / 'registry.db'}"
    tracker.registry.url, tracker.registry._retry_at = good, 0.0  # the registry is back
    tracker.end("completed")
    job = Registry(good).job(Registry(good).find(recipe.name))
    assert job["status"] == "succeeded" and [a["status"] for a in job["attempt_list"]] == ["completed"]


def test_unreachable_registry_calls_are_retried_only_after_a_pause(tmp_path):
    safe = SafeRegistry("postgresql+psycopg://u:p@127.0.0.1:1/db", str(tmp_path))
    assert safe.call("jobs") is None
    safe.url = f"sqlite:///{tmp_path / 'r.db'}"
    assert safe.call("jobs") is None, "within RETRY_S the registry is not tried again (no stall per step)"


@pytest.mark.parametrize("step,want", [(3, {"loss": 2.5, "learning_rate": 0.1, "eval_loss": 2.4}),
                                       (4, {"loss": 2.0, "learning_rate": 0.05})])
def test_checkpoint_metrics_take_the_eval_loss_measured_at_that_step(step, want):
    from medscale.train.callbacks import _metrics_at

    history = [{"step": 2, "loss": 3.0, "learning_rate": 0.2}, {"step": 3, "loss": 2.5, "learning_rate": 0.1},
               {"step": 3, "eval_loss": 2.4}, {"step": 4, "loss": 2.0, "learning_rate": 0.05},
               {"step": 5, "loss": 1.0, "learning_rate": 0.0}]
    assert _metrics_at(history, step) == want
