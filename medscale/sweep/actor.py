"""A sweep trial inside Ray Tune: its Tune actor launches the trial entry through the local launcher (a process of
its own on the actor's node) and reports the evaluations the run records in the registry as Tune results; the
Trainable that holds it, and ASHA on eval loss.

The trial is an ordinary job: its attempts, verified checkpoints and metrics go to the registry, and it resumes from
its own verified checkpoints, never from Tune's state.
"""
from __future__ import annotations

import logging
import math
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from medscale.registry import Registry
from medscale.sweep.metric import EVAL_LOSS

if TYPE_CHECKING:
    from medscale.jobs.launch import Launcher, LaunchRequest

log = logging.getLogger("medscale.sweep")

# runner -> the local launcher whose runner it is (`launcher.local.LocalLauncher` with in_process=False: the CLI
# owns the launchers): every trial is started through the launcher protocol, prepare -> submit -> wait
LauncherFor = Callable[[Callable[[list[str], dict], int]], "Launcher"]
POLL_S = 1.0


def trial_request(recipe, ref: str, overrides: list[str], sweep: str, label: str) -> "LaunchRequest":
    """What a launcher is handed for one trial: its recipe, how to name it again where it runs, the trial entry,
    and the sweep and trial it is (recorded with its attempts)."""
    from medscale.jobs.kinds import JobKind
    from medscale.jobs.launch import LaunchRequest, entry_for

    return LaunchRequest(recipe, ref, list(overrides), entry_for(JobKind.TRIAL), {"sweep": sweep, "trial": label})


class TrialFailed(RuntimeError):
    """A trial's process ended without finishing; the message is its reason (the attempt's, or its last words)."""


class TrialProcess:
    """One trial, launched on this node by the local launcher (its pre-flight, its run plan, its process tied to
    this actor) and watched from its Tune actor: new evaluations come back from the registry as Tune results, the
    launcher's exit code as the final one (or TrialFailed with its reason)."""

    def __init__(self, trial: dict, launcher_for: LauncherFor):
        from medscale.recipe import load_recipe

        self.t = trial
        Path(trial["log"]).parent.mkdir(parents=True, exist_ok=True)
        self.log = open(trial["log"], "ab")
        self.attempts_before = self._attempts()
        self.proc: subprocess.Popen | None = None
        self.code: int | None = None
        self.error: BaseException | None = None
        self.stopping = False
        self.lock = threading.Lock()
        recipe = load_recipe(trial["recipe"], trial["overrides"])  # validated again where it runs
        request = trial_request(recipe, trial["recipe"], trial["overrides"], trial["sweep"], trial["label"])
        self.waiter = threading.Thread(target=self._launch, args=(launcher_for(self._run), request),
                                       name="medscale-trial", daemon=True)
        self.waiter.start()
        self.seen = -1
        self.reg: Registry | None = None

    def _run(self, command: list[str], env: dict) -> int:
        """The launcher's runner: the trial's process, tied to this actor (a Tune actor that dies, the driver killed
        or a node lost, takes its trial with it), its output in the trial's log, started where the sweep was started
        (relative paths in recipes) when that folder is on this node."""
        from medscale.errors import EXIT_PREEMPTED
        from medscale.jobs.launch import popen_tied

        cwd = self.t["cwd"] if Path(self.t["cwd"]).is_dir() else None
        with self.lock:
            if self.stopping:  # stopped before it started: nothing to save
                return EXIT_PREEMPTED
            self.log.write(f"\n==== {time.strftime('%F %T')} trial {self.t['label']}: {' '.join(command)}\n".encode())
            self.log.flush()
            self.proc = popen_tied(command, env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)
        return self.proc.wait()

    def _launch(self, launcher, request) -> None:
        """prepare (pre-flight on this node) -> submit -> wait; what fails is the trial's reason, raised at its next
        result (a Tune trial that fails in its actor's creation has no result to say so)."""
        try:
            self.code = launcher.wait(launcher.submit(launcher.prepare(request)))
        except BaseException as e:
            self.error = e

    def _attempts(self) -> int:
        from medscale.jobs.record import read_journal

        journal = read_journal(self.t["output_dir"])
        return len(journal.attempts) if journal else 0

    def _evaluations(self) -> list[dict]:
        try:
            self.reg = self.reg or Registry()
            rows = self.reg.metrics(self.t["job_id"], after_step=self.seen)
        except Exception as e:  # the registry away: no intermediate results; the end still comes from the summary
            log.warning("trial %s: cannot read its metrics (%s)", self.t["label"], e)
            return []
        return [{"step": m.step, "eval_loss": m.eval_loss, **{k: v for k, v in m.values.items()
                                                               if k.startswith(("bench/", "control/"))}}
                for m in rows if m.eval_loss is not None]

    def next_result(self) -> dict:
        """Block until the trial evaluates again (a Tune result) or ends (the final result, `done`)."""
        while True:
            ended = not self.waiter.is_alive()
            if self.error is not None:
                raise self.error
            new = self._evaluations()
            if new and not (ended and len(new) == 1 and self.code == 0):
                self.seen = new[0]["step"]
                return new[0]
            if ended:
                return self._final(new)
            time.sleep(POLL_S)

    def _final(self, last: list[dict]) -> dict:
        from medscale.jobs.record import RunSummary, read_journal

        code = self.code
        if code == 0:
            summary = RunSummary.load(self.t["output_dir"])
            final = summary.eval_loss_final if summary and summary.eval_loss_final is not None else math.nan
            return {**(last[0] if last else {}), "step": summary.global_step if summary else self.seen,
                    "eval_loss": final, "done": True}
        journal = read_journal(self.t["output_dir"])
        reason = None
        if journal and len(journal.attempts) > self.attempts_before and journal.last.exit_reason:
            reason = journal.last.exit_reason
        raise TrialFailed(reason or self._last_words() or f"the trial process exited with code {code}")

    def _last_words(self) -> str | None:
        """The trial's own one-line error (`medscale: error: ...`), else its last line of output."""
        self.log.flush()
        lines = [ln.strip() for ln in Path(self.t["log"]).read_text(encoding="utf-8", errors="replace")
                 .splitlines()[-200:] if ln.strip()]
        mine = [ln for ln in lines if ln.startswith("medscale:")]
        return (mine or lines or [None])[-1]

    def stop(self) -> None:
        """Ask a running trial to save a verified checkpoint and stop (as a preemption), and wait for it."""
        with self.lock:
            self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.waiter.join()
        self.log.close()
        if self.reg is not None:
            self.reg.close()


def trial_trainable():
    """The Tune Trainable class (built on first use: importing Ray Tune is slow)."""
    from ray import tune

    class MedscaleTrial(tune.Trainable):
        def setup(self, config, launcher_for: LauncherFor = None, trials: dict | None = None):
            self.trial = TrialProcess(trials[config["label"]], launcher_for)

        def step(self):
            return self.trial.next_result()

        def save_checkpoint(self, checkpoint_dir):
            # Tune asks at the end; the trial's own verified checkpoints are the real ones: point at them, copy nothing
            return {"output_dir": self.trial.t["output_dir"], "job_id": self.trial.t["job_id"]}

        def load_checkpoint(self, checkpoint):
            pass  # a trial resumes from its newest verified checkpoint (train.resume=auto), never from Tune's state

        def cleanup(self):
            self.trial.stop()

    return MedscaleTrial


def asha_scheduler(grace_period: int, reduction_factor: float):
    """ASHA on eval loss, remembering the trials it stopped (Tune ends those the same way as finished ones)."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingAsha(ASHAScheduler):
        def __init__(self):
            super().__init__(time_attr="step", metric=EVAL_LOSS.name, mode=EVAL_LOSS.mode, max_t=10**9,
                             grace_period=grace_period, reduction_factor=reduction_factor)
            self.stopped: dict[str, dict] = {}

        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP and not result.get("done"):
                self.stopped[trial.config["label"]] = {"step": result.get("step"),
                                                                "eval_loss": result.get("eval_loss")}
            return decision

    return RecordingAsha()
