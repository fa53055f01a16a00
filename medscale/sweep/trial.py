"""The `trial` entry (medscale.jobs.launch.ENTRIES): what every process of a sweep trial runs.

A trial trains its recipe as one attempt of its job (`medscale.train.run.run`: held-out eval loss at every eval step,
the benchmark verdict at the end when the recipe lists `eval.benchmarks`), then makes sure the measurements the
leaderboard ranks by exist: a run that could not score its benchmarks itself (ZeRO-3 skips the end-of-run verdict)
has its final adapter scored here, and the results stored against the job. Nothing here knows about Ray: the sweep
driver starts this entry like any launcher does, and stops it like one too (`forward_stop`).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Callable, Sequence

from medscale.dist import DistContext
from medscale.jobs.kinds import JobKind
from medscale.recipe import Recipe
from medscale.status import AttemptStatus

log = logging.getLogger("medscale.sweep")

# How long a stopped sweep waits for its trials to save and end (as launcher.local.SHUTDOWN_GRACE_S: a large model
# on slow storage saves for minutes); a trial still running then dies with the sweep's Ray, without its checkpoint.
STOP_WAIT_S = 300.0
# what the trial's stop flag reads as the same stop
FORWARDED = {AttemptStatus.PREEMPTED: signal.SIGTERM, AttemptStatus.CANCELLED: signal.SIGINT}


def run_trial(recipe: Recipe, launch=None, callbacks: Sequence = ()):
    """Train, then evaluate what is missing; returns the run summary on rank 0 (None on other ranks)."""
    from medscale.train.run import run

    summary = run(recipe, launch, callbacks, kind=JobKind.TRIAL)
    one = DistContext.planned(recipe.dist).world_size == 1
    if summary is not None and recipe.eval.benchmarks and not summary.benchmarks and one:
        score_final_adapter(recipe)
    return summary


def score_final_adapter(recipe: Recipe) -> None:
    """Score the job's final adapter on `eval.benchmarks` and store the results against the job (by its registry
    id, so they are the job's rows; by its output dir when the registry cannot be reached: the report has them)."""
    from medscale.eval.run import run_eval
    from medscale.eval.spec import new_eval_spec
    from medscale.registry import JobSpec, Registry, RegistryError

    out = os.path.abspath(recipe.train.output_dir)
    ref = out
    try:
        with Registry() as reg:
            job_id = reg.find_by_key(JobSpec(recipe.name, out, "", "", ""))
        ref = str(job_id) if job_id is not None else out
    except RegistryError as e:
        log.warning("%s: scoring %s by its folder", e, out)
    e = recipe.eval
    report = run_eval(new_eval_spec(dict(model=ref, benchmarks=list(e.benchmarks), mode=e.benchmark_mode,
                                         shots=e.shots, seed=recipe.train.seed, data_dir=e.data_dir,
                                         batch_size=e.per_device_eval_batch_size, generation=recipe.generation)))
    for r in report.results:
        log.info("trial %s: %s %.1f%% (95%% CI %.1f-%.1f, n=%d)", recipe.name, r.benchmark, 100 * r.acc,
                 100 * r.ci_low, 100 * r.ci_high, r.n)


def forward_stop(output_dirs: dict[str, str], status: AttemptStatus, echo: Callable[[str], None],
                 wait_s: float = STOP_WAIT_S) -> None:
    """A sweep driver that is stopped passes the stop on to every trial running on this host, through the PID its
    attempt recorded (only while that process is still the attempt's own: PID and start time, never a process that
    reuses the PID), and waits, bounded, for each to save a verified checkpoint and end `status`: the Ray shutdown
    that follows would kill them unsaved (`lost`). A trial still starting (no attempt recorded) has nothing to save."""
    from medscale.jobs.record import read_journal
    from medscale.registry import pid_alive

    running = {}
    for label, out in output_dirs.items():
        journal = read_journal(out)
        a = journal.last if journal else None
        if (a and a.status == AttemptStatus.RUNNING and a.host == socket.gethostname()
                and pid_alive(a.pid, a.started_at)):
            os.kill(a.pid, FORWARDED[status])
            running[label] = (out, a)
            echo(f"medscale: trial {label}: stopping ({status}): it saves a verified checkpoint at its next step")
    if not running:
        return
    deadline = time.monotonic() + wait_s
    while running and time.monotonic() < deadline:
        time.sleep(0.5)
        for label, (out, a) in list(running.items()):
            if not pid_alive(a.pid, a.started_at):
                del running[label]
                end = read_journal(out).last
                echo(f"medscale: trial {label}: {end.status}" + (f": {end.exit_reason}" if end.exit_reason else ""))
    for label in running:
        echo(f"medscale: trial {label}: still running after {wait_s:.0f} s: stopped without saving")
    echo("medscale: running the sweep again resumes its stopped trials from their verified checkpoints")
