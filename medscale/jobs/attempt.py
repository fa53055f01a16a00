"""One attempt of a job, as a context manager: its record on disk, its mirror in the registry, its heartbeat, and
the status it ends with.

    with Attempt(recipe, launch, rank, world, kind=JobKind.TRAIN, resumed_from=ckpt, step=N,
                 stop=stop_flag()) as attempt:
        ...  # train; attempt.step follows the Trainer; attempt.checkpoint_saved(...) after each verified save

On exit the attempt ends `completed`, `preempted` / `cancelled` (AttemptStopped, or StopRequested where nothing reads
the stop flag), `cancelled` (Ctrl-C twice) or `failed` with the exception's one-line reason; the exception is never
swallowed. Global rank 0 keeps the record; on other ranks the object is inert. The registry is written through RunRegistry: it never stops a run.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from pathlib import Path

from medscale.errors import AttemptStopped, StopRequested
from medscale.jobs.checkpoint import newest_saved, remove_torn_saves
from medscale.jobs.client import RunRegistry
from medscale.jobs.kinds import JobKind
from medscale.jobs.launch import LaunchInfo
from medscale.jobs.record import PRIVATE, RECIPE_FILE, Journal, read_journal, write_text_atomic
from medscale.jobs.stop import StopFlag
from medscale.registry import AttemptInfo, CheckpointInfo, MetricRow, heartbeat_interval, utcnow
from medscale.status import AttemptStatus

log = logging.getLogger("medscale.lifecycle")


def failure_reason(e: BaseException) -> str:
    """One line for the attempt's exit reason; a full disk says so plainly."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"no space left on device ({e.filename or 'while writing'}): free space or move train.output_dir"
    return f"{type(e).__name__}: {e}".splitlines()[0][:2000]


class Attempt:
    def __init__(self, recipe, launch: LaunchInfo, rank: int, world_size: int, *, kind: JobKind = JobKind.TRAIN,
                 resumed_from: Path | None = None, step: int = 0, changes: list[str] | None = None, stop: StopFlag,
                 registry_url: str | None = None):
        self.recipe, self.launch, self.kind, self.stop = recipe, launch, JobKind(kind), stop
        self.active, self.world = rank == 0, world_size
        self.out = Path(os.path.abspath(recipe.train.output_dir))
        self.resumed_from, self.changes = resumed_from, list(changes or [])
        self.step = step  # where it resumes (jobs.resume.StartPlan), 0 from the start
        self.registry = RunRegistry(registry_url, str(self.out)) if self.active else None
        self.info: AttemptInfo | None = None
        self.journal: Journal | None = None
        self.spec = None
        self._beat_stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------ start / end

    def __enter__(self) -> "Attempt":
        if not self.active:
            return self
        r = self.recipe
        self.out.mkdir(parents=True, exist_ok=True)
        journal = read_journal(self.out) or Journal(r.name, str(self.out))
        journal.output_dir, journal.kind, journal.fingerprint = str(self.out), self.kind, r.fingerprint()
        journal.launcher, journal.launcher_options = self.launch.launcher, self.launch.options
        for old in journal.attempts:  # an attempt that never ended was killed
            if old.status == AttemptStatus.RUNNING:
                old.status = AttemptStatus.LOST
                old.exit_reason = old.exit_reason or "never ended (killed or node lost)"
        self.info = AttemptInfo(
            number=len(journal.attempts) + 1, launcher=self.launch.launcher, host=socket.gethostname(),
            pid=os.getpid(), fingerprint=r.fingerprint(), world_size=self.world, launcher_ids=self.launch.ids,
            resumed_from=str(self.resumed_from) if self.resumed_from else None, step=self.step,
            recipe_changes=self.changes)
        journal.attempts.append(self.info)
        self.journal = journal
        recipe_yaml = r.to_yaml()
        self.spec = journal.spec(recipe_yaml)
        write_text_atomic(self.out / RECIPE_FILE, recipe_yaml, mode=PRIVATE)
        try:
            journal.save()
            if self.registry.attempt(self.spec, self.info, launched_at=self.launch.launched_at):
                self.stop.cancel("cancelled before it started (`medscale jobs cancel`)")
            log.info("job %s attempt %d started%s%s", r.name, self.info.number,
                     f", resuming from {self.resumed_from}" if self.resumed_from else "",
                     f" (recipe changed since that checkpoint: {', '.join(self.changes)})" if self.changes else "")
            self._beat = threading.Thread(target=self._heartbeat, name="medscale-heartbeat", daemon=True)
            self._beat.start()
        except BaseException as e:  # a stop signal while starting (eval stops at once): end what was recorded
            self.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, _tb) -> bool:
        if exc is None:
            self._end(AttemptStatus.COMPLETED)
        elif isinstance(exc, AttemptStopped):
            self._end(AttemptStatus(exc.status), f"stopped at step {self.step}: {self.stop.reason or exc.status}"
                      + (" with a verified checkpoint" if exc.saved else ""))
        elif isinstance(exc, StopRequested):  # outside training: stopped where it was, nothing to save
            self._end(AttemptStatus(exc.status), f"stopped at once at step {self.step}: {self.stop.reason}")
        elif isinstance(exc, KeyboardInterrupt):
            self._remove_torn_saves()
            newest = newest_saved(self.out) if self.active else None
            self._end(AttemptStatus.CANCELLED, "interrupted (Ctrl-C twice): stopped without saving; the next run "
                      + (f"resumes from {newest}" if newest else "starts from the beginning"))
        elif self.stop.orphaned():
            # The launcher died (kill -9, OOM): this error is a peer rank dying with it, not the job failing.
            # Record nothing, stop beating: the attempt shows lost, as its other ranks leave it.
            self._beat_stop.set()
        else:
            self._remove_torn_saves()  # first: on a full disk this frees the space the record needs
            self._end(AttemptStatus.FAILED, failure_reason(exc))
        return False

    def _remove_torn_saves(self) -> None:
        if self.active:
            try:
                remove_torn_saves(self.out)
            except OSError as e:
                log.error("could not remove the unfinished checkpoint in %s: %s (the next start removes it)",
                          self.out, e)

    def _end(self, status: AttemptStatus, reason: str | None = None) -> None:
        if not self.active or self.info is None:
            return
        self._beat_stop.set()
        if self._beat is not None:
            self._beat.join(timeout=30)
        self.info.status, self.info.exit_reason = status, reason
        self.info.step, self.info.ended_at = self.step, utcnow()
        try:
            self.journal.save()
        except OSError as e:  # a full disk must not hide the reason the attempt ended with
            log.error("could not record the end of attempt %d in %s: %s", self.info.number, self.out, e)
        self.registry.ended(self.spec, self.info)
        self.registry.close()
        log.info("job %s attempt %d ended: %s%s", self.recipe.name, self.info.number, status.value,
                 f" ({reason})" if reason else "")

    def _heartbeat(self) -> None:
        while not self._beat_stop.wait(heartbeat_interval()):
            self.info.step = self.step
            if self.registry.attempt(self.spec, self.info):
                self.stop.cancel()

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_saved(self, ckpt: Path, manifest: dict) -> None:
        if not self.active:
            return
        if manifest["step"] not in self.journal.verified_steps:
            self.journal.verified_steps.append(manifest["step"])
            self.journal.save()
        self.registry.checkpoint(self.spec, CheckpointInfo(
            step=manifest["step"], path=str(ckpt), verified=True, attempt_number=self.info.number,
            metrics=manifest.get("metrics", {}), size_bytes=manifest["size_bytes"]))

    def results_measured(self, rows: list) -> None:
        """Measurements of this job made in the run (medscale.registry.ResultInfo rows: the tuned model and its
        base on the same questions), stored against the job."""
        if self.active and rows:
            self.registry.results(self.spec, rows)

    def metrics_logged(self, step: int, logs: dict) -> None:
        """What the run logged at `step` (loss, eval loss, lr, grad norm, ...), stored in the registry as it is
        logged; `jobs sync` restores it from trainer_state.json when the registry was away."""
        if self.active:
            self.registry.metrics(self.spec, [MetricRow.from_log(step, logs)])

    def checkpoints_deleted(self, paths: list[Path]) -> None:
        if self.active and paths:
            self.registry.deleted(self.spec, [str(p) for p in paths])
