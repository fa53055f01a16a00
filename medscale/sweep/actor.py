"""A sweep trial inside Ray Tune: its Tune actor starts the trial entry as a process of its own and reports the
evaluations the run records in the registry as Tune results; the Trainable that holds it, and ASHA on eval loss.

The trial is an ordinary job: its attempts, verified checkpoints and metrics go to the registry, and it resumes from
its own verified checkpoints, never from Tune's state.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from medscale.registry import Registry

log = logging.getLogger("medscale.sweep")

# (recipe, recipe ref, overrides, entry module) -> the command that runs the entry on recipe.dist.num_processes
# processes of one machine (launcher.local.entry_command)
CommandFor = Callable[..., list[str]]
POLL_S = 1.0


class TrialFailed(RuntimeError):
    """A trial's process ended without finishing; the message is its reason (the attempt's, or its last words)."""


class TrialProcess:
    """One trial's entry process, watched from its Tune actor: new evaluations come back from the registry as Tune
    results, the end of the process as the final one (or TrialFailed with its reason)."""

    def __init__(self, trial: dict, command: list[str]):
        from medscale.jobs.launch import LaunchInfo, popen_tied

        self.t = trial
        Path(trial["log"]).parent.mkdir(parents=True, exist_ok=True)
        self.log = open(trial["log"], "ab")
        self.log.write(f"\n==== {time.strftime('%F %T')} trial {trial['label']}: {' '.join(command)}\n".encode())
        self.log.flush()
        launch = LaunchInfo("local", options={"sweep": trial["sweep"], "trial": trial["label"]})
        self.attempts_before = self._attempts()
        # the trial starts where the sweep was started (relative paths in recipes), when that folder is on this node
        cwd = trial["cwd"] if Path(trial["cwd"]).is_dir() else None
        # tied to this actor: a Tune actor that dies (the driver killed, a node lost) takes its trial with it
        self.proc = popen_tied(command, {**os.environ, **launch.env()}, cwd=cwd, stdout=self.log,
                               stderr=subprocess.STDOUT)
        self.seen = -1
        self.reg: Registry | None = None

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
            ended = self.proc.poll() is not None
            new = self._evaluations()
            if new and not (ended and len(new) == 1 and self.proc.returncode == 0):
                self.seen = new[0]["step"]
                return new[0]
            if ended:
                return self._final(new)
            time.sleep(POLL_S)

    def _final(self, last: list[dict]) -> dict:
        from medscale.jobs.record import RunSummary, read_journal

        code = self.proc.returncode
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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if self.reg is not None:
            self.reg.close()


def trial_trainable():
    """The Tune Trainable class (built on first use: importing Ray Tune is slow)."""
    from ray import tune

    class MedscaleTrial(tune.Trainable):
        def setup(self, config, command_for: CommandFor = None, trials: dict | None = None):
            from medscale.recipe import load_recipe

            t = trials[config["label"]]
            recipe = load_recipe(t["recipe"], t["overrides"])  # validated again where it runs
            self.trial = TrialProcess(t, command_for(recipe, t["recipe"], t["overrides"], "medscale.sweep"))

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
            super().__init__(time_attr="step", metric="eval_loss", mode="min", max_t=10**9,
                             grace_period=grace_period, reduction_factor=reduction_factor)
            self.stopped: dict[str, dict] = {}

        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP and not result.get("done"):
                self.stopped[trial.config["label"]] = {"step": result.get("step"),
                                                                "eval_loss": result.get("eval_loss")}
            return decision

    return RecordingAsha()
