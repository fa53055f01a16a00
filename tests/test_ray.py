"""Ray launcher: configs built from a recipe, the `ray job submit` command, `jobs resume` of a Ray job, checkpoint
pointers and Ray Train local mode (fast); then real jobs on a throwaway one-node Ray cluster (slow): a 2-worker
CPU job, and a worker SIGKILLed mid-run that Ray restarts from the last verified checkpoint."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import time
from pathlib import Path

import pytest

from conftest import QUICK_STEP, REPO, cli, run_cli

if os.environ.get("CI"):
    import ray  # noqa: F401  (under CI a missing Ray is a failure, never a skip)
else:
    pytest.importorskip("ray", reason="ray[default,train] not installed")

from launcher import ray as ray_launcher  # noqa: E402
from launcher.ray import (LaunchError, RayLauncher, RayOptions, prepare_submission, resume_overrides,  # noqa: E402
                          run_config, scaling_config)
from medscale.jobs.checkpoint import write_manifest  # noqa: E402
from medscale.recipe import load_recipe  # noqa: E402

JOB_TIMEOUT_S = 600  # the machine is shared: generous


# --------------------------------------------------------------------------- fast

def test_scaling_and_run_config_follow_the_recipe(tmp_path):
    r = load_recipe("tiny-demo", ["dist.num_processes=2", f"train.output_dir={tmp_path}/out"])
    s = scaling_config(r, use_gpu=False)
    assert (s.num_workers, s.use_gpu, s.resources_per_worker) == (2, False, {"CPU": 1.0})
    multi = load_recipe("tiny-demo", ["dist.num_processes=4", "dist.num_machines=2"])
    g = scaling_config(multi, use_gpu=True, cpus_per_worker=8)
    assert (g.num_workers, g.use_gpu, g.resources_per_worker) == (8, True, {"CPU": 8, "GPU": 1})

    rc = run_config(r, RayOptions(), "raysubmit_1")
    assert rc.failure_config.max_failures == 3 and rc.name == "tiny-demo"
    assert rc.storage_path == f"{tmp_path}/out", "Ray's run dir lives in the job's own output dir by default"
    assert rc.worker_runtime_env["env_vars"] == {"MEDSCALE_LAUNCHER": "ray", "MEDSCALE_RAY_JOB_ID": "raysubmit_1"}
    rc = run_config(r, RayOptions(max_failures=7, storage_path="/shared/ray"), None)
    assert rc.failure_config.max_failures == 7 and rc.storage_path == "/shared/ray"


def test_entry_script_options_default_to_environment(monkeypatch):
    monkeypatch.setenv("MEDSCALE_RAY_MAX_FAILURES", "5")
    monkeypatch.setenv("MEDSCALE_RAY_USE_GPU", "false")
    a = ray_launcher.parse_args(["tiny-demo", "train.max_steps=3", "--storage-path", "/s", "adapter.r=4"])
    assert (a.recipe, a.overrides, a.max_failures, a.storage_path, a.use_gpu) == \
        ("tiny-demo", ["train.max_steps=3", "adapter.r=4"], 5, "/s", False)
    assert ray_launcher.parse_args(["tiny-demo", "--gpu", "--max-failures", "0"]).max_failures == 0


def test_dry_run_prints_the_exact_ray_job_submit_command():
    p = cli("submit", "ray", "tiny-demo", "dist.num_processes=2", "train.max_steps=6", "--dry-run",
            "--address", "http://head:8265", "--max-failures", "5",
            env={"MEDSCALE_REGISTRY_URL": "postgresql+psycopg://medscale:s3cret@db/medscale"})
    assert p.returncode == 0, p.stderr
    assert "s3cret" not in p.stdout, "the registry password is never printed"
    argv = shlex.split(p.stdout.strip())
    sid = argv[argv.index("--submission-id") + 1]
    assert argv[:5] == ["ray", "job", "submit", "--address", "http://head:8265"]
    assert argv[argv.index("--") + 1:] == ["python", "launcher/ray_job.py", "tiny-demo", "dist.num_processes=2",
                                           "train.max_steps=6", "--max-failures", "5"]
    env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    assert env["working_dir"] == str(REPO)
    assert env["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0" and env["env_vars"]["MEDSCALE_RAY_JOB_ID"] == sid
    assert env["env_vars"]["MEDSCALE_REGISTRY_URL"] == "postgresql+psycopg://medscale:***@db/medscale"
    assert "tests" in env["excludes"], "the base runtime env is cluster/ray/runtime_env.yaml"


def test_bad_recipe_is_refused_before_anything_is_submitted():
    p = cli("submit", "ray", "tiny-demo", "train.nope=1", "--address", "http://127.0.0.1:9")
    assert p.returncode == 2 and "train.nope" in p.stderr


def test_an_unreachable_ray_address_is_one_line_and_exit_2(tmp_path):
    """Defect (issue 14): `submit ray` to an address nobody answers printed a 320-line traceback."""
    p = cli("submit", "ray", "tiny-demo", f"train.output_dir={tmp_path}/out", "--address", "http://127.0.0.1:9")
    assert p.returncode == 2, p.stderr
    assert "cannot reach the Ray job server at http://127.0.0.1:9" in p.stderr and "--address" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) <= 2


class FakeClient:
    submitted: list[dict] = []

    def __init__(self, address):
        self.address = address

    def submit_job(self, **kw):
        FakeClient.submitted.append({"address": self.address, **kw})
        return kw["submission_id"]


def test_submit_names_in_tree_recipes_and_ships_others_as_text(tmp_path):
    FakeClient.submitted.clear()
    outside = tmp_path / "my-recipe.yaml"
    outside.write_text("base: tiny-demo\ntrain: {max_steps: 2}\n")
    r = load_recipe(str(outside))
    sub = prepare_submission(r, str(outside), ["adapter.r=4"], opts=RayOptions(address="http://h:1"), env=["A=1"],
                             environ={})
    assert ray_launcher.submit(sub, FakeClient) == sub.submission_id
    job = FakeClient.submitted[0]
    assert job["entrypoint"] == "python launcher/ray_job.py env:MEDSCALE_RECIPE_YAML adapter.r=4"
    shipped = job["runtime_env"]["env_vars"]["MEDSCALE_RECIPE_YAML"]
    assert shipped.startswith("name: my-recipe\n") and "max_steps: 2" in shipped
    assert job["runtime_env"]["env_vars"]["A"] == "1" and job["metadata"]["medscale_job"] == "my-recipe"
    # a recipe inside the uploaded project is named by its relative path
    inside = REPO / "medscale" / "recipes" / "tiny-demo.yaml"
    sub = prepare_submission(load_recipe(str(inside)), str(inside), [], environ={})
    assert sub.entrypoint[2] == "medscale/recipes/tiny-demo.yaml" and sub.address == "http://127.0.0.1:8265"
    with pytest.raises(LaunchError, match="KEY=VALUE"):
        prepare_submission(r, str(outside), [], env=["no-equals"], environ={})


def test_jobs_resume_of_a_ray_job_resubmits_the_recorded_recipe_with_its_options(tmp_path, monkeypatch):
    """Ray's launch options were not saved for `jobs resume`; they are recorded with the job now."""
    from medscale.jobs import ops
    from medscale.registry import AttemptInfo, JobSpec, Registry

    FakeClient.submitted.clear()
    monkeypatch.setenv("RAY_ADDRESS", "http://elsewhere:8265")
    recipe = load_recipe("tiny-demo", [f"train.output_dir={tmp_path}/out", "dist.num_processes=2"])
    monkeypatch.setenv("MEDSCALE_REGISTRY_URL", f"sqlite:///{tmp_path}/registry.db")
    reg = Registry()
    options = {"address": "http://head:8265", "max_failures": 5, "cpus_per_worker": 2.0}
    spec = JobSpec(recipe.name, recipe.train.output_dir, "ray", recipe.to_yaml(), recipe.fingerprint(),
                   launcher_options=options)
    reg.upsert_attempt(spec, AttemptInfo(1, "ray", "node1", 123, recipe.fingerprint(), world_size=2,
                                         launcher_ids={"ray_job_id": "old"}, status="failed"))
    assert ops.resume_job(reg, "tiny-demo", {"ray": RayLauncher(client_factory=FakeClient)}) == 0
    job = FakeClient.submitted[0]
    assert job["address"] == "http://head:8265", "the recorded address, not $RAY_ADDRESS"
    assert job["entrypoint"] == ("python launcher/ray_job.py env:MEDSCALE_RECIPE_YAML train.resume=auto "
                                 "--max-failures 5 --cpus-per-worker 2")
    assert job["runtime_env"]["env_vars"]["MEDSCALE_RECIPE_YAML"] == recipe.to_yaml()
    assert json.loads(job["runtime_env"]["env_vars"]["MEDSCALE_LAUNCH_OPTIONS"]) == options
    assert reg.job(reg.find("tiny-demo")).status == "queued", "submit records the job as queued"
    reg.close()


def _verified(out: Path, step: int) -> Path:
    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"w" * 64)
    write_manifest(ckpt, step, {"job": "tiny-demo", "metrics": {"loss": 1.0}})
    return ckpt


def _pointer(folder: Path, target: Path):
    from ray.train import Checkpoint

    folder.mkdir(parents=True)
    (folder / ray_launcher.POINTER).write_text(json.dumps({"path": str(target)}))
    return Checkpoint(str(folder))


def test_restart_resumes_from_rays_checkpoint_only_when_it_is_this_jobs_newest(tmp_path):
    out = tmp_path / "out"
    r = load_recipe("tiny-demo", [f"train.output_dir={out}"])
    five, ten = _verified(out, 5), _verified(out, 10)
    ray_dir = out / "tiny-demo"
    assert resume_overrides(None, r) == []
    assert resume_overrides(_pointer(ray_dir / "p10", ten), r) == [f"train.resume={ten}"]
    assert resume_overrides(_pointer(ray_dir / "p5", five), r) == ["train.resume=auto"], "a newer one exists"
    other = _verified(tmp_path / "other-job", 20)
    assert resume_overrides(_pointer(ray_dir / "p20", other), r) == [], "another job's checkpoint is ignored"
    assert resume_overrides(_pointer(ray_dir / "gone", out / "checkpoint-99"), r) == ["train.resume=auto"]
    from ray.train import Checkpoint

    assert ray_launcher.pointed_checkpoint(Checkpoint(str(ten))) == ten, "a medscale checkpoint stands for itself"


def _recording_reports(monkeypatch) -> list[tuple]:
    """Every ray.train.report call as (metrics, checkpoint path or None, upload mode), still passed on to Ray."""
    import ray.train

    calls, real = [], ray.train.report

    def report(metrics, checkpoint=None, **kw):
        calls.append((metrics, checkpoint and checkpoint.path, kw.get("checkpoint_upload_mode")))
        return real(metrics, checkpoint=checkpoint, **kw)

    monkeypatch.setattr(ray.train, "report", report)
    return calls


def test_local_mode_reports_each_verified_save_from_the_trainer_callback(tmp_path, monkeypatch):
    """Ray Train local mode (num_workers=0) runs train_func in this process; run() is replaced by a stub that
    plays the Trainer: two saves, each followed by on_save of the callbacks it was given (after AttemptCallback,
    which writes the manifest: the save at step 2 has none, i.e. is not verified)."""
    from types import SimpleNamespace

    from ray.train import CheckpointUploadMode
    from transformers import TrainerCallback

    import medscale.train.run as run_module

    for var in ("MEDSCALE_LAUNCHER", "MEDSCALE_RAY_JOB_ID"):
        monkeypatch.delenv(var, raising=False)  # train_func sets them; undone after the test
    seen = {}
    calls = _recording_reports(monkeypatch)
    summary = {"global_step": 3, "world_size": 1, "paths": {"adapter": "x"}}

    def fake_run(recipe, launch=None, callbacks=()):
        seen["launch"], seen["callbacks"] = launch, list(callbacks)
        out = Path(recipe.train.output_dir)
        args = SimpleNamespace(output_dir=str(out))
        (out / "checkpoint-2").mkdir(parents=True)  # a save without a manifest
        for step in (2, 3):
            if step == 3:
                _verified(out, 3)
            for cb in callbacks:
                cb.on_save(args, SimpleNamespace(global_step=step, is_world_process_zero=True), None)
        return summary

    monkeypatch.setattr(run_module, "run", fake_run)
    overrides = [f"train.output_dir={tmp_path}/out"]
    r = load_recipe("tiny-demo", overrides)
    trainer = ray_launcher.build_trainer(r, ray_launcher.recipe_source("tiny-demo"), overrides,
                                         RayOptions(), False, job_id="job-1", num_workers_override=0)
    result = trainer.fit()
    assert (seen["launch"].launcher, seen["launch"].ids) == ("ray", {"ray_job_id": "job-1"})
    [cb] = seen["callbacks"]
    assert isinstance(cb, TrainerCallback)
    ckpt = tmp_path / "out" / "checkpoint-3"
    assert calls == [({}, None, CheckpointUploadMode.NO_UPLOAD),  # unverified: reported, but with no checkpoint
                     ({"loss": 1.0, "step": 3, "medscale_checkpoint": str(ckpt)}, str(ckpt),
                      CheckpointUploadMode.NO_UPLOAD)]
    assert Path(result.checkpoint.path) == ckpt
    assert result.metrics == {"loss": 1.0, "step": 3, "medscale_checkpoint": str(ckpt)}
    assert result.return_value == summary, "rank 0's run summary is train_func's return value"


def test_other_ranks_report_every_save_without_a_checkpoint(tmp_path, monkeypatch):
    """ray.train.report is a collective: a rank other than 0 reports at every save too, never a checkpoint."""
    import ray.train
    from ray.train import CheckpointUploadMode

    calls = []
    monkeypatch.setattr(ray.train, "report", lambda metrics, checkpoint=None, **kw: calls.append(
        (metrics, checkpoint, kw.get("checkpoint_upload_mode"))))
    _verified(tmp_path / "out", 5)
    ray_launcher.report_save(str(tmp_path / "out"), 5, rank0=False)
    assert calls == [({}, None, CheckpointUploadMode.NO_UPLOAD)]


@pytest.mark.parametrize("status", ["preempted", "cancelled"])
def test_a_preempted_attempt_makes_ray_restart_a_cancelled_one_does_not(status, tmp_path, monkeypatch):
    import medscale.train.run as run_module
    from medscale.errors import AttemptStopped

    for var in ("MEDSCALE_LAUNCHER", "MEDSCALE_RAY_JOB_ID"):
        monkeypatch.delenv(var, raising=False)

    def stopped_run(recipe, launch=None, callbacks=()):
        raise AttemptStopped(status, 3)

    monkeypatch.setattr(run_module, "run", stopped_run)
    overrides = [f"train.output_dir={tmp_path}/out"]
    trainer = ray_launcher.build_trainer(load_recipe("tiny-demo", overrides), ray_launcher.recipe_source("tiny-demo"),
                                         overrides, RayOptions(), False, job_id=None, num_workers_override=0)
    if status == "preempted":  # raised out of train_func: Ray's FailureConfig restarts the worker group
        with pytest.raises(AttemptStopped):
            trainer.fit()
    else:  # returned: a cancel is final, the driver exits 4
        assert trainer.fit().return_value == {"stopped": "cancelled"}


def test_relative_output_dir_is_refused_for_ray():
    p = cli("submit", "ray", "tiny-demo", "train.output_dir=runs/x", "--dry-run")
    assert p.returncode == 2 and "absolute path" in p.stderr


def test_cluster_files_are_valid_ray_configs():
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config
    from ray.runtime_env import RuntimeEnv

    cluster = yaml.safe_load((REPO / "cluster" / "ray" / "cluster.yaml").read_text())
    assert cluster["provider"]["type"] == "local"
    validate_config(prepare_config(cluster))
    env = yaml.safe_load((REPO / "cluster" / "ray" / "runtime_env.yaml").read_text())
    assert RuntimeEnv(**env)["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"


# --------------------------------------------------------------------------- slow: a real Ray cluster

def _job_env(tmp_path: Path) -> tuple[str, list[str]]:
    url = f"sqlite:///{tmp_path}/registry.db"
    return url, ["--env", f"MEDSCALE_REGISTRY_URL={url}"]


def _submitted_id(stdout: str) -> str:
    return re.search(r": job (\S+) \(follow it", stdout).group(1)


def _registry_job(url: str, name: str) -> dict:
    from medscale.registry import Registry

    reg = Registry(url)
    try:
        return reg.job(reg.find(name)).to_dict()
    finally:
        reg.close()


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
    return value


def _ray_held_checkpoints(out: Path, job: str = "tiny-demo") -> dict[int, Path]:
    """The checkpoints Ray's controller holds for the finished run (its snapshot in the run dir), by step: each
    must be a medscale pointer folder naming a verified checkpoint in the output dir, with that checkpoint's
    metrics; the newest must be the one Ray hands out (latest_checkpoint_result)."""
    from medscale.jobs.checkpoint import read_manifest

    run_dir = out / job
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    held = {}
    for entry in snapshot["checkpoint_results"]:
        name = entry["checkpoint_dir_name"]
        assert re.fullmatch(r"medscale-checkpoint-\d+-[0-9a-f]{6}", name), f"not a medscale pointer: {name}"
        assert [f.name for f in (run_dir / name).iterdir()] == [ray_launcher.POINTER], "a pointer holds one file"
        pointer = json.loads((run_dir / name / ray_launcher.POINTER).read_text())
        target = Path(pointer["path"])
        step = pointer["step"]
        assert target == out / f"checkpoint-{step}" and name.startswith(f"medscale-checkpoint-{step}-")
        assert entry["metrics"]["medscale_checkpoint"] == str(target) and entry["metrics"]["step"] == step
        assert read_manifest(target) is not None, f"Ray holds {name} but {target} is not a verified checkpoint"
        held[step] = target
    assert snapshot["latest_checkpoint_result"]["checkpoint_dir_name"].startswith(
        f"medscale-checkpoint-{max(held)}-"), "Ray hands out the newest"
    return held


def _job_logs(cluster, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard).get_job_logs(job_id)


@pytest.mark.slow
def test_submitted_ray_job_trains_on_two_workers_and_registers(ray_cluster, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    url, env = _job_env(tmp_path)
    p = run_cli("submit", "ray", "tiny-demo", "dist.num_processes=2", f"model.path={tiny_model_dir}",
                f"train.output_dir={out}", "train.max_steps=6", "train.save_steps=3", "eval.eval_strategy=no",
                "track.swanlab=null", *QUICK_STEP, "--address", ray_cluster.dashboard, *env, "--wait",
                timeout=JOB_TIMEOUT_S)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    job_id = _submitted_id(p.stdout)
    assert f"ray job {job_id}: SUCCEEDED" in p.stdout
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_per_rank"] == [6, 6] and summary["global_step"] == 6

    job = _registry_job(url, "tiny-demo")
    assert job["status"] == "succeeded" and job["launcher"] == "ray"
    [attempt] = job["attempt_list"]
    assert (attempt["launcher"], attempt["launcher_ids"]["ray_job_id"], attempt["world_size"]) == ("ray", job_id, 2)

    # Ray knows the checkpoints by pointer only (each save reported by the Trainer callback): nothing of the model
    # was copied into its run dir
    assert _ray_held_checkpoints(out) == {3: out / "checkpoint-3", 6: out / "checkpoint-6"}
    [pointer] = (out / "tiny-demo").glob(f"medscale-checkpoint-6-*/{ray_launcher.POINTER}")
    assert json.loads(pointer.read_text())["path"] == str(out / "checkpoint-6")
    assert not [f for f in (out / "tiny-demo").rglob("*") if f.suffix in (".safetensors", ".pt", ".bin")]


@pytest.mark.slow
def test_killed_worker_restarts_the_group_from_the_last_verified_checkpoint(ray_cluster, tmp_path, tiny_model_dir):
    from ray.job_submission import JobStatus, JobSubmissionClient

    out = tmp_path / "out"
    url, env = _job_env(tmp_path)
    p = run_cli("submit", "ray", "tiny-demo", "dist.num_processes=2", f"model.path={tiny_model_dir}",
                f"train.output_dir={out}", "train.max_steps=30", "train.save_steps=5", "eval.eval_strategy=no",
                "track.swanlab=null", *QUICK_STEP, "--address", ray_cluster.dashboard, *env, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    job_id = _submitted_id(p.stdout)
    client = JobSubmissionClient(ray_cluster.dashboard)

    def ray_knows_a_checkpoint():  # registered by Ray's controller (in its run snapshot), not only written
        if client.get_job_status(job_id) in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.SUCCEEDED):
            raise AssertionError("job ended before a worker could be killed:\n" + _job_logs(ray_cluster, job_id))
        try:
            snapshot = json.loads((out / "tiny-demo" / "checkpoint_manager_snapshot.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(snapshot.get("checkpoint_results"))

    _wait_for(ray_knows_a_checkpoint, JOB_TIMEOUT_S, "the first checkpoint reported to Ray")
    first = json.loads((out / "medscale_job.json").read_text())["attempts"][0]
    assert ray_cluster.owns(first["pid"]), "the pid recorded for rank 0 is a worker of this test's cluster"
    os.kill(first["pid"], signal.SIGKILL)  # global rank 0, mid-training

    status = _wait_for(lambda: (s := client.get_job_status(job_id)) in
                       (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and s, JOB_TIMEOUT_S,
                       "the job to end", poll=1)
    logs = _job_logs(ray_cluster, job_id)
    assert status == JobStatus.SUCCEEDED, logs[-6000:]
    assert "resuming from Ray's checkpoint" in logs or "newer than Ray's" in logs, "ray.train.get_checkpoint() is read"

    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["global_step"] == 30 and summary["attempt"] == 2 and summary["world_size"] == 2
    resumed = Path(summary["resumed_from"])
    assert resumed.parent == out and int(resumed.name.split("-")[1]) >= 5
    job = _registry_job(url, "tiny-demo")
    first, second = job["attempt_list"]
    assert first["status"] in ("failed", "lost") and second["status"] == "completed"
    assert first["launcher_ids"]["ray_job_id"] == second["launcher_ids"]["ray_job_id"] == job_id
    assert second["resumed_from"] == str(resumed) and job["status"] == "succeeded"
    # the restarted group's saves reached Ray too: it holds the last two (Ray's num_to_keep), by pointer
    assert _ray_held_checkpoints(out) == {25: out / "checkpoint-25", 30: out / "checkpoint-30"}
