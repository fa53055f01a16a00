"""Crashes, preemption and a lost registry, with real processes on a tiny model (CPU).

Whatever kills a run, no more than one checkpoint interval of work is lost, a torn checkpoint is
never resumed from, and the registry tells every attempt.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from conftest import QUICK_STEP, cli, run_cli
from medscale.errors import EXIT_CANCELLED, EXIT_PREEMPTED
from medscale.registry import Registry
from medscale.jobs.checkpoint import MANIFEST, latest_verified

pytestmark = pytest.mark.slow


def _args(model, out, *extra):
    return ["tiny-demo", f"model.path={model}", f"train.output_dir={out}", "eval.eval_strategy=no",
            "track.swanlab=null", "train.logging_steps=1", *QUICK_STEP, *extra]


def _start(*cli_args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medscale.cli", *cli_args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 600, what: str = "") -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 the launcher and every worker it started (a node failure, as far as the job can tell)."""
    procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=30)
    proc.wait(timeout=30)


def _adapter(out: Path) -> dict:
    return load_file(str(out / "adapter_model.safetensors"))


def _job(out: Path) -> dict:
    reg = Registry()
    try:
        return reg.job(reg.find(str(out))).to_dict()
    finally:
        reg.close()


def _state(out: Path) -> dict:
    return json.loads((out / "trainer_state.json").read_text())


def test_kill9_of_ddp_run_resumes_from_verified_checkpoint_and_matches_uninterrupted(tiny_model_dir, tmp_path):
    common = ["dist.num_processes=2", "train.max_steps=24", "train.save_steps=4"]
    ref = tmp_path / "uninterrupted"
    p = run_cli("train", *_args(tiny_model_dir, ref, *common), timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    out = tmp_path / "killed"
    proc = _start("train", *_args(tiny_model_dir, out, *common))
    _wait_for(lambda: (out / "checkpoint-8" / MANIFEST).is_file(), proc, what="the second checkpoint")
    _kill_tree(proc)
    resume_point = latest_verified(out)
    assert resume_point is not None and int(resume_point.name.split("-")[1]) >= 8
    assert _state(ref)["global_step"] == 24 and not (out / "run_summary.json").exists()

    p = run_cli("train", *_args(tiny_model_dir, out, *common), timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["attempt"] == 2 and summary["resumed_from"] == str(resume_point)
    assert summary["steps_per_rank"] == [24, 24] and _state(out)["global_step"] == _state(ref)["global_step"]

    job = _job(out)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    first, second = job["attempt_list"]
    assert first["status"] == "lost" and first["world_size"] == 2 and first["launcher"] == "local"
    assert second["status"] == "completed" and second["resumed_from"] == str(resume_point)

    want, got = _adapter(ref), _adapter(out)
    assert want.keys() == got.keys()
    worst = max((want[k] - got[k]).abs().max().item() for k in want)
    assert worst < 1e-4, f"resumed weights differ from the uninterrupted run by {worst}"


def test_crash_between_weights_and_manifest_is_never_resumed_from(tiny_model_dir, tmp_path):
    out = tmp_path / "torn"
    steps = ["train.max_steps=9", "train.save_steps=3"]
    p = run_cli("train", *_args(tiny_model_dir, out, *steps), env={"MEDSCALE_FAILPOINT": "before_manifest@6"})
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    torn = out / "checkpoint-6"
    assert (torn / "adapter_model.safetensors").is_file() and not (torn / MANIFEST).exists()
    assert latest_verified(out) == out / "checkpoint-3"

    p = run_cli("train", *_args(tiny_model_dir, out, *steps))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "removing" in p.stderr and "checkpoint-6" in p.stderr  # the torn save was cleared, then redone
    job = _job(out)
    assert [a["status"] for a in job["attempt_list"]] == ["lost", "completed"]
    assert job["attempt_list"][1]["resumed_from"] == str(out / "checkpoint-3")
    assert (out / "checkpoint-6" / MANIFEST).is_file() and _state(out)["global_step"] == 9
    live = {c["step"]: c["verified"] for c in job["checkpoints"] if not c["deleted"]}
    assert live == {6: True, 9: True}  # tiny-demo keeps 2 (save_total_limit): checkpoint-3 went to retention
    assert [c["step"] for c in job["checkpoints"] if c["deleted"]] == [3] and not (out / "checkpoint-3").exists()

    p = run_cli("train", *_args(tiny_model_dir, out, *steps))  # a finished job: nothing to train, no new attempt
    assert p.returncode == 0 and "already finished at step 9" in p.stderr, p.stderr[-3000:]
    assert _job(out)["attempts"] == 2 and not (out / "checkpoint-10").exists() and _state(out)["global_step"] == 9


def _training(min_step: int):
    """True once the registry's heartbeat shows the only job past `min_step`."""
    def check():
        reg = Registry()
        try:
            jobs = reg.jobs()
            return bool(jobs) and jobs[0].step >= min_step
        finally:
            reg.close()
    return check


@pytest.mark.parametrize("procs", [1, 2], ids=["in-process", "ddp"])
def test_sigterm_saves_at_next_step_marks_preempted_and_exits_75(tiny_model_dir, tmp_path, procs):
    out = tmp_path / "pre"
    args = _args(tiny_model_dir, out, f"dist.num_processes={procs}", "train.max_steps=24", "train.save_steps=1000")
    proc = _start("train", *args, env={"MEDSCALE_HEARTBEAT_S": "0.2"})
    _wait_for(_training(2), proc, what="training to reach step 2")
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == EXIT_PREEMPTED, log[-4000:]
    ckpt = latest_verified(out)
    assert ckpt is not None and 2 <= int(ckpt.name.split("-")[1]) < 24, "a checkpoint at the next step boundary"
    job = _job(out)
    assert job["status"] == "preempted" and job["attempt_list"][0]["status"] == "preempted"
    assert job["latest_checkpoint"] == str(ckpt)

    if procs == 2:  # `jobs resume` re-runs the recorded recipe with the recorded launcher, to the end
        p = run_cli("jobs", "resume", "tiny-demo", timeout=900)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        job = _job(out)
        assert job["status"] == "succeeded" and job["attempt_list"][1]["resumed_from"] == str(ckpt)
        assert _state(out)["global_step"] == 24


def test_jobs_cancel_stops_a_running_job_after_a_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "cancel"
    env = {"MEDSCALE_HEARTBEAT_S": "0.2"}
    proc = _start("train", *_args(tiny_model_dir, out, "train.max_steps=200", "train.save_steps=1000"), env=env)
    _wait_for(_training(2), proc, what="training to reach step 2")
    p = run_cli("jobs", "cancel", "tiny-demo", env=env)
    assert p.returncode == 0 and "cancel requested" in p.stdout, p.stdout + p.stderr
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == EXIT_CANCELLED, log[-4000:]
    job = _job(out)
    assert job["status"] == "cancelled" and job["attempt_list"][0]["status"] == "cancelled"
    assert job["latest_checkpoint"] == str(latest_verified(out)) and job["attempt_list"][0]["step"] < 200


def test_unreachable_registry_does_not_stop_training_and_sync_restores_rows(tiny_model_dir, tmp_path):
    out = tmp_path / "offline"
    dead = "postgresql+psycopg://medscale:topsecret@127.0.0.1:1/registry"
    p = run_cli("train", *_args(tiny_model_dir, out, "train.max_steps=6", "train.save_steps=3"),
                env={"MEDSCALE_REGISTRY_URL": dead})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "REGISTRY UNREACHABLE" in p.stderr and "jobs sync" in p.stderr
    assert "topsecret" not in p.stdout + p.stderr
    assert Registry().jobs() == []  # nothing reached the default registry

    p = run_cli("jobs", "sync", str(out))
    assert p.returncode == 0, p.stderr
    job = _job(out)
    assert job["status"] == "succeeded" and [a["status"] for a in job["attempt_list"]] == ["completed"]
    assert sorted(c["step"] for c in job["checkpoints"] if c["verified"]) == [3, 6]


def test_a_crash_in_training_records_a_failed_attempt_with_its_reason(tiny_model_dir, tmp_path, monkeypatch):
    from medscale.recipe import load_recipe
    from medscale.train.callbacks import MedscaleTrainer
    from medscale.train.run import run

    def boom(self, *a, **kw):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(MedscaleTrainer, "train", boom)
    out = tmp_path / "failing"
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run(load_recipe(_args(tiny_model_dir, out)[0], _args(tiny_model_dir, out)[1:]))
    job = _job(out)
    assert job["status"] == "failed"
    assert job["attempt_list"][0]["exit_reason"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert json.loads((out / "medscale_job.json").read_text())["attempts"][0]["status"] == "failed"


# --------------------------------------------------------------------------- faults found by fault injection

def test_a_kill_after_the_final_save_finishes_the_job_without_training_past_its_end(tiny_model_dir, tmp_path):
    """Defect: killed after the last checkpoint's manifest but before run_summary.json, the rerun trained one step
    past max_steps. A verified checkpoint at max_steps is the finished job: only the final save and summary are
    redone. Then a change of recipe on the finished job is refused, unless it is resume-safe (a larger max_steps)."""
    out = tmp_path / "final"
    steps = ["train.max_steps=6", "train.save_steps=3"]
    p = run_cli("train", *_args(tiny_model_dir, out, *steps), env={"MEDSCALE_FAILPOINT": "after_manifest@6"})
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert (out / "checkpoint-6" / MANIFEST).is_file() and not (out / "run_summary.json").exists()

    p = run_cli("train", *_args(tiny_model_dir, out, *steps))
    assert p.returncode == 0, p.stderr[-3000:]
    assert not (out / "checkpoint-7").exists() and _state(out)["global_step"] == 6
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["finished_from_checkpoint"] == str(out / "checkpoint-6")
    assert (out / "adapter_model.safetensors").read_bytes() == \
        (out / "checkpoint-6" / "adapter_model.safetensors").read_bytes()
    assert [a["status"] for a in _job(out)["attempt_list"]] == ["lost", "completed"]

    # Defect: re-running a finished job with a changed recipe "resumed", trained 0 steps and rewrote its record.
    before = (out / "run_summary.json").read_bytes()
    for change, key in (("train.learning_rate=1e-4", "train.learning_rate"), ("train.max_steps=4", "train.max_steps")):
        p = cli("train", *_args(tiny_model_dir, out, *steps, change))
        assert p.returncode == 2, p.stderr[-3000:]
        err = p.stderr.strip().splitlines()[-1]
        assert key in err and "jobs resume" in err and "train.output_dir" in err, err
    assert (out / "run_summary.json").read_bytes() == before and _job(out)["attempts"] == 2

    p = run_cli("train", *_args(tiny_model_dir, out, "train.max_steps=8", "train.save_steps=3",
                                "train.logging_steps=2"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert _state(out)["global_step"] == 8
    last = _job(out)["attempt_list"][-1]
    assert last["status"] == "completed" and last["resumed_from"] == str(out / "checkpoint-6")
    assert sorted(c.split(":")[0] for c in last["recipe_changes"]) == ["train.logging_steps", "train.max_steps"]


def test_a_nan_loss_fails_the_attempt_and_saves_nothing_from_it(tiny_model_dir, tmp_path):
    """Defect: a corrupted optimizer state trained to loss 0 / grad norm NaN, saved an all-NaN adapter and ended
    `completed`. A non-finite loss or gradient norm now fails the attempt at that step, before any save."""
    import torch
    from safetensors.torch import load_file, save_file

    from medscale.jobs.checkpoint import load_manifest, write_manifest

    out = tmp_path / "nan"
    p = run_cli("train", *_args(tiny_model_dir, out, "train.max_steps=2", "train.save_steps=2"))
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = out / "checkpoint-2"
    weights = load_file(str(ckpt / "adapter_model.safetensors"))
    lora_a = next(k for k in weights if "lora_A" in k)
    weights[lora_a] = torch.full_like(weights[lora_a], float("nan"))
    save_file(weights, str(ckpt / "adapter_model.safetensors"), metadata={"format": "pt"})
    meta = {k: v for k, v in load_manifest(ckpt).items() if k not in ("files", "size_bytes", "format", "step")}
    (ckpt / MANIFEST).unlink()
    write_manifest(ckpt, 2, meta)  # a checkpoint that verifies, with NaN weights in it

    p = run_cli("train", *_args(tiny_model_dir, out, "train.max_steps=6", "train.save_steps=1"))
    assert p.returncode == 1, p.stderr[-3000:]
    assert "became NaN/inf at step 3" in p.stderr and "Traceback" not in p.stderr
    assert [s for s in sorted(x.name for x in out.glob("checkpoint-*"))] == ["checkpoint-2"], "nothing saved"
    last = _job(out)["attempt_list"][-1]
    assert last["status"] == "failed" and "NaN/inf at step 3" in last["exit_reason"]


def _is_worker(proc: psutil.Process) -> bool:
    """`python [-u] -m medscale.train ...` itself, not the accelerate launcher that names it in its arguments."""
    try:
        argv = proc.cmdline()
    except psutil.Error:  # it ended meanwhile
        return False
    return "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["medscale.train"]


def test_killing_the_launcher_takes_its_workers_with_it(tiny_model_dir, tmp_path):
    """Defect: kill -9 (or an OOM kill, or a hang-up) of `medscale train` with dist.num_processes>1 left accelerate
    and every worker training on, in their own session."""
    out = tmp_path / "orphans"
    proc = _start("train", *_args(tiny_model_dir, out, "dist.num_processes=2", "train.max_steps=200",
                                  "train.save_steps=1000"), env={"MEDSCALE_HEARTBEAT_S": "0.2"})
    _wait_for(_training(2), proc, what="training to reach step 2")
    children = psutil.Process(proc.pid).children(recursive=True)
    workers = [c for c in children if _is_worker(c)]
    assert len(workers) == 2, [c.cmdline() for c in children]
    proc.kill()  # the launcher only, as the OOM killer would
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, f"still running after their launcher died: {[p.pid for p in alive]}"
    assert _job(out)["attempt_list"][0]["status"] == "lost"


@pytest.mark.parametrize("procs", [1, 2], ids=["in-process", "ddp"])
def test_a_stop_signal_during_start_up_exits_75_not_143(tiny_model_dir, tmp_path, procs):
    """Defect: SIGTERM/SIGUSR1 during start-up (imports, pre-flight, model load) killed the process with 143/138,
    so SLURM did not requeue. The handler is installed first thing; a stop before training ends in 75."""
    out = tmp_path / "early"
    proc = _start("train", *_args(tiny_model_dir, out, f"dist.num_processes={procs}", "train.max_steps=20"))
    def caught(pid: int) -> bool:  # the process has its own SIGTERM handler (the kernel's mask of caught signals)
        mask = Path(f"/proc/{pid}/status").read_text().split("SigCgt:")[1].split()[0]
        return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))

    if procs == 1:
        _wait_for(lambda: caught(proc.pid), proc, what="the SIGTERM handler")
    else:  # the workers are starting (importing torch): the signal reaches them through the launcher
        _wait_for(lambda: any(_is_worker(c) for c in psutil.Process(proc.pid).children(recursive=True)), proc,
                  what="the workers")
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == EXIT_PREEMPTED, log[-4000:]
    assert "Traceback" not in log
    assert latest_verified(out) is None, "nothing was trained, so nothing was saved"


def test_a_stop_that_kills_a_slow_starting_rank_does_not_leave_the_others_waiting(tiny_model_dir, tmp_path):
    """Defect (CI, a loaded 2-core machine): SIGTERM reached one worker while its interpreter was still starting, before
    any handler, and killed it; the other waited in torch.distributed's rendezvous for it until torchrun's shutdown
    grace ran out. Rank 1 is made slow to start (a sitecustomize that sleeps, as site-packages on NFS would); a rank
    that has not joined the process group exits 75 at once, and the run ends preempted."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, time\nif os.environ.get('TORCHELASTIC_RUN_ID') and os.environ.get('RANK') == '1':\n"
        "    time.sleep(600)\n")
    out = tmp_path / "slow-rank"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "240"}  # without the fix the run hangs this long, then fails
    proc = _start("train", *_args(tiny_model_dir, out, "dist.num_processes=2", "train.max_steps=20"), env=env)

    def rank0_waits() -> bool:  # rank 0 is importing torch or already waiting for rank 1
        for c in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if _is_worker(c) and c.environ().get("RANK") == "0":
                    return True
        return False
    _wait_for(rank0_waits, proc, what="rank 0")
    time.sleep(5)  # rank 0 reaches the rendezvous; rank 1 still sleeps in start-up
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == EXIT_PREEMPTED, log[-4000:]
    assert "rank 0: SIGTERM before the process group was up: nothing started, exiting 75" in log, log[-4000:]
    assert "Traceback" not in log and latest_verified(out) is None


def test_bad_data_found_at_start_leaves_no_output_dir_and_no_job(tiny_model_dir, tmp_path):
    """Defect: data problems found after the attempt started (every record dropped, eval_size larger than the data)
    exited 2 but left an output dir, recipe.resolved.yaml and a failed job behind. Data is read before the start."""
    out = tmp_path / "bad-data"
    for bad in ("data.eval_size=5000", "data.max_length=16"):
        r = cli("train", *_args(tiny_model_dir, out, bad))
        assert r.returncode == 2, r.stdout + r.stderr
        assert not out.exists(), f"{bad}: the output dir was created"
    assert Registry().jobs() == []
