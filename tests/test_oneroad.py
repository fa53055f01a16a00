"""One road for sweep trials and evaluations (issue 21, deliverable 1): a sweep has one driver that submits its trials
through a launcher (Ray Tune, each trial through the local launcher on its node; or one SLURM array), and an
evaluation runs on real SLURM and on a real Ray cluster like training does. A sweep trial killed with SIGKILL mid-run
continues, on the sweep's rerun, from its verified checkpoint, with both attempts in the registry.
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import cli
from medscale.registry import Registry
from test_slurm import _job_info, _log, _wait_job, cluster, slurm_env  # noqa: F401  (the one-node SLURM fixture)

STEPS = {"track.swanlab": None, "train.max_steps": 3, "train.save_steps": 2, "train.logging_steps": 1,
         "eval.eval_strategy": "no", "data.eval_size": 0, "data.max_length": 256, "data.system_prompt": None,
         "train.warmup_ratio": 0}


def _sweep(tmp_path: Path, model: Path, lrs: dict) -> Path:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "oneroad", "recipes": [{"recipe": "tiny-demo"}], "output_root": str(tmp_path / "runs"),
        "grid": {"lr": {label: {"train.learning_rate": lr} for label, lr in lrs.items()}},
        "overrides": {**STEPS, "model.path": str(model),
                      "data.sources": [{"path": "${MEDSCALE_DEMO_DATA}/medical_r1_demo.jsonl", "format": "r1-think",
                                        "limit": 12}]}}))
    return spec


def _job(ref: str) -> dict:
    with Registry() as reg:
        return reg.job(reg.find(ref)).to_dict()


# --------------------------------------------------------------------------- the driver's SLURM array (no cluster)

def test_a_sweep_for_slurm_is_one_array_whose_tasks_run_the_trial_entry_and_a_dry_run_writes_nothing(
        tiny_model_dir, tmp_path, medscale_home):
    spec = _sweep(tmp_path, tiny_model_dir, {"low": 3.0e-3, "high": 1.0e-2})
    r = cli("sweep", "run", str(spec), "--launcher", "slurm", "--launch-opt", "gpus_per_node=0", "--launch-opt",
            "partition=cpu", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    script = r.stdout
    assert "#SBATCH --array=0-1" in script and "#SBATCH --partition=cpu" in script
    assert "#SBATCH --job-name=oneroad" in script and "export MEDSCALE_ENTRY=trial" in script
    tasks = dict(re.findall(r"^    (\d+)\) medscale_run (.*) ;;$", script, re.M))
    plan = json.loads(cli("sweep", "run", str(spec), "--dry-run", "--json").stdout)
    for i, trial in enumerate(plan["trials"]):  # task i runs trial i: its recipe, name and output dir
        args = shlex.split(tasks[str(i)])
        assert args[0] == "tiny-demo" and f"name={trial['job']}" in args
        assert f"train.output_dir={trial['output_dir']}" in args
    assert not (tmp_path / "runs").exists() and not (medscale_home / "registry.db").exists()


def test_a_sweep_launcher_that_does_not_exist_or_options_of_another_launcher_are_one_line(tiny_model_dir, tmp_path):
    spec = _sweep(tmp_path, tiny_model_dir, {"only": 3.0e-3})
    r = cli("sweep", "run", str(spec), "--launcher", "pbs")
    assert r.returncode == 2 and "--launcher pbs" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("sweep", "run", str(spec), "--launch-opt", "partition=cpu")
    assert r.returncode == 2 and "only --launcher slurm" in r.stderr
    r = cli("sweep", "run", str(spec), "--launcher", "slurm", "--asha")
    assert r.returncode == 2 and "--asha/--no-asha: Ray Tune's options" in r.stderr


def test_a_sweep_run_again_while_its_array_still_waits_in_the_queue_is_refused_not_run_twice(tiny_model_dir,
                                                                                              tmp_path):
    """A queued array task has no attempt yet, so nothing in its output dir says it is coming: the registry holds
    the SLURM job each trial waits in, and submitting the trial again while that job is still queued is one line
    (it would otherwise run twice into one output dir). Once SLURM no longer lists it, the rerun submits it."""
    from dataclasses import replace

    from launcher import LaunchError
    from launcher.slurm import SlurmLauncher
    from medscale.sweep.spec import load_spec, plan_sweep
    from medscale.sweep.tune import AsArray, run_sweep

    plan = plan_sweep(*load_spec(str(_sweep(tmp_path, tiny_model_dir, {"only": 3.0e-3}))))
    queue = {"77_0": "PENDING"}
    submitted = []

    def sbatch(cmd, script):
        submitted.append(script)
        return "77"

    backend = SlurmLauncher(executor=sbatch, state=queue.get)

    def submit(requests, name):
        tasks = [replace(r, options={**r.options, "gpus_per_node": "0"}) for r in requests]
        return backend.submit(backend.prepare_array(tasks, name)).job_id

    first = run_sweep(plan, AsArray(submit), echo=lambda s: None)
    assert [t.status for t in first.trials] == ["queued"] and len(submitted) == 1
    assert _job("oneroad.only")["launcher_options"]["queued_as"] == "77_0"
    with pytest.raises(LaunchError, match="SLURM job 77_0 of oneroad.only is still PENDING"):
        run_sweep(plan, AsArray(submit), echo=lambda s: None)
    assert len(submitted) == 1
    del queue["77_0"]  # cancelled, or gone from SLURM's lists: the rerun submits it
    run_sweep(plan, AsArray(submit), echo=lambda s: None)
    assert len(submitted) == 2


# --------------------------------------------------------------------------- real SLURM (a one-node cluster)

def _array(spec: Path, env: dict | None = None) -> str:
    r = cli("sweep", "run", str(spec), "--launcher", "slurm", "--launch-opt", "gpus_per_node=0", "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)["array_job"]


@pytest.mark.slow
def test_a_sweep_trial_killed_with_sigkill_continues_from_its_verified_checkpoint_on_the_rerun(
        cluster, tiny_model_dir, tmp_path):  # noqa: F811
    """The SLURM array runs the trial; it is killed with SIGKILL right after its checkpoint at step 2 was verified
    (MEDSCALE_FAILPOINT, which reaches the job through sbatch's --export=ALL). Running the sweep again submits it
    again, and it continues from that checkpoint: the killed attempt `lost`, the second `completed` from step 2."""
    spec = _sweep(tmp_path, tiny_model_dir, {"only": 3.0e-3})
    out = tmp_path / "runs" / "oneroad" / "only"
    killed = _wait_job(_array(spec, env={"MEDSCALE_FAILPOINT": "after_manifest@2"}))
    assert killed["JobState"] == "FAILED", _log(killed)
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-3").exists()

    again = _wait_job(_array(spec))
    assert (again["JobState"], again["ExitCode"]) == ("COMPLETED", "0:0"), _log(again)
    job = _job("oneroad.only")
    assert job["kind"] == "trial" and job["status"] == "succeeded" and job["launcher"] == "slurm"
    first, second = job["attempt_list"]
    assert (first["status"], second["status"]) == ("lost", "completed")
    assert second["resumed_from"] == str(out / "checkpoint-2") and second["step"] == 3
    assert [a["launcher"] for a in job["attempt_list"]] == ["slurm", "slurm"]
    shown = cli("sweep", "show", "oneroad", "--json")
    rows = json.loads(shown.stdout)["rows"]
    assert shown.returncode == 0 and [r["status"] for r in rows if r["kind"] == "trial"] == ["succeeded"]


def _eval_args(model: Path, bench: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", str(model), "--bench", str(bench), "--limit", "4", "--batch-size", "4", "--out", str(out), *extra]


@pytest.mark.slow
def test_an_evaluation_runs_on_slurm_and_its_attempt_is_a_slurm_one(cluster, tiny_model_dir, eval_data,
                                                                     tmp_path):  # noqa: F811
    out = tmp_path / "evaluated"
    r = cli(*_eval_args(tiny_model_dir, eval_data["mcq"], out, "--launcher", "slurm", "--launch-opt",
                        "gpus_per_node=0"))
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = re.search(r"to slurm \((\d+)\)", r.stdout).group(1)
    info = _wait_job(job_id)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), _log(info)
    assert json.loads((out / "eval.json").read_text())["results"][0]["n"] == 4
    shown = cli("jobs", "show", str(out), "--json")
    job = json.loads(shown.stdout)
    assert job["kind"] == "eval" and job["status"] == "succeeded" and job["launcher"] == "slurm"
    (attempt,) = job["attempt_list"]
    assert attempt["status"] == "completed" and attempt["launcher_ids"]["slurm_job_id"] == job_id


# --------------------------------------------------------------------------- a real Ray cluster

@pytest.mark.slow
def test_an_evaluation_runs_as_a_ray_job_and_its_attempt_is_a_ray_one(ray_cluster, tiny_model_dir, eval_data,
                                                                       tmp_path):
    """As the Ray training test: submitted to the shared test cluster's job server, followed to its end; the
    registry (MEDSCALE_HOME travels with the job) holds the evaluation's attempt under its Ray job id."""
    if os.environ.get("CI"):
        import ray  # noqa: F401  (under CI a missing Ray is a failure, never a skip)
    else:
        pytest.importorskip("ray", reason="ray[default,train] not installed")
    from launcher.ray import wait

    out = tmp_path / "evaluated"
    r = cli(*_eval_args(tiny_model_dir, eval_data["mcq"], out, "--launcher", "ray", "--launch-opt",
                        f"address={ray_cluster.dashboard}", "--launch-opt", "use_gpu=false"))
    assert r.returncode == 0, r.stdout + r.stderr
    sid = re.search(r"to ray \((\S+)\)", r.stdout).group(1)
    logs = io.StringIO()
    assert wait(ray_cluster.dashboard, sid, poll_s=1.0, out=logs) == 0, logs.getvalue()[-6000:]
    assert json.loads((out / "eval.json").read_text())["results"][0]["n"] == 4
    job = _job(str(out))
    assert job["kind"] == "eval" and job["status"] == "succeeded" and job["launcher"] == "ray"
    (attempt,) = job["attempt_list"]
    assert attempt["status"] == "completed" and attempt["launcher_ids"]["ray_job_id"] == sid
