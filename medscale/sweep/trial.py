"""The `trial` entry (medscale.jobs.launch.ENTRIES): what every process of a sweep trial runs.

A trial trains its recipe as one attempt of its job (`medscale.train.run.run`: held-out eval loss at every eval step,
the benchmark verdict at the end when the recipe lists `eval.benchmarks`), then makes sure the measurements the
leaderboard ranks by exist: a run that could not score its benchmarks itself (ZeRO-3 skips the end-of-run verdict)
has its final adapter scored here, and the results stored against the job. Nothing here knows about Ray: the sweep
driver starts this entry like any launcher does.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

from medscale.recipe import Recipe

log = logging.getLogger("medscale.sweep")


def run_trial(recipe: Recipe, launch=None, callbacks: Sequence = ()):
    """Train, then evaluate what is missing; returns the run summary on rank 0 (None on other ranks)."""
    from medscale.train.run import run

    summary = run(recipe, launch, callbacks, kind="trial")
    world = recipe.dist.num_processes * recipe.dist.num_machines
    if summary is not None and recipe.eval.benchmarks and not summary.benchmarks and world == 1:
        score_final_adapter(recipe)
    return summary


def score_final_adapter(recipe: Recipe) -> None:
    """Score the job's final adapter on `eval.benchmarks` and store the results against the job (by its registry
    id, so they are the job's rows; by its output dir when the registry cannot be reached: the report has them)."""
    from medscale.eval.run import run_eval
    from medscale.registry import JobSpec, Registry, RegistryError

    out = os.path.abspath(recipe.train.output_dir)
    ref = out
    try:
        reg = Registry()
        try:
            job_id = reg.find_by_key(JobSpec(recipe.name, out, "", "", ""))
        finally:
            reg.close()
        ref = str(job_id) if job_id is not None else out
    except RegistryError as e:
        log.warning("%s: scoring %s by its folder", e, out)
    e = recipe.eval
    report = run_eval(ref, list(e.benchmarks), mode=e.benchmark_mode, shots=e.shots, seed=recipe.train.seed,
                      data_dir=e.data_dir, batch_size=e.per_device_eval_batch_size, generation=recipe.generation)
    for r in report.results:
        log.info("trial %s: %s %.1f%% (95%% CI %.1f-%.1f, n=%d)", recipe.name, r.benchmark, 100 * r.acc,
                 100 * r.ci_low, 100 * r.ci_high, r.n)
