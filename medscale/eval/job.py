"""An evaluation as a job (entry `eval`): what `medscale submit slurm|ray RECIPE --entry eval` runs on a cluster.

It evaluates the recipe's trained model (its output dir: the final adapter, or the newest verified checkpoint)
against the base it was tuned from on `eval.benchmarks` (default: the four Chinese medical sets), on as many
processes as the launcher started (questions are sharded). The evaluation is a job of its own, kind `eval`, named
`<recipe>.eval`, with its record and its report (eval.json, eval.md) in `<train.output_dir>/eval`; the results are
stored against the trained job and the checkpoint they measured."""
from __future__ import annotations

from pathlib import Path

from medscale.dist import DistContext
from medscale.recipe import Recipe


def eval_job_recipe(recipe: Recipe) -> Recipe:
    """The evaluation job's identity: its own name and output dir beside the trained job's."""
    data = recipe.model_dump(mode="json")
    data["name"] = f"{recipe.name}.eval"
    data["train"]["output_dir"] = str(Path(recipe.train.output_dir) / "eval")
    return Recipe.model_validate(data)


def run_job(recipe: Recipe, launch=None, callbacks=()):
    """The `eval` entry (same signature as medscale.train.run.run). Returns the EvalReport on rank 0."""
    from medscale.benchmarks import MEDICAL_ZH
    from medscale.eval.run import run_eval
    from medscale.jobs.attempt import Attempt
    from medscale.jobs.launch import LaunchInfo
    from medscale.jobs.record import write_text_atomic
    from medscale.jobs.stop import stop_flag

    flag = stop_flag()
    flag.install(at_once=True)  # nothing here saves progress: a stop ends the attempt preempted / cancelled at once
    job = eval_job_recipe(recipe)
    ctx, e = DistContext.from_env(), recipe.eval
    with Attempt(job, launch or LaunchInfo.from_env(), ctx.rank, ctx.world_size, kind="eval", stop=flag) as attempt:
        flag.raise_if_set(0)
        report = run_eval(recipe.train.output_dir, list(e.benchmarks) or list(MEDICAL_ZH), against="base",
                          mode=e.benchmark_mode, shots=e.shots, seed=recipe.train.seed, data_dir=e.data_dir,
                          batch_size=e.per_device_eval_batch_size, generation=recipe.generation)
        if ctx.is_main:
            write_text_atomic(attempt.out / "eval.json", report.to_json(indent=1))
            write_text_atomic(attempt.out / "eval.md", report.to_markdown())
    return report if ctx.is_main else None
