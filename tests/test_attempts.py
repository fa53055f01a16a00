"""The attempt lifecycle's pieces without training: launcher identity, stop signals, a registry that
goes away and comes back (or whose file is deleted mid-run), the metrics a checkpoint records."""
from __future__ import annotations

import logging
import os
import signal

import pytest

from medscale.errors import AttemptStopped
from medscale.jobs import stop
from medscale.jobs.attempt import Attempt
from medscale.jobs.client import RunRegistry
from medscale.jobs.launch import LaunchInfo
from medscale.recipe import load_recipe
from medscale.registry import Registry
from medscale.status import AttemptStatus


def test_launch_info_from_the_environment():
    assert LaunchInfo.from_env({}).launcher == "python" and LaunchInfo.from_env({}).ids == {}
    assert LaunchInfo.from_env({"ACCELERATE_MIXED_PRECISION": "no"}).launcher == "accelerate"
    slurm = LaunchInfo.from_env({"SLURM_JOB_ID": "812"})
    assert (slurm.launcher, slurm.ids) == ("slurm", {"slurm_job_id": "812"})
    array = {"SLURM_JOB_ID": "900", "SLURM_ARRAY_JOB_ID": "899", "SLURM_ARRAY_TASK_ID": "3"}
    assert LaunchInfo.from_env(array).ids == {"slurm_job_id": "899_3"}
    ray = LaunchInfo.from_env({"MEDSCALE_LAUNCHER": "ray", "MEDSCALE_RAY_JOB_ID": "raysubmit_1"})
    assert (ray.launcher, ray.ids) == ("ray", {"ray_job_id": "raysubmit_1"})
    sent = LaunchInfo("slurm", options={"partition": "gpu", "nodes": 2})
    back = LaunchInfo.from_env(sent.env())  # what a launcher tells its processes comes back whole
    assert (back.launcher, back.options, back.launched_at) == (sent.launcher, sent.options, back.launched_at)
    assert back.launched_at is not None


@pytest.fixture
def flag():
    """A fresh flag with medscale's handlers, the process's own handlers restored afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    f = stop.StopFlag()
    f.install()
    yield f
    for s, h in saved.items():
        signal.signal(s, h)


def test_sigterm_and_sigusr1_request_a_preemption_and_a_cancel_wins(flag):
    assert flag.code == stop.NONE and flag.status is None
    os.kill(os.getpid(), signal.SIGUSR1)
    assert flag.status is AttemptStatus.PREEMPTED and "SIGUSR1" in flag.reason
    flag.cancel()
    os.kill(os.getpid(), signal.SIGTERM)  # a later preemption does not undo a cancel
    assert flag.status is AttemptStatus.CANCELLED


def test_first_ctrl_c_asks_for_a_save_the_second_stops_at_once(flag, capsys):
    os.kill(os.getpid(), signal.SIGINT)
    assert flag.status is AttemptStatus.CANCELLED and "Ctrl-C again" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


def test_a_stop_before_training_raises_with_the_right_exit_code(flag):
    flag.raise_if_set(0)  # nothing asked: nothing happens
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(AttemptStopped) as e:
        flag.raise_if_set(12)
    assert e.value.exit_code == 75 and e.value.status == "preempted" and not e.value.saved


def test_a_registry_that_comes_back_gets_the_rows_written_while_it_was_away(tmp_path, caplog):
    recipe = load_recipe("tiny-demo", [f"train.output_dir={tmp_path / 'out'}"])
    attempt = Attempt(recipe, LaunchInfo("local"), rank=0, world_size=1, stop=stop.StopFlag(),
                      registry_url="postgresql+psycopg://u:hunter2@127.0.0.1:1/db")
    with caplog.at_level(logging.ERROR, logger="medscale.registry"):
        attempt.__enter__()
    assert "REGISTRY UNREACHABLE" in caplog.text and "hunter2" not in caplog.text
    attempt.step = 7
    good = f"sqlite:///{tmp_path / 'registry.db'}"
    attempt.registry.url, attempt.registry._retry_at = good, 0.0  # the registry is back
    attempt.__exit__(None, None, None)
    reg = Registry(good)
    job = reg.job(reg.find(recipe.name))
    assert job.status == "succeeded" and [a.status for a in job.attempt_list] == ["completed"]
    assert job.attempt_list[0].step == 7


def test_unreachable_registry_calls_are_retried_only_after_a_pause(tmp_path):
    client = RunRegistry("postgresql+psycopg://u:p@127.0.0.1:1/db", str(tmp_path))
    assert client._call("listing", lambda r: r.jobs()) is None
    client.url = f"sqlite:///{tmp_path / 'r.db'}"
    assert client._call("listing", lambda r: r.jobs()) is None, "within RETRY_S it is not tried again (no stall)"


def test_a_registry_file_deleted_mid_run_is_recreated_and_refilled(tmp_path, caplog):
    """Defect: with registry.db deleted under a live run, nothing was logged or restored and `jobs list` showed
    nothing. The run now notices the file is gone, logs it, reopens the path and restores its rows."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    recipe = load_recipe("tiny-demo", [f"train.output_dir={tmp_path / 'out'}"])
    attempt = Attempt(recipe, LaunchInfo("local"), rank=0, world_size=1, stop=stop.StopFlag(), registry_url=url)
    attempt.__enter__()
    for f in tmp_path.glob("registry.db*"):
        f.unlink()
    attempt.step = 5
    with caplog.at_level(logging.ERROR, logger="medscale.registry"):
        attempt.__exit__(None, None, None)
    assert "deleted or replaced" in caplog.text
    reg = Registry(url)
    job = reg.job(reg.find(recipe.name))
    assert [(a.status, a.step) for a in job.attempt_list] == [("completed", 5)]


@pytest.mark.parametrize("step,want", [(3, {"loss": 2.5, "learning_rate": 0.1, "eval_loss": 2.4}),
                                       (4, {"loss": 2.0, "learning_rate": 0.05})])
def test_checkpoint_metrics_take_the_eval_loss_measured_at_that_step(step, want):
    from medscale.train.callbacks import _metrics_at

    history = [{"step": 2, "loss": 3.0, "learning_rate": 0.2}, {"step": 3, "loss": 2.5, "learning_rate": 0.1},
               {"step": 3, "eval_loss": 2.4}, {"step": 4, "loss": 2.0, "learning_rate": 0.05},
               {"step": 5, "loss": 1.0, "learning_rate": 0.0}]
    assert _metrics_at(history, step) == want


@pytest.mark.parametrize("orphaned", [False, True])
def test_a_rank_whose_launcher_died_does_not_record_its_peer_error_as_a_failure(tmp_path, orphaned):
    """Defect (CI): after kill -9 of `medscale train`, rank 1's orphan watchdog exited first and rank 0 failed in
    its next collective ("connection closed by peer"), recording the attempt `failed` before its own watchdog
    fired: the attempt must show `lost`, as the launcher's death left it."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    recipe = load_recipe("tiny-demo", [f"train.output_dir={tmp_path / 'out'}"])
    flag = stop.StopFlag()
    flag.launcher_pid = os.getppid() + (1 if orphaned else 0)  # another pid than the parent: the launcher is gone
    attempt = Attempt(recipe, LaunchInfo("local"), rank=0, world_size=1, stop=flag, registry_url=url)
    attempt.__enter__()
    attempt.__exit__(RuntimeError, RuntimeError("Connection closed by peer"), None)
    reg = Registry(url)
    status = reg.job(reg.find(recipe.name)).attempt_list[0].status
    assert status == ("running" if orphaned else "failed")  # `running` with no heartbeat: `jobs list` says lost
