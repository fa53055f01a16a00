"""The eval kind's run: one process of an evaluation job (`python -m medscale.jobs eval REF`, what `medscale eval`
runs through its launcher and `medscale submit ... --entry eval RECIPE` on a cluster).

An evaluation is a job like a training (kind `eval`, its spec medscale.eval.spec.EvalSpec): each execution is an
attempt in its folder's record and the registry, ending completed, failed, preempted or cancelled (or found lost),
and `medscale jobs show` lists them. Questions are sharded over as many processes as the launcher started; every
question's score is kept in the job's folder as it finishes, so the next attempt of a killed or stopped
evaluation scores only the rest. The report (eval.json, eval.md) is written there at the end; the results are
stored against the job and checkpoint they measured."""
from __future__ import annotations

from medscale.dist import DistContext
from medscale.eval.spec import EvalSpec, as_eval_spec
from medscale.recipe import Recipe


def run_job(spec: EvalSpec | Recipe, launch=None, callbacks=()):
    """The `eval` entry (same signature as medscale.train.run.run; a recipe: its trained model against its base).
    Returns the EvalReport on rank 0."""
    from medscale.eval.run import run_eval
    from medscale.jobs.attempt import Attempt
    from medscale.jobs.kinds import JobKind
    from medscale.jobs.launch import LaunchInfo
    from medscale.jobs.record import write_text_atomic
    from medscale.jobs.stop import stop_flag

    flag = stop_flag()
    flag.install(at_once=True)  # scores are kept as they finish: a stop ends the attempt preempted / cancelled at once
    ctx, spec = DistContext.from_env(), as_eval_spec(spec)
    with Attempt(spec, launch or LaunchInfo.from_env(), ctx.rank, ctx.world_size, kind=JobKind.EVAL,
                 stop=flag) as attempt:
        flag.raise_if_set(0)
        report = run_eval(spec, scores_dir=str(attempt.out))
        if ctx.is_main:
            write_text_atomic(attempt.out / "eval.json", report.to_json(indent=1))
            write_text_atomic(attempt.out / "eval.md", report.to_markdown())
    return report if ctx.is_main else None
