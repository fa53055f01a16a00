"""The job registry (DESIGN.md "Registry semantics"): every behaviour test runs on SQLite and on PostgreSQL."""
from __future__ import annotations

import multiprocessing
import os
import queue
import socket
import sqlite3
import subprocess
import sys
import time
import traceback
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, text

from medscale.registry import (AttemptInfo, CancelOutcome, CheckpointInfo, JobSpec, Registry, RegistryError, heartbeat_interval,
                               redact, scrub)
from medscale.registry import utcnow

HOST = socket.gethostname()


def spec(name: str = "demo", out: str = "/runs/demo", **kw) -> JobSpec:
    return JobSpec(**{"name": name, "output_dir": out, "launcher": "local", "recipe_yaml": f"name: {name}\n",
                      "fingerprint": "fp-1", **kw})


def attempt(number: int, **kw) -> AttemptInfo:
    """An attempt of this very process on this host (alive), unless host/pid say otherwise."""
    return AttemptInfo(**{"number": number, "launcher": "local", "host": HOST, "pid": os.getpid(),
                          "fingerprint": "fp-1", **kw})


def ckpt(out: str, step: int, attempt_number: int = 1, verified: bool = True, **kw) -> CheckpointInfo:
    return CheckpointInfo(step=step, path=f"{out}/checkpoint-{step}", verified=verified,
                          attempt_number=attempt_number, **kw)


def ended(number: int, status: str, **kw) -> AttemptInfo:
    return attempt(number, status=status, ended_at=utcnow(), **kw)


def counts(reg: Registry) -> dict[str, int]:
    with reg.engine.connect() as c:
        return {t: c.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("jobs", "attempts", "checkpoints")}


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from medscale.registry.engine import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def alembic_versions(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return [r[0] for r in c.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def J(reg: Registry, job_id: int) -> dict:
    """A job as JSON (`jobs show --json` shape), for compact assertions."""
    return reg.job(job_id).to_dict()


def L(reg: Registry, **kw) -> list[dict]:
    return [j.to_dict(brief=True) for j in reg.jobs(**kw)]


@pytest.fixture
def reg(registry_url):
    r = Registry(registry_url)
    yield r
    r.close()


# ------------------------------------------------------------------------------------------ 1. round trip


def test_round_trip_two_attempts_checkpoints_and_status(reg):
    s = spec()
    assert reg.upsert_attempt(s, attempt(1, launcher_ids={"slurm_job_id": "4242"}, world_size=4)) is False
    jid = reg.find_by_key(s)
    assert isinstance(jid, int)
    assert J(reg, jid)["status"] == "running"
    # recorded out of order: job() lists them by step
    reg.record_checkpoint(s, ckpt(s.output_dir, 20, metrics={"loss": 1.25, "eval_loss": 1.5}, size_bytes=2048))
    reg.record_checkpoint(s, ckpt(s.output_dir, 10, metrics={"loss": 2.5, "eval_loss": 2.75}, size_bytes=1024))
    reg.record_checkpoint(s, ckpt(s.output_dir, 30, verified=False, metrics={"loss": 1.0}))  # a torn save

    resumed = f"{s.output_dir}/checkpoint-20"
    assert reg.upsert_attempt(s, attempt(2, resumed_from=resumed, step=20, launcher_ids={"ray_job_id": "raysubmit_1"})) is False
    reg.record_checkpoint(s, ckpt(s.output_dir, 40, attempt_number=2, metrics={"loss": 0.5, "eval_loss": 0.75}))

    j = J(reg, jid)
    assert (j["id"], j["name"], j["output_dir"], j["launcher"]) == (jid, "demo", "/runs/demo", "local")
    assert j["recipe_yaml"] == "name: demo\n" and j["fingerprint"] == "fp-1"
    assert j["status"] == "running" and j["attempts"] == 2 and j["cancel_requested"] is False
    a1, a2 = j["attempt_list"]
    assert [a1["number"], a2["number"]] == [1, 2]
    # attempt 1 never ended: attempt 2 starting marks it lost, with the reason kept
    assert a1["status"] == "lost" and "attempt 2" in a1["exit_reason"]
    assert a1["launcher_ids"] == {"slurm_job_id": "4242"} and a1["world_size"] == 4 and a1["resumed_from"] is None
    assert a2["status"] == "running" and a2["resumed_from"] == resumed and a2["launcher_ids"] == {"ray_job_id": "raysubmit_1"}
    assert a2["host"] == HOST and a2["pid"] == os.getpid() and a2["ended_at"] is None
    assert a2["started_at"].endswith("Z") and a2["heartbeat_at"].endswith("Z")

    cps = j["checkpoints"]
    assert [c["step"] for c in cps] == [10, 20, 30, 40]
    assert [c["path"] for c in cps] == [f"/runs/demo/checkpoint-{n}" for n in (10, 20, 30, 40)]
    assert [c["verified"] for c in cps] == [True, True, False, True]
    assert [c["attempt"] for c in cps] == [1, 1, 1, 2]
    assert cps[0]["metrics"] == {"loss": 2.5, "eval_loss": 2.75} and cps[0]["size_bytes"] == 1024
    assert cps[1]["metrics"] == {"loss": 1.25, "eval_loss": 1.5}
    assert not any(c["deleted"] for c in cps)
    assert j["latest_checkpoint"] == "/runs/demo/checkpoint-40"
    assert j["latest_metrics"] == {"loss": 0.5, "eval_loss": 0.75}

    # the job follows its current attempt
    reg.upsert_attempt(s, ended(2, "completed", step=50, exit_reason="done"))
    j = J(reg, jid)
    assert j["status"] == "succeeded" and j["step"] == 50
    assert j["attempt_list"][1]["status"] == "completed" and j["attempt_list"][1]["ended_at"]
    assert j["attempt_list"][0]["status"] == "lost"  # stays lost
    # an older attempt updated as not current does not move the job
    reg.upsert_attempt(s, ended(1, "failed", exit_reason="late report"), current=False)
    j = J(reg, jid)
    assert j["status"] == "succeeded" and j["attempt_list"][0]["status"] == "failed"

    brief = L(reg)
    assert len(brief) == 1 and brief[0]["id"] == jid and "attempt_list" not in brief[0]
    assert brief[0]["attempts"] == 2 and brief[0]["status"] == "succeeded"


@pytest.mark.parametrize("status,job_status", [("completed", "succeeded"), ("preempted", "preempted"),
                                               ("failed", "failed"), ("cancelled", "cancelled")])
def test_job_status_follows_the_current_attempt(reg, status, job_status):
    s = spec(name=f"job-{status}", out=f"/runs/{status}")
    reg.upsert_attempt(s, attempt(1))
    reason = {"failed": "RuntimeError: CUDA error: an illegal memory access",
              "preempted": "SIGTERM at step 7"}.get(status)
    reg.upsert_attempt(s, ended(1, status, exit_reason=reason, step=7))
    j = J(reg, reg.find_by_key(s))
    assert j["status"] == job_status
    assert j["attempt_list"][0]["status"] == status
    assert j["attempt_list"][0]["exit_reason"] == reason
    assert L(reg, status=job_status)[0]["id"] == j["id"]
    if status == "preempted":  # the requeued attempt takes over
        reg.upsert_attempt(s, attempt(2, resumed_from="/runs/preempted/checkpoint-7"))
        j = J(reg, j["id"])
        assert j["status"] == "running"
        assert [a["status"] for a in j["attempt_list"]] == ["preempted", "running"]  # not lost: it had ended


# ------------------------------------------------------------------------------------------ 2. idempotence


def test_repeated_upserts_give_the_same_rows(reg):
    s = spec()
    for _ in range(3):
        reg.upsert_attempt(s, attempt(1))
        reg.record_checkpoint(s, ckpt(s.output_dir, 10, metrics={"loss": 1.0}))
        reg.upsert_attempt(s, attempt(2, resumed_from=f"{s.output_dir}/checkpoint-10"))
        reg.record_checkpoint(s, ckpt(s.output_dir, 20, attempt_number=2))
    assert counts(reg) == {"jobs": 1, "attempts": 2, "checkpoints": 2}
    # the same key with a new recipe updates the job instead of adding one
    reg.upsert_attempt(spec(recipe_yaml="name: demo\nlr: 1e-4\n", fingerprint="fp-2"), attempt(2))
    assert counts(reg) == {"jobs": 1, "attempts": 2, "checkpoints": 2}
    j = J(reg, reg.find_by_key(s))
    assert j["fingerprint"] == "fp-2" and "lr" in j["recipe_yaml"]
    # the same name in another output dir is another job
    reg.upsert_attempt(spec(out="/runs/demo-2"), attempt(1))
    assert counts(reg) == {"jobs": 2, "attempts": 3, "checkpoints": 2}


def test_record_checkpoint_updates_in_place_and_clears_deleted(reg):
    s = spec()
    reg.upsert_attempt(s, attempt(1))
    jid = reg.find_by_key(s)
    path = f"{s.output_dir}/checkpoint-10"
    reg.record_checkpoint(s, ckpt(s.output_dir, 10, verified=False))
    reg.record_checkpoint(s, ckpt(s.output_dir, 10, verified=True, metrics={"eval_loss": 0.5}, size_bytes=99))
    (c,) = J(reg, jid)["checkpoints"]
    assert (c["path"], c["verified"], c["metrics"], c["size_bytes"], c["deleted"]) == (path, True,
                                                                                     {"eval_loss": 0.5}, 99, False)

    reg.mark_deleted(s, [path])
    (c,) = J(reg, jid)["checkpoints"]
    assert c["deleted"] is True
    assert J(reg, jid)["latest_checkpoint"] is None  # a deleted checkpoint is not the latest
    with reg.engine.connect() as conn:
        first = conn.execute(text("SELECT deleted_at FROM checkpoints")).scalar_one()
    time.sleep(0.01)
    reg.mark_deleted(s, [path, "/runs/demo/checkpoint-unknown"])  # again, plus a path never recorded
    reg.mark_deleted(s, [])
    with reg.engine.connect() as conn:
        assert conn.execute(text("SELECT deleted_at FROM checkpoints")).scalar_one() == first  # not moved
    assert counts(reg)["checkpoints"] == 1

    reg.record_checkpoint(s, ckpt(s.output_dir, 10, metrics={"eval_loss": 0.4}))  # saved again: alive again
    (c,) = J(reg, jid)["checkpoints"]
    assert c["deleted"] is False and c["metrics"] == {"eval_loss": 0.4}
    assert J(reg, jid)["latest_checkpoint"] == path
    assert counts(reg) == {"jobs": 1, "attempts": 1, "checkpoints": 1}


def test_record_checkpoint_before_any_attempt_creates_the_job(reg):
    """`medscale jobs sync` may reconcile a checkpoint manifest before the registry saw the job at all."""
    s = spec()
    reg.record_checkpoint(s, ckpt(s.output_dir, 10))
    jid = reg.find_by_key(s)
    assert jid is not None and J(reg, jid)["status"] == "queued"
    assert J(reg, jid)["latest_checkpoint"] == "/runs/demo/checkpoint-10"


# ------------------------------------------------------------------------------------------ 3. lost


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: the pid is free
    return p.pid


def test_running_attempt_of_a_dead_pid_on_this_host_is_lost(reg):
    def start(name: str, a: AttemptInfo) -> int:
        s = spec(name, f"/runs/{name}")
        reg.upsert_attempt(s, a)
        return reg.find_by_key(s)

    dead = start("dead", attempt(1, pid=_dead_pid()))
    alive = start("alive", attempt(1))
    # a dead pid on another host says nothing: that pid lives there, not here
    remote = start("remote", attempt(1, host="node-17.elsewhere", pid=_dead_pid()))
    # an attempt that ended is what it ended as, whatever its pid
    done_spec = spec("done", "/runs/done")
    reg.upsert_attempt(done_spec, attempt(1, pid=_dead_pid()))
    reg.upsert_attempt(done_spec, ended(1, "completed", pid=_dead_pid()))
    done = reg.find_by_key(done_spec)

    j = J(reg, dead)
    assert j["attempt_list"][0]["status"] == "lost" and j["status"] == "lost"
    assert J(reg, alive)["status"] == "running" and J(reg, alive)["attempt_list"][0]["status"] == "running"
    assert J(reg, remote)["status"] == "running"
    assert J(reg, done)["status"] == "succeeded"
    assert [x["id"] for x in L(reg, status="lost")] == [dead]
    assert {x["id"] for x in L(reg, status="running")} == {alive, remote}
    assert len(L(reg)) == 4


def test_running_attempt_with_a_stale_heartbeat_is_lost(reg, monkeypatch):
    monkeypatch.delenv("MEDSCALE_HEARTBEAT_S", raising=False)
    assert heartbeat_interval() == 30
    s = spec()
    other = spec("quiet-but-ended", "/runs/ended")
    reg.upsert_attempt(s, attempt(1))  # alive pid on this host: only the heartbeat can make it lost
    reg.upsert_attempt(other, ended(1, "preempted"))
    jid, oid = reg.find_by_key(s), reg.find_by_key(other)
    assert J(reg, jid)["status"] == "running"

    monkeypatch.setenv("MEDSCALE_HEARTBEAT_S", "0.05")
    assert heartbeat_interval() == 0.05
    time.sleep(4 * 0.05 + 0.15)
    j = J(reg, jid)
    assert j["attempt_list"][0]["status"] == "lost" and j["status"] == "lost"
    assert [x["id"] for x in L(reg, status="lost")] == [jid]
    assert L(reg, status="running") == []
    assert J(reg, oid)["status"] == "preempted"  # ended attempts never go lost

    monkeypatch.setenv("MEDSCALE_HEARTBEAT_S", "30")
    reg.upsert_attempt(s, attempt(1, step=5))  # a heartbeat brings it back
    assert J(reg, jid)["status"] == "running" and L(reg, status="lost") == []


def test_heartbeat_threshold_is_four_intervals(monkeypatch):
    from medscale.registry.models import Attempt
    from medscale.registry.store import attempt_state

    monkeypatch.setenv("MEDSCALE_HEARTBEAT_S", "10")
    now = utcnow()
    a = Attempt(status="running", host=HOST, pid=os.getpid(), heartbeat_at=now - timedelta(seconds=39))
    assert attempt_state(a, now) == "running"
    a.heartbeat_at = now - timedelta(seconds=41)
    assert attempt_state(a, now) == "lost"
    a.status = "completed"
    assert attempt_state(a, now) == "completed"


# ------------------------------------------------------------------------------------------ 4. cancel


def test_cancel_a_running_job_is_seen_at_the_next_heartbeat(reg):
    s = spec()
    assert reg.upsert_attempt(s, attempt(1)) is False
    jid = reg.find_by_key(s)
    assert reg.request_cancel(jid) == CancelOutcome.STOPPING
    j = J(reg, jid)
    assert j["status"] == "running" and j["cancel_requested"] is True  # it still runs until it saves
    assert reg.upsert_attempt(s, attempt(1, step=12)) is True
    assert reg.upsert_attempt(s, attempt(1, step=13)) is True  # and keeps saying so
    assert reg.upsert_attempt(s, ended(1, "cancelled", step=13)) is True
    assert J(reg, jid)["status"] == "cancelled"
    # `medscale jobs resume` later: a new launch after the cancel is a fresh request to run
    assert reg.upsert_attempt(s, attempt(2, resumed_from="/runs/demo/checkpoint-13"), launched_at=utcnow()) is False
    j = J(reg, jid)
    assert j["cancel_requested"] is False and j["status"] == "running"
    assert reg.upsert_attempt(s, attempt(2, step=14)) is False


@pytest.mark.parametrize("stopped", ["preempted", "failed"])
def test_cancel_a_stopped_job_marks_it_cancelled(reg, stopped):
    s = spec()
    reg.upsert_attempt(s, attempt(1))
    reg.upsert_attempt(s, ended(1, stopped))
    jid = reg.find_by_key(s)
    assert reg.request_cancel(jid) == CancelOutcome.CANCELLED
    j = J(reg, jid)
    assert j["status"] == "cancelled" and j["cancel_requested"] is True
    assert L(reg, status="cancelled")[0]["id"] == jid
    # a person who runs it again afterwards (a launch after the cancel) starts a real attempt
    assert reg.upsert_attempt(s, attempt(2), launched_at=utcnow()) is False
    j = J(reg, jid)
    assert j["cancel_requested"] is False and j["status"] == "running"


def test_a_cancel_made_while_an_attempt_is_starting_takes_effect(reg):
    """Defect: `jobs cancel` while a new attempt was starting printed "marked cancelled", then the new attempt
    cleared the request and trained to the end. An attempt launched before the cancel now obeys it."""
    s = spec()
    reg.upsert_attempt(s, attempt(1))
    reg.upsert_attempt(s, ended(1, "preempted"))
    jid = reg.find_by_key(s)
    launched = utcnow()  # e.g. SLURM requeued the job; its process is starting
    time.sleep(0.01)
    assert reg.request_cancel(jid) == CancelOutcome.CANCELLED
    assert reg.upsert_attempt(s, attempt(2), launched_at=launched) is True, "the starting attempt must stop"
    assert J(reg, jid)["cancel_requested"] is True
    reg.upsert_attempt(s, ended(2, "cancelled"), launched_at=launched)
    assert J(reg, jid)["status"] == "cancelled"


@pytest.mark.parametrize("final", ["completed", "cancelled"])
def test_cancelling_a_finished_job_changes_nothing(reg, final):
    """Defect: cancelling a finished job flipped it to `cancelled`."""
    s = spec()
    reg.upsert_attempt(s, attempt(1))
    reg.upsert_attempt(s, ended(1, final))
    jid = reg.find_by_key(s)
    before = J(reg, jid)["status"]
    assert reg.request_cancel(jid) == CancelOutcome.NOTHING
    assert J(reg, jid)["status"] == before and J(reg, jid)["cancel_requested"] is False


def test_cancel_only_touches_its_job(reg):
    a, b = spec("a", "/runs/a"), spec("b", "/runs/b")
    reg.upsert_attempt(a, attempt(1))
    reg.upsert_attempt(b, attempt(1))
    reg.request_cancel(reg.find_by_key(a))
    assert reg.upsert_attempt(a, attempt(1)) is True
    assert reg.upsert_attempt(b, attempt(1)) is False


# ------------------------------------------------------------------------------------------ 5. find


def test_find_by_id_name_ambiguous_and_unknown(reg):
    reg.upsert_attempt(spec("alpha", "/runs/alpha-1"), attempt(1))
    reg.upsert_attempt(spec("alpha", "/runs/alpha-2"), attempt(1))
    reg.upsert_attempt(spec("beta", "/runs/beta"), attempt(1))
    a1, a2, b = (reg.find_by_key(spec(n, o)) for n, o in
                 (("alpha", "/runs/alpha-1"), ("alpha", "/runs/alpha-2"), ("beta", "/runs/beta")))
    assert len({a1, a2, b}) == 3
    assert reg.find(str(b)) == b and reg.find(str(a2)) == a2
    assert reg.find("beta") == b
    with pytest.raises(RegistryError) as e:
        reg.find("alpha")
    msg = str(e.value)
    assert "alpha" in msg and str(a1) in msg and str(a2) in msg
    assert "/runs/alpha-1" in msg and "/runs/alpha-2" in msg
    for unknown in ("gamma", "99999"):
        with pytest.raises(RegistryError, match=unknown):
            reg.find(unknown)
    assert reg.find_by_key(spec("gamma", "/runs/gamma")) is None


def test_find_by_output_dir_disambiguates_a_shared_name(reg, tmp_path):
    one, two = str(tmp_path / "alpha-1"), str(tmp_path / "alpha-2")
    reg.upsert_attempt(spec("alpha", one), attempt(1))
    reg.upsert_attempt(spec("alpha", two), attempt(1))
    assert reg.find(two) == reg.find_by_key(spec("alpha", two))
    assert reg.find(one + "/") == reg.find_by_key(spec("alpha", one))  # same dir, however it is spelled
    with pytest.raises(RegistryError):
        reg.find(str(tmp_path / "alpha-3"))


# ------------------------------------------------------------------------------------------ 6. concurrency

N_WRITERS, OWN_CKPTS, SHARED_CKPTS, OWN_ATTEMPTS = 8, 20, 5, 3
SHARED = dict(name="shared", out="/runs/shared")


def _writer(url: str, idx: int, barrier, results) -> None:
    """One process: its own job (3 attempts, 20 checkpoints), plus the shared job's attempt 1 and checkpoints."""
    try:
        barrier.wait(120)  # every process opens the registry (and races the first migration) at once
        reg = Registry(url)
        own, shared = spec(f"job-{idx}", f"/runs/job-{idx}"), spec(**SHARED)
        host = f"worker-{idx}"  # not this host: the pid check of `lost` does not apply
        number = 0
        for i in range(OWN_CKPTS):
            want = i * OWN_ATTEMPTS // OWN_CKPTS + 1
            if want != number:
                number = want
                reg.upsert_attempt(own, attempt(number, host=host, pid=1000 + idx, step=i))
            reg.record_checkpoint(own, ckpt(own.output_dir, i, attempt_number=number, metrics={"loss": 1 / (i + 1)}))
            if i % (OWN_CKPTS // SHARED_CKPTS) == 0:
                reg.upsert_attempt(shared, attempt(1, host=host, pid=2000 + idx, step=i))
                reg.record_checkpoint(shared, CheckpointInfo(step=idx * 100 + i, path=f"/runs/shared/w{idx}-{i}",
                                                             verified=True, attempt_number=1))
        reg.upsert_attempt(own, ended(number, "completed", host=host, pid=1000 + idx, step=OWN_CKPTS))
        reg.close()
        results.put((idx, None))
    except BaseException:
        results.put((idx, traceback.format_exc()))
        sys.exit(1)


def test_concurrent_writer_processes(registry_url):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(N_WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(registry_url, i, barrier, results), daemon=True)
             for i in range(N_WRITERS)]
    for p in procs:
        p.start()
    errors: dict[int, str | None] = {}
    deadline = time.monotonic() + 900  # a hang guard, not a speed limit: a loaded machine is slow, not wrong
    try:
        while len(errors) < N_WRITERS:
            try:
                idx, err = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            errors[idx] = err
        for p in procs:
            p.join(timeout=max(1, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    failures = {i: e for i, e in errors.items() if e}
    assert not failures, "\n".join(f"--- writer {i} ---\n{e}" for i, e in failures.items())
    assert sorted(errors) == list(range(N_WRITERS)), f"no report from writers {set(range(N_WRITERS)) - set(errors)}"
    assert [p.exitcode for p in procs] == [0] * N_WRITERS
    assert not any("database is locked" in (e or "") for e in errors.values())

    reg = Registry(registry_url)
    try:
        assert counts(reg) == {"jobs": N_WRITERS + 1,
                               "attempts": N_WRITERS * OWN_ATTEMPTS + 1,
                               "checkpoints": N_WRITERS * (OWN_CKPTS + SHARED_CKPTS)}
        assert alembic_versions(registry_url) == [head_revision()]  # migrated once, one row
        for i in range(N_WRITERS):
            j = J(reg, reg.find(f"job-{i}"))
            assert [a["number"] for a in j["attempt_list"]] == [1, 2, 3]
            assert [a["status"] for a in j["attempt_list"]] == ["lost", "lost", "completed"]
            assert j["status"] == "succeeded"
            assert [c["step"] for c in j["checkpoints"]] == list(range(OWN_CKPTS))
        shared = J(reg, reg.find("shared"))
        assert shared["attempts"] == 1 and shared["status"] == "running"
        assert len(shared["checkpoints"]) == N_WRITERS * SHARED_CKPTS
        assert len({c["path"] for c in shared["checkpoints"]}) == N_WRITERS * SHARED_CKPTS
    finally:
        reg.close()


# ------------------------------------------------------------------------------------------ 7. schema versioning


def test_fresh_database_is_at_head_and_reopening_keeps_rows(registry_url):
    reg = Registry(registry_url)
    head = head_revision()
    assert alembic_versions(registry_url) == [head]
    reg.upsert_attempt(spec(), attempt(1))
    reg.record_checkpoint(spec(), ckpt("/runs/demo", 10))
    jid = reg.find("demo")
    reg.close()

    again = Registry(registry_url)
    try:
        assert again.find("demo") == jid
        assert counts(again) == {"jobs": 1, "attempts": 1, "checkpoints": 1}
        assert again.job(jid).latest_checkpoint == "/runs/demo/checkpoint-10"
        assert alembic_versions(registry_url) == [head]
    finally:
        again.close()


def _upgrade_to(url: str, revision: str) -> None:
    """Bring an empty database to an older revision, as an older medscale left it."""
    from alembic import command
    from alembic.config import Config

    from medscale.registry.engine import MIGRATIONS, make_engine

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def test_a_registry_made_by_the_first_schema_upgrades_with_its_rows(registry_url):
    """0001 -> head on a registry file written by medscale 0.1: SLURM / Ray ids move into launcher_ids, every job
    becomes a `train` job, and nothing is lost."""
    _upgrade_to(registry_url, "0001")
    engine = create_engine(registry_url)
    try:
        with engine.begin() as c:
            c.execute(text("INSERT INTO jobs (id, name, output_dir, status, launcher, recipe_yaml, fingerprint, "
                           "cancel_requested, created_at, updated_at) VALUES (1, 'old', '/runs/old', 'preempted', "
                           "'slurm', 'name: old', 'fp', false, '2026-11-01 10:00:00', '2026-11-01 10:00:00')"))
            for number, slurm, ray in ((1, "4242", None), (2, None, "raysubmit_7"), (3, None, None)):
                c.execute(text("INSERT INTO attempts (job_id, number, status, launcher, host, pid, world_size, "
                               "slurm_job_id, ray_job_id, fingerprint, step, started_at, heartbeat_at) VALUES "
                               "(1, :n, 'preempted', 'slurm', 'node1', 7, 4, :s, :r, 'fp', 10, '2026-11-01 10:00:00', "
                               "'2026-11-01 10:00:00')"), {"n": number, "s": slurm, "r": ray})
    finally:
        engine.dispose()
    reg = Registry(registry_url)
    try:
        assert alembic_versions(registry_url) == [head_revision()]
        job = reg.job(reg.find("old"))
        assert (job.kind, job.status, job.launcher, job.launcher_options) == ("train", "preempted", "slurm", {})
        assert [a.launcher_ids for a in job.attempt_list] == [{"slurm_job_id": "4242"},
                                                              {"ray_job_id": "raysubmit_7"}, {}]
        assert [a.world_size for a in job.attempt_list] == [4, 4, 4]
        reg.upsert_attempt(spec("old", "/runs/old", launcher="slurm"), attempt(4))  # and it takes new rows
        assert reg.job(job.id).attempts == 4
    finally:
        reg.close()


def test_newer_schema_is_refused(registry_url):
    Registry(registry_url).close()
    engine = create_engine(registry_url)
    try:
        with engine.begin() as c:
            c.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    finally:
        engine.dispose()
    with pytest.raises(RegistryError, match=r"(?s)ffff.*newer.*upgrade medscale"):
        Registry(registry_url)
    assert alembic_versions(registry_url) == ["ffff"]  # left as it was


# ------------------------------------------------------------------------------------------ 8. secrets


def test_redact_hides_the_password():
    url = "postgresql+psycopg://u:topsecret@h/db"
    assert redact(url) == "postgresql+psycopg://u:***@h/db"
    assert redact("sqlite:////tmp/registry.db") == "sqlite:////tmp/registry.db"
    assert "topsecret" not in redact("not a url :// u:topsecret@")
    assert scrub('connection to "u:topsecret@h" failed', url) == 'connection to "u:***@h" failed'


def test_unreachable_registry_fails_fast_without_leaking_the_password():
    url = "postgresql+psycopg://u:topsecret@127.0.0.1:1/db"  # nothing listens on port 1
    t0 = time.monotonic()
    with pytest.raises(RegistryError) as e:
        Registry(url)
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "topsecret" not in msg
    assert "***" in msg and redact(url) in msg
    assert "unreachable" in msg
    shown = "".join(traceback.format_exception(e.value))  # what a crash would print
    assert "topsecret" not in shown


# ------------------------------------------------------------------------------------------ 9. default URL


def test_default_url_is_a_wal_sqlite_file_in_medscale_home(medscale_home, monkeypatch):
    monkeypatch.delenv("MEDSCALE_REGISTRY_URL", raising=False)
    db = medscale_home / "registry.db"
    assert not db.exists()
    reg = Registry()
    try:
        assert reg.url == f"sqlite:///{db}"
        reg.upsert_attempt(spec(), attempt(1))
        assert db.is_file()
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    finally:
        reg.close()


def test_registry_url_env_overrides_the_default(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/elsewhere/reg.db"
    monkeypatch.setenv("MEDSCALE_REGISTRY_URL", url)
    reg = Registry()
    try:
        assert reg.url == url and (tmp_path / "elsewhere" / "reg.db").is_file()
    finally:
        reg.close()
