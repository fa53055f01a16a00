"""One attempt of a job: its record on disk, its mirror in the registry, and how it stops.

The output dir is the source of truth: `medscale_job.json` (the job and its attempts, rewritten
atomically at each attempt's start and end) and the checkpoint manifests. The registry is an index
of them plus live heartbeats, written by global rank 0 only; when it cannot be reached, training
goes on, the error is logged loudly, and the rows are rebuilt from disk on reconnect or by
`medscale jobs sync`.

Stopping: SIGTERM / SIGUSR1 (preemption) or a cancel seen by the heartbeat set a flag; every rank
agrees on it at the next optimizer-step boundary (one all-reduce), the Trainer saves a verified
checkpoint there, and the attempt ends `preempted` (exit code EXIT_PREEMPTED: "requeue me") or
`cancelled`.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from medscale.recipe import Recipe, RecipeError
from medscale.registry import (AttemptInfo, CheckpointInfo, JobSpec, Registry, default_url, heartbeat_interval,
                               pid_alive, redact, scrub)
from medscale.registry.models import utcnow
from medscale.train.checkpoint import (checkpoint_dirs, checkpoint_step, read_manifest, write_json_atomic,
                                       write_text_atomic)

log = logging.getLogger("medscale.lifecycle")

JOURNAL = "medscale_job.json"
RECIPE_FILE = "recipe.resolved.yaml"
STOP_NONE, STOP_PREEMPTED, STOP_CANCELLED = 0, 1, 2  # the larger wins when ranks disagree: a cancel is final


@dataclass
class LaunchInfo:
    """Who started this process, for the attempt row. Launchers set MEDSCALE_LAUNCHER; SLURM/Ray ids are read
    from the variables those systems set."""

    launcher: str = "python"
    slurm_job_id: str | None = None
    ray_job_id: str | None = None

    @classmethod
    def from_env(cls, env=os.environ) -> "LaunchInfo":
        slurm = env.get("SLURM_JOB_ID")
        if env.get("SLURM_ARRAY_JOB_ID"):
            slurm = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
        launcher = env.get("MEDSCALE_LAUNCHER") or (
            "slurm" if slurm else "accelerate" if "ACCELERATE_MIXED_PRECISION" in env else "python")
        return cls(launcher, slurm, env.get("MEDSCALE_RAY_JOB_ID"))


# --------------------------------------------------------------------------- the on-disk record

def _attempt_to_json(a: AttemptInfo) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(a).items()}


def _attempt_from_json(d: dict) -> AttemptInfo:
    return AttemptInfo(**{k: (datetime.fromisoformat(v) if k in ("started_at", "ended_at") and v else v)
                          for k, v in d.items()})


def read_journal(output_dir: str | Path) -> dict | None:
    path = Path(output_dir) / JOURNAL
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def sync_output_dir(reg: Registry, output_dir: str | Path) -> dict:
    """Rebuild a job's rows from its output dir: the job, every attempt, every checkpoint (verified or not),
    and mark the registry's checkpoints that are gone from disk as deleted."""
    out = Path(os.path.abspath(output_dir))
    journal = read_journal(out)
    if journal is None:
        raise RecipeError(f"{out}: no {JOURNAL} (not a medscale output dir, or no attempt ever started there)")
    recipe_file = out / RECIPE_FILE
    spec = JobSpec(journal["name"], str(out), journal["launcher"],
                   recipe_file.read_text(encoding="utf-8") if recipe_file.is_file() else "", journal["fingerprint"])
    attempts = [_attempt_from_json(a) for a in journal["attempts"]]
    for i, a in enumerate(attempts):
        reg.upsert_attempt(spec, a, current=i == len(attempts) - 1, beat=False)
    on_disk = set()
    verified = 0
    for step, path in checkpoint_dirs(out):
        manifest = read_manifest(path)
        on_disk.add(str(path))
        verified += manifest is not None
        m = manifest or {}
        reg.record_checkpoint(spec, CheckpointInfo(step, str(path), manifest is not None, m.get("attempt", 0),
                                                   m.get("metrics", {}), m.get("size_bytes", 0)))
    job_id = reg.find_by_key(spec)
    gone = [c["path"] for c in reg.job(job_id)["checkpoints"] if c["path"] not in on_disk and not c["deleted"]]
    reg.mark_deleted(spec, gone)
    return {"job": spec.name, "output_dir": str(out), "attempts": len(attempts),
            "checkpoints": len(on_disk), "verified": verified, "marked_deleted": len(gone)}


class SafeRegistry:
    """The registry as a training run sees it: a failure is logged loudly and skipped, never raised; calls
    are retried after RETRY_S, and the first call that gets through first restores the rows from disk."""

    RETRY_S = 60.0

    def __init__(self, url: str | None, output_dir: str):
        self.url, self.output_dir = url or default_url(), output_dir
        self._reg: Registry | None = None
        self._retry_at, self._behind = 0.0, False
        self._lock = threading.Lock()  # the heartbeat thread and the training thread share it

    def call(self, method: str, *args):
        with self._lock:
            if time.monotonic() < self._retry_at:
                return None
            try:
                if self._reg is None:
                    self._reg = Registry(self.url)
                if self._behind:
                    sync_output_dir(self._reg, self.output_dir)
                    self._behind = False
                    log.warning("registry %s reachable again: rows restored from %s", redact(self.url), self.output_dir)
                return getattr(self._reg, method)(*args)
            except Exception as e:
                self._behind, self._retry_at = True, time.monotonic() + self.RETRY_S
                reason = str(e).splitlines()[0] if str(e) else ""
                log.error("REGISTRY UNREACHABLE: %s failed on %s (%s: %s). Training continues; the job's rows "
                          "will be restored on reconnect or by `medscale jobs sync %s`.", method, redact(self.url),
                          type(e).__name__, scrub(reason, self.url), self.output_dir)
                return None


class JobTracker:
    """Global rank 0's bookkeeping for one attempt; on other ranks every method does nothing."""

    def __init__(self, recipe: Recipe, launch: LaunchInfo, rank: int, world_size: int,
                 registry_url: str | None = None):
        self.recipe, self.launch, self.active, self.world = recipe, launch, rank == 0, world_size
        self.out = Path(os.path.abspath(recipe.train.output_dir))
        self.spec = JobSpec(recipe.name, str(self.out), launch.launcher, recipe.to_yaml(), recipe.fingerprint())
        self.registry = SafeRegistry(registry_url, str(self.out)) if self.active else None
        self.attempt: AttemptInfo | None = None
        self.journal: dict = {}
        self.step = 0
        self._beat_stop = threading.Event()
        self._beat: threading.Thread | None = None

    def check_not_running(self) -> None:
        """Two live runs in one output dir would overwrite each other's checkpoints: refuse the second."""
        if not self.active:
            return
        journal = read_journal(self.out) or {}
        last = (journal.get("attempts") or [None])[-1]
        if (last and last["status"] == "running" and last["host"] == socket.gethostname()
                and last["pid"] != os.getpid() and pid_alive(last["pid"])):
            raise RecipeError(f"job {self.recipe.name} is already running in {self.out} (attempt {last['number']}, "
                              f"pid {last['pid']}): stop it (`medscale jobs cancel {self.recipe.name}`) "
                              f"or choose another train.output_dir")

    def start(self, resumed_from: Path | None, on_cancel) -> None:
        if not self.active:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        journal = read_journal(self.out) or {"format": 1, "name": self.recipe.name, "attempts": []}
        journal.update(output_dir=str(self.out), launcher=self.launch.launcher, fingerprint=self.recipe.fingerprint())
        self.attempt = AttemptInfo(
            number=len(journal["attempts"]) + 1, launcher=self.launch.launcher, host=socket.gethostname(),
            pid=os.getpid(), fingerprint=self.recipe.fingerprint(), world_size=self.world,
            slurm_job_id=self.launch.slurm_job_id, ray_job_id=self.launch.ray_job_id,
            resumed_from=str(resumed_from) if resumed_from else None,
            step=checkpoint_step(resumed_from) if resumed_from else 0)
        for old in journal["attempts"]:  # an attempt that never ended was killed
            if old["status"] == "running":
                old.update(status="lost", exit_reason=old.get("exit_reason") or "never ended (killed or node lost)")
        journal["attempts"].append(_attempt_to_json(self.attempt))
        self.journal = journal
        write_text_atomic(self.out / RECIPE_FILE, self.recipe.to_yaml())
        write_json_atomic(self.out / JOURNAL, journal)
        self.step = self.attempt.step
        self.registry.call("upsert_attempt", self.spec, self.attempt)
        log.info("job %s attempt %d started%s", self.recipe.name, self.attempt.number,
                 f", resuming from {resumed_from}" if resumed_from else "")
        self._beat = threading.Thread(target=self._heartbeat, args=(on_cancel,), name="medscale-heartbeat",
                                      daemon=True)
        self._beat.start()

    def _heartbeat(self, on_cancel) -> None:
        while not self._beat_stop.wait(heartbeat_interval()):
            self.attempt.step = self.step
            if self.registry.call("upsert_attempt", self.spec, self.attempt):
                on_cancel()

    def checkpoint_saved(self, ckpt: Path, manifest: dict) -> None:
        if self.active:
            self.registry.call("record_checkpoint", self.spec, CheckpointInfo(
                manifest["step"], str(ckpt), True, self.attempt.number, manifest.get("metrics", {}),
                manifest["size_bytes"]))

    def checkpoints_deleted(self, paths: list[Path]) -> None:
        if self.active and paths:
            self.registry.call("mark_deleted", self.spec, [str(p) for p in paths])

    def end(self, status: str, reason: str | None = None) -> None:
        if not self.active or self.attempt is None:
            return
        self._beat_stop.set()
        if self._beat is not None:
            self._beat.join(timeout=30)
        self.attempt.status, self.attempt.exit_reason = status, reason
        self.attempt.step, self.attempt.ended_at = self.step, utcnow()
        self.journal["attempts"][-1] = _attempt_to_json(self.attempt)
        write_json_atomic(self.out / JOURNAL, self.journal)
        self.registry.call("upsert_attempt", self.spec, self.attempt)
        log.info("job %s attempt %d ended: %s%s", self.recipe.name, self.attempt.number, status,
                 f" ({reason})" if reason else "")


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (preemption) or by a cancel request; read at step boundaries."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.code = STOP_NONE
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # e.g. inside a Ray worker thread: the host process owns its signals
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum, _frame) -> None:
        self.code = max(self.code, STOP_PREEMPTED)

    def cancel(self) -> None:
        self.code = STOP_CANCELLED
