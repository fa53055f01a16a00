"""`medscale jobs ...` end to end on hand-built output dirs (journal + recipe + checkpoint manifests): no training.

The commands run in-process (`cli`, typer's CliRunner); registry state is also read in-process. The journals are
written in the first journal format (SLURM/Ray ids as fields of their own), which every medscale must read.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import cli as run_cli

from medscale.cli.jobs import render_gc
from medscale.jobs import ops
from medscale.jobs.checkpoint import write_manifest
from medscale.jobs.client import sync_output_dir
from medscale.jobs.errors import JobStateError
from medscale.jobs.record import RECIPE_FILE
from medscale.recipe import load_recipe
from medscale.registry import AttemptInfo, Registry, utcnow

HOST = socket.gethostname()
DEAD_PID = 2**22 + 12345  # above any default pid_max: never alive


@pytest.fixture(autouse=True)
def registry_env(medscale_home, monkeypatch) -> str:
    """Every test on its own SQLite registry, for this process and the commands it starts."""
    url = f"sqlite:///{medscale_home}/registry.db"
    monkeypatch.setenv("MEDSCALE_REGISTRY_URL", url)
    monkeypatch.setenv("MEDSCALE_HEARTBEAT_S", "30")
    return url


def attempt(number: int, status: str, step: int, pid: int = DEAD_PID, launcher: str = "local", **kw) -> dict:
    start = utcnow() - timedelta(hours=3 - number)
    a = {"number": number, "launcher": launcher, "host": HOST, "pid": pid, "fingerprint": "f" * 16,
         "world_size": 1, "slurm_job_id": None, "ray_job_id": None, "resumed_from": None, "status": status,
         "step": step, "exit_reason": None, "started_at": start.isoformat(),
         "ended_at": None if status == "running" else (start + timedelta(minutes=30)).isoformat()}
    return {**a, **kw}


def make_output_dir(root: Path, name: str, attempts: list[dict], ckpts: list[tuple], launcher: str = "local",
                    save_total_limit: int | None = 1, options: dict | None = None) -> Path:
    """An output dir as a run leaves it. ckpts: (step, loss, eval_loss, verified); unverified = torn save."""
    out = root / name
    out.mkdir(parents=True)
    limit = "null" if save_total_limit is None else save_total_limit
    recipe = load_recipe("tiny-demo", [f"name={name}", f"train.output_dir={out}", f"train.save_total_limit={limit}"])
    (out / RECIPE_FILE).write_text(recipe.to_yaml(), encoding="utf-8")
    journal = {"format": 1, "name": name, "output_dir": str(out), "launcher": launcher,
               "fingerprint": recipe.fingerprint(), "attempts": attempts,
               **({"launcher_options": options} if options else {})}
    (out / "medscale_job.json").write_text(json.dumps(journal), encoding="utf-8")
    for step, loss, eval_loss, verified in ckpts:
        ckpt = out / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "adapter_model.safetensors").write_bytes(os.urandom(4096))
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")
        if verified:
            write_manifest(ckpt, step, {"job": name, "attempt": 1, "metrics": {"loss": loss, "eval_loss": eval_loss}})
    return out


def standard_job(root: Path, name: str = "derm-lora") -> Path:
    """Attempt 1 preempted at 20, attempt 2 failed at 35; verified 10 (best eval), 20, 30; torn 40."""
    return make_output_dir(root, name, [attempt(1, "preempted", 20, exit_reason="SIGTERM"),
                                        attempt(2, "failed", 35, resumed_from=str(root / name / "checkpoint-20"),
                                                exit_reason="CUDA OOM")],
                           [(10, 2.0, 1.0, True), (20, 1.8, 2.0, True), (30, 1.6, 1.5, True), (40, None, None, False)])


def ok(r, code: int = 0):
    assert r.returncode == code, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def test_sync_dir_then_list_and_show(tmp_path):
    out = standard_job(tmp_path)
    synced = json.loads(ok(run_cli("jobs", "sync", str(out), "--json")).stdout)
    assert synced == [{"job": "derm-lora", "output_dir": str(out), "attempts": 2, "checkpoints": 4, "verified": 3,
                       "marked_deleted": 0, "metric_steps": 0, "damaged": [], "result": "synced"}]

    rows = json.loads(ok(run_cli("jobs", "list", "--json")).stdout)
    assert len(rows) == 1
    row = rows[0]
    assert (row["name"], row["status"], row["attempts"], row["step"]) == ("derm-lora", "failed", 2, 35)
    assert row["latest_checkpoint"] == str(out / "checkpoint-30")
    assert row["latest_metrics"] == {"loss": 1.6, "eval_loss": 1.5}
    assert json.loads(ok(run_cli("jobs", "list", "--status", "failed", "--json")).stdout)[0]["id"] == row["id"]
    assert json.loads(ok(run_cli("jobs", "list", "--status", "running", "--json")).stdout) == []
    r = run_cli("jobs", "list", "--status", "bogus")
    assert r.returncode == 2 and "unknown status 'bogus'" in r.stderr

    table = ok(run_cli("jobs", "list")).stdout
    assert "derm-lora" in table and "failed" in table and "checkpoint-30" in table and str(out) in table

    job = json.loads(ok(run_cli("jobs", "show", "derm-lora", "--json")).stdout)
    assert job["id"] == row["id"] and job["output_dir"] == str(out) and job["launcher"] == "local"
    assert [(a["number"], a["status"], a["step"], a["exit_reason"]) for a in job["attempt_list"]] == [
        (1, "preempted", 20, "SIGTERM"), (2, "failed", 35, "CUDA OOM")]
    assert job["attempt_list"][1]["resumed_from"] == str(out / "checkpoint-20")
    assert [(c["step"], c["verified"], c["deleted"]) for c in job["checkpoints"]] == [
        (10, True, False), (20, True, False), (30, True, False), (40, False, False)]  # the torn save: not verified
    assert job["checkpoints"][0]["metrics"] == {"loss": 2.0, "eval_loss": 1.0}
    assert job["checkpoints"][0]["size_bytes"] > 4096
    assert "save_total_limit: 1" in job["recipe_yaml"]

    shown = ok(run_cli("jobs", "show", str(row["id"]))).stdout
    for text in ("derm-lora", "preempted", "failed", "CUDA OOM", "checkpoint-20", "✓", "✗", "latest metrics",
                 job["fingerprint"]):
        assert text in shown, text


def test_ambiguous_and_unknown_names_exit_2(tmp_path):
    reg = Registry()
    a = sync_output_dir(reg, standard_job(tmp_path / "a", "shared-name"))
    b = sync_output_dir(reg, standard_job(tmp_path / "b", "shared-name"))
    ids = [j.id for j in reg.jobs()]
    assert len(ids) == 2 and a["output_dir"] != b["output_dir"]

    r = run_cli("jobs", "show", "shared-name")
    assert r.returncode == 2 and "medscale: error:" in r.stderr and "Traceback" not in r.stderr
    assert all(f"{i} (" in r.stderr for i in ids), r.stderr
    assert json.loads(ok(run_cli("jobs", "show", str(ids[1]), "--json")).stdout)["output_dir"] == b["output_dir"]
    assert json.loads(ok(run_cli("jobs", "show", b["output_dir"], "--json")).stdout)["id"] == ids[1]

    r = run_cli("jobs", "show", "no-such-job")
    assert r.returncode == 2 and "no job 'no-such-job'" in r.stderr
    assert run_cli("jobs", "cancel", "no-such-job").returncode == 2


def test_cancel_a_stopped_job_marks_it_cancelled(tmp_path):
    reg = Registry()
    sync_output_dir(reg, standard_job(tmp_path))
    r = ok(run_cli("jobs", "cancel", "derm-lora"))
    assert "marked cancelled" in r.stdout
    assert json.loads(ok(run_cli("jobs", "list", "--status", "cancelled", "--json")).stdout)[0]["name"] == "derm-lora"


def live_job(tmp_path) -> Registry:
    """A registry holding job `live`, whose attempt 1 is this very process with a fresh heartbeat."""
    reg = Registry()
    sync_output_dir(reg, make_output_dir(tmp_path, "live", [attempt(1, "running", 5, pid=os.getpid())], []))
    assert reg.job(reg.find("live")).status == "lost", "a replayed journal is no heartbeat"
    beat = AttemptInfo.from_json({**attempt(1, "running", 5, pid=os.getpid()), "started_at": utcnow().isoformat()})
    reg.upsert_attempt(reg.job_spec(reg.find("live")), beat)  # the run's own heartbeat
    return reg


def test_cancel_a_running_job_says_when_it_stops(tmp_path):
    reg = live_job(tmp_path)
    result = ops.cancel_job(reg, "live")
    assert result.message == f"cancel requested: attempt 1 on host {HOST} will save a checkpoint and stop within ~120 s"
    job = reg.job(reg.find("live"))
    assert job.status == "running" and job.cancel_requested and result.took_effect


def test_gc_dry_run_then_gc(tmp_path):
    out = standard_job(tmp_path)
    reg = Registry()
    sync_output_dir(reg, out)
    before = sorted(p.name for p in out.glob("checkpoint-*"))

    dry = json.loads(ok(run_cli("jobs", "gc", "--dry-run", "--json")).stdout)
    assert [(d["job"], d["keep_last"], d["keep_best"], d["deleted"], d["kept"]) for d in dry] == [
        ("derm-lora", 1, True, [str(out / "checkpoint-20")], 3)]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == before
    assert not any(c["deleted"] for c in reg.job(reg.find("derm-lora")).to_dict()["checkpoints"])


    done = ok(run_cli("jobs", "gc", "derm-lora")).stdout
    assert f"deleted {out / 'checkpoint-20'}" in done and "3 kept" in done  # 10, 30 and the torn 40
    # newest verified (30) and best eval loss (10) stay; the torn save newer than them is left alone
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-30", "checkpoint-40"]
    deleted = {c["step"]: c["deleted"] for c in reg.job(reg.find("derm-lora")).to_dict()["checkpoints"]}
    assert deleted == {10: False, 20: True, 30: False, 40: False}


def test_gc_without_a_policy_deletes_nothing_unless_told(tmp_path, capsys):
    reg = Registry()
    out = make_output_dir(tmp_path, "keep-all", [attempt(1, "completed", 30)],
                          [(10, 2.0, 1.0, True), (20, 1.8, 2.0, True), (30, 1.6, 1.5, True)], save_total_limit=None)
    sync_output_dir(reg, out)
    [r] = ops.gc_jobs(reg, "keep-all")
    assert r.deleted == [] and "save_total_limit is null" in r.note
    results = ops.gc_jobs(reg, "keep-all", keep_last=1, dry_run=True)
    assert results[0].deleted == [str(out / "checkpoint-20")] and results[0].kept == 2
    render_gc(results)
    assert f"would delete {out / 'checkpoint-20'}" in capsys.readouterr().out
    assert len(list(out.glob("checkpoint-*"))) == 3


def test_sync_all_marks_hand_deleted_checkpoints_and_reports_gone_dirs(tmp_path):
    reg = Registry()
    out = standard_job(tmp_path)
    gone = standard_job(tmp_path, "scratch-run")
    sync_output_dir(reg, out)
    sync_output_dir(reg, gone)
    shutil.rmtree(out / "checkpoint-10")
    shutil.rmtree(gone)

    by_job = {r["job"]: r for r in ops.sync_jobs(reg, [])}  # `jobs sync DIR` runs as a command above
    assert by_job["derm-lora"]["result"] == "synced" and by_job["derm-lora"]["marked_deleted"] == 1
    assert by_job["scratch-run"]["result"] == "missing" and "gone" in by_job["scratch-run"]["reason"]
    deleted = {c["step"]: c["deleted"] for c in reg.job(reg.find("derm-lora")).to_dict()["checkpoints"]}
    assert deleted == {10: True, 20: False, 30: False, 40: False}

    with pytest.raises(JobStateError, match="not a medscale output dir"):
        ops.sync_jobs(reg, [str(out), str(tmp_path / "nowhere")])


class FakeLauncher:
    """Records what `jobs resume` hands a launcher; `wait` returns `code`."""

    name, waits_by_default = "fake", True

    def __init__(self, code: int = 0):
        self.code, self.requests = code, []

    def prepare(self, request):
        self.requests.append(request)
        return request

    def submit(self, prepared):
        return prepared

    def wait(self, handle):
        return self.code


def test_resume_refuses_a_running_job(tmp_path):
    reg = live_job(tmp_path)
    fake = FakeLauncher()
    with pytest.raises(JobStateError, match=f"is running \\(attempt 1 on host {HOST}.*cancel it first"):
        ops.resume_job(reg, "live", {"local": fake})
    assert not fake.requests


def test_resume_a_stopped_job_relaunches_its_recorded_recipe(tmp_path, medscale_home):
    reg = Registry()
    out = standard_job(tmp_path)
    sync_output_dir(reg, out)
    # a lost attempt (running in the journal, its process gone) counts as stopped
    sync_output_dir(reg, make_output_dir(tmp_path, "crashed", [attempt(1, "running", 5)], [(5, 2.0, None, True)]))
    assert reg.job(reg.find("crashed")).status == "lost"

    fake = FakeLauncher(75)
    for name in ("derm-lora", "crashed"):
        job = reg.job(reg.find(name))
        assert ops.resume_job(reg, name, {"local": fake}) == 75
        request = fake.requests[-1]
        assert request.ref == str(medscale_home / "jobs" / str(job.id) / "recipe.yaml")
        assert request.overrides == ["train.resume=auto"] and request.entry.kind == "train"
        text = Path(request.ref).read_text(encoding="utf-8")
        assert text == job.recipe_yaml == (Path(job.output_dir) / RECIPE_FILE).read_text(encoding="utf-8")
        recipe = request.recipe
        assert recipe.name == name and recipe.train.output_dir == job.output_dir and recipe.train.resume == "auto"
        assert Path(request.ref).stat().st_mode & 0o077 == 0, "the recorded recipe copy is private"


def test_resume_goes_through_the_launcher_that_ran_the_job_with_its_options(tmp_path):
    reg = Registry()
    sync_output_dir(reg, make_output_dir(tmp_path, "on-slurm", [attempt(1, "preempted", 5, launcher="slurm")], [],
                                         launcher="slurm", options={"partition": "debug", "nodes": 1}))
    local, slurm = FakeLauncher(), FakeLauncher()
    assert ops.resume_job(reg, "on-slurm", {"local": local, "slurm": slurm}) == 0
    assert not local.requests and slurm.requests[0].options == {"partition": "debug", "nodes": 1}
    with pytest.raises(JobStateError, match="launcher 'slurm', which this medscale does not know"):
        ops.resume_job(reg, "on-slurm", {"local": local})


def test_unreachable_registry_never_prints_its_password():
    url = "postgresql+psycopg://u:topsecret@127.0.0.1:1/db"
    for args in (("jobs", "list"), ("jobs", "show", "x", "--json"), ("jobs", "sync")):
        r = run_cli(*args, env={"MEDSCALE_REGISTRY_URL": url})
        assert r.returncode == 2, r.stderr
        assert "medscale: error:" in r.stderr and "u:***@127.0.0.1:1/db" in r.stderr
        assert "topsecret" not in r.stdout + r.stderr


def test_a_cancelled_stopped_job_stays_cancelled_after_sync(tmp_path):
    reg = Registry()
    out = make_output_dir(tmp_path, "stopped", [attempt(1, "failed", 5)], [])
    sync_output_dir(reg, out)
    assert "marked cancelled" in ops.cancel_job(reg, "stopped").message
    sync_output_dir(reg, out)  # the journal says failed; the cancel is the registry's own record
    assert reg.job(reg.find("stopped")).status == "cancelled"


def test_cancelling_a_finished_job_says_so_and_exits_2(tmp_path):
    reg = Registry()
    sync_output_dir(reg, make_output_dir(tmp_path, "done", [attempt(1, "completed", 30)], []))
    r = run_cli("jobs", "cancel", "done")
    assert r.returncode == 2 and "not cancelled" in r.stderr and "succeeded" in r.stderr
    assert reg.job(reg.find("done")).status == "succeeded"


def test_sync_without_arguments_finds_output_dirs_under_medscale_home(medscale_home):
    """Defect: with the registry lost, `jobs sync` found nothing; it now also scans $MEDSCALE_HOME/runs."""
    out = standard_job(medscale_home / "runs" / "team-a")
    (medscale_home / "runs" / "empty").mkdir()
    assert Registry().jobs() == []
    r = ok(run_cli("jobs", "sync"))
    assert f"synced derm-lora from {out}" in r.stdout
    assert [j.name for j in Registry().jobs()] == ["derm-lora"]
