"""Launching: the accelerate command line, the local launcher's protocol (prepare -> submit -> wait), real
2-process DDP on CPU (gloo), and the demo command."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, cli, run_cli
from launcher.local import LocalLauncher, accelerate_command
from launcher.process import Outcome
from medscale.jobs.launch import LaunchRequest, entry_for
from medscale.recipe import load_recipe


def test_accelerate_command_uses_recipe_process_count_and_config():
    r = load_recipe("tiny-demo", ["dist.num_processes=2", "dist.config=cpu_ddp"])
    cmd = accelerate_command(r, "tiny-demo", ["dist.num_processes=2", "dist.config=cpu_ddp"])
    assert cmd[:3] == [sys.executable, "-m", "launcher.accelerate_main"]
    assert cmd[cmd.index("--config_file") + 1] == str(REPO / "cluster" / "accelerate" / "cpu_ddp.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[-5:] == ["-m", "medscale.train", "tiny-demo", "dist.num_processes=2", "dist.config=cpu_ddp"]


@pytest.mark.parametrize("code", [2, 75])
def test_a_failed_worker_ends_in_one_line_and_its_exit_code(tmp_path, code):
    """Defect: a worker that failed (and said why in one line) was followed by torchrun's ChildFailedError traceback
    of the launcher, about 40 lines, and exit 1. A stop (75) is the workers' to report: no line is added."""
    (tmp_path / "failing_worker.py").write_text(
        "import os, sys, time\n"
        f"if os.environ['RANK'] == '1':\n    print('medscale: error: boom', file=sys.stderr)\n    sys.exit({code})\n"
        "time.sleep(120)\n")
    cmd = accelerate_command(load_recipe("tiny-demo", ["dist.num_processes=2"]), "tiny-demo", [], "failing_worker")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "5"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == code, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "ChildFailedError" not in p.stderr, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("medscale:")]
    said = ["medscale: error: boom"]
    if code == 2:
        said.append("medscale: worker rank 1 exited with code 2 (its error is above); the others were stopped")
    assert lines == said, p.stderr[-3000:]


def test_launch_hands_multi_process_runs_to_the_runner(tmp_path):
    seen = []
    over = ["dist.num_processes=2", f"train.output_dir={tmp_path / 'out'}"]
    launcher = LocalLauncher(runner=lambda cmd, env: seen.append((cmd, env)) or Outcome(7))
    request = LaunchRequest(load_recipe("tiny-demo", over), "tiny-demo", over, entry_for("train"), {"note": "x"})
    assert launcher.wait(launcher.submit(launcher.prepare(request))) == 7
    cmd, env = seen[0]
    assert cmd[-4:-2] == ["medscale.train", "tiny-demo"] and env["MEDSCALE_LAUNCHER"] == "local"
    assert env["MEDSCALE_LAUNCH_OPTIONS"] == '{"note": "x"}' and env["MEDSCALE_LAUNCHED_AT"]


def test_the_in_process_run_gets_the_launch_prepare_read_and_prepare_raises_a_failed_check(
        tiny_model_dir, tmp_path, monkeypatch, medscale_home):
    """prepare reads the launch once, as its processes read it from the env, and the one process run here gets
    that LaunchInfo (wait read it from the env again); a failed pre-flight is raised by prepare, where it ran
    (submit re-read the report). The kind's run records what it was handed: what is checked is the launcher."""
    import medscale.train.run as train_run
    from medscale.jobs.launch import LaunchInfo
    from medscale.jobs.runplan import RunPlan
    from medscale.preflight import PreflightError

    got = []
    monkeypatch.setattr(train_run, "run", lambda recipe, launch: got.append(launch))
    over = [f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path / 'out'}", "track.swanlab=null"]
    launcher = LocalLauncher()
    plan = launcher.prepare(LaunchRequest(load_recipe("tiny-demo", over), "tiny-demo", over, entry_for("train"),
                                          {"note": "x"}))
    assert plan.launch == LaunchInfo.from_env(plan.env) and plan.launch.options == {"note": "x"}
    assert launcher.wait(launcher.submit(plan)) == 0
    assert len(got) == 1 and got[0] is plan.launch
    assert RunPlan.load(tmp_path / "out").launch == plan.launch.launched_at.isoformat()
    bad = [f"model.path={tmp_path / 'missing'}", "model.tiny=null", f"train.output_dir={tmp_path / 'bad'}"]
    with pytest.raises(PreflightError, match="model.path"):
        launcher.prepare(LaunchRequest(load_recipe("tiny-demo", bad), "tiny-demo", bad, entry_for("train")))


def test_unknown_accelerate_config_is_a_recipe_error():
    p = cli("train", "tiny-demo", "dist.num_processes=2", "dist.config=nope")
    assert p.returncode == 2 and "dist.config" in p.stderr and "cpu_ddp" in p.stderr


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path, tiny_model_dir):
    """Both ranks step (a silent world_size 1 would show as one entry), only rank 0 writes. The launcher's
    pre-flight plans memory and tokenizes once; the ranks read its RunPlan and do neither (tests/test_runplan.py)."""
    from test_runplan import counted_in_every_process

    out = tmp_path / "ddp"
    env, calls = counted_in_every_process(tmp_path)
    p = run_cli("train", "tiny-demo", f"model.path={tiny_model_dir}", f"train.output_dir={out}",
                "dist.num_processes=2", "train.max_steps=6", "train.save_steps=3", "eval.eval_steps=3",
                "train.logging_steps=1", "track.swanlab.mode=offline", env=env, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "launcher.accelerate_main" in p.stdout
    assert sorted(calls.read_text().splitlines()) == ["launcher _build", "launcher check", "launcher decide"]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_per_rank"] == [6, 6]
    assert summary["loss_last"] < summary["loss_first"]
    # samples/s counts both ranks' batches: 8 per device x 2 processes per step
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and (out / "checkpoint-6" / "adapter_model.safetensors").is_file()
    runs = list((out / "swanlog").glob("run-*"))
    assert len(runs) == 1, f"tracking must run on rank 0 only, found {runs}"
    assert not list(out.glob("**/.*.tmp*")), "no temporary files left behind"


@pytest.mark.slow
def test_demo_command(medscale_home):
    """`medscale demo` as README shows it, over 80 of its 138 steps (its recipe's cosine schedule, saves and evals
    as they come): the loss falls from ~8.1 to ~5.6 there, the whole run's ~4.7 is not needed to see it fall."""
    p = run_cli("demo", "train.max_steps=80", timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "medscale demo finished" in p.stdout and "run record" in p.stdout
    run_dir = medscale_home / "runs" / "tiny-demo"
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["loss_last"] < summary["loss_first"] - 2.0, "the loss visibly falls"
    assert (medscale_home / "models" / "tiny-qwen3" / "model.safetensors").is_file()
    assert (run_dir / "adapter_model.safetensors").is_file() and (run_dir / "loss.png").is_file()
    assert list((run_dir / "swanlog").glob("run-*")), "SwanLab logged offline"
    assert "%|" in p.stderr, "a progress bar is shown"
