"""The Ray job's driver (`python launcher/ray_job.py RECIPE ...`, what `ray job submit` runs): validates the recipe,
builds ScalingConfig / RunConfig from it, and runs `train_func` on `dist.num_processes x dist.num_machines` Ray
Train workers; its exit code is the attempt's end."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from launcher.ray.options import RayOptions, check_for_ray, load_from_source, recipe_source
from launcher.ray.worker import pointed_checkpoint, train_func
from medscale import settings
from medscale.dist import DistContext
from medscale.errors import EXIT_CANCELLED
from medscale.jobs.launch import ENV_RAY_JOB_ID
from medscale.recipe import Recipe
from medscale.status import AttemptStatus


def num_workers(recipe: Recipe) -> int:
    return DistContext.planned(recipe.dist).world_size


def scaling_config(recipe: Recipe, use_gpu: bool, cpus_per_worker: float = 1.0):
    """One Ray Train worker per recipe process; a GPU each when training on GPUs."""
    from ray.train import ScalingConfig

    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    return ScalingConfig(num_workers=num_workers(recipe), use_gpu=use_gpu, resources_per_worker=resources)


def run_config(recipe: Recipe, opts: RayOptions, job_id: str | None):
    """Ray's run lives in `<storage>/<job name>`; the storage defaults to the job's own output dir, so a
    resubmitted job finds its Ray run again and two jobs never share one. Ray keeps only pointers there."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    env = {settings.LAUNCHER.name: "ray", **({ENV_RAY_JOB_ID: job_id} if job_id else {})}
    return RunConfig(name=recipe.name, storage_path=opts.storage_path or os.path.abspath(recipe.train.output_dir),
                     failure_config=FailureConfig(max_failures=opts.max_failures),
                     # Ray deletes only its pointer folders; the checkpoints themselves follow train.save_total_limit
                     checkpoint_config=CheckpointConfig(num_to_keep=2),
                     worker_runtime_env={"env_vars": env})


def current_job_id() -> str | None:
    """The id to record on every attempt: the one `medscale submit ray` chose, else the Ray job submission id
    (`ray job submit`), else Ray's core job id (a driver started by hand)."""
    if v := settings.RAY_JOB_ID.get():
        return v
    try:
        meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("metadata") or {}
    except ValueError:
        meta = {}
    if v := meta.get("job_submission_id"):
        return v
    import ray

    return ray.get_runtime_context().get_job_id() if ray.is_initialized() else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = RayOptions.from_env()
    p = argparse.ArgumentParser(
        prog="launcher/ray_job.py",
        description="Ray job driver: `ray job submit --working-dir . -- python launcher/ray_job.py RECIPE "
                    "[key=value ...]`. Trains the recipe on dist.num_processes x dist.num_machines Ray Train workers.")
    p.add_argument("recipe", help="built-in recipe name, a YAML path (relative to the working dir), or env:VAR")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    p.add_argument("--max-failures", type=int, default=env.max_failures,
                   help="worker-group restarts before the job fails (env MEDSCALE_RAY_MAX_FAILURES; default 3)")
    p.add_argument("--storage-path", default=env.storage_path,
                   help="shared storage for Ray's run dir (env MEDSCALE_RAY_STORAGE_PATH; default: train.output_dir)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpu", dest="use_gpu", action="store_true", default=env.use_gpu, help="one GPU per worker")
    g.add_argument("--cpu", dest="use_gpu", action="store_false", help="train on CPUs (gloo)")
    p.add_argument("--cpus-per-worker", type=float, default=env.cpus_per_worker,
                   help="CPUs reserved per worker (env MEDSCALE_RAY_CPUS_PER_WORKER; default 1)")
    p.add_argument("--entry", default="train", help="what every worker runs: train (default), eval, trial")
    return p.parse_intermixed_args(argv)


def build_trainer(recipe: Recipe, source: dict, overrides: list[str], opts: RayOptions, use_gpu: bool, *,
                  job_id: str | None, num_workers_override: int | None = None, entry: str = "train"):
    from ray.train.torch import TorchTrainer

    scaling = scaling_config(recipe, use_gpu, opts.cpus_per_worker)
    if num_workers_override is not None:  # tests: 0 runs train_func in this process (Ray Train local mode)
        scaling.num_workers = num_workers_override
    config = {"source": source, "overrides": list(overrides), "job_id": job_id, "entry": entry}
    return TorchTrainer(train_func, train_loop_config=config, scaling_config=scaling,
                        run_config=run_config(recipe, opts, job_id))


def _final_status(output_dir: str) -> AttemptStatus | None:
    from medscale.jobs.record import read_journal

    journal = read_journal(output_dir)
    return journal.last.status if journal and journal.last else None


def main(argv: list[str] | None = None) -> int:
    from medscale.errors import user_errors

    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    opts = RayOptions(max_failures=args.max_failures, storage_path=args.storage_path, use_gpu=args.use_gpu,
                      cpus_per_worker=args.cpus_per_worker)
    with user_errors():  # a bad recipe exits 2 here, before any worker starts (and before any restart loop)
        source = recipe_source(args.recipe)
        recipe = check_for_ray(load_from_source(source, args.overrides, args.entry))
    # Read by Ray Train in this process and passed on to the workers: plain worker output, and no chdir into
    # Ray's trial dir (relative paths in the recipe stay relative to the working dir).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    import ray
    from ray.train import TrainingFailedError
    from ray.train.v2._internal.constants import is_v2_enabled

    if not is_v2_enabled():
        print("medscale: error: the Ray launcher needs Ray Train V2 (unset RAY_TRAIN_V2_ENABLED=0)", file=sys.stderr)
        return 2
    ray.init()  # the job's cluster (RAY_ADDRESS, set by `ray job submit`), else a local one
    job_id = current_job_id()
    use_gpu = opts.use_gpu if opts.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    print(f"medscale: {recipe.name}: {num_workers(recipe)} Ray Train worker(s) on {'GPU' if use_gpu else 'CPU'}, "
          f"max_failures={opts.max_failures}, Ray job id {job_id}, output {recipe.train.output_dir}", flush=True)
    trainer = build_trainer(recipe, source, args.overrides, opts, use_gpu, job_id=job_id, entry=args.entry)
    try:
        result = trainer.fit()
    except TrainingFailedError as e:
        print(f"medscale: {recipe.name}: Ray Train gave up: {e}", file=sys.stderr, flush=True)
        return 1
    status = _final_status(recipe.train.output_dir)
    target = pointed_checkpoint(result.checkpoint) if result.checkpoint else None
    print(f"medscale: {recipe.name}: attempt {status}; newest checkpoint reported to Ray: {target}", flush=True)
    if status == AttemptStatus.CANCELLED:
        return EXIT_CANCELLED
    return 0 if status == AttemptStatus.COMPLETED else 1
