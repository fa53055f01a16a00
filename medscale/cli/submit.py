"""`medscale submit slurm | ray`: the same recipe, submitted to a cluster through the launcher protocol
(prepare -> submit [-> wait]); the launcher's options are recorded with the job for `medscale jobs resume`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medscale.cli.app import OVERRIDES, App
from medscale.jobs.kinds import ROADS, JobKind

submit_app = App(no_args_is_help=True,
                 help="Submit a recipe to a cluster: SLURM (sbatch) or Ray (ray job submit).")

RECIPE = typer.Argument(..., help="built-in recipe name or a YAML path")
ENTRY_WORDS = {JobKind.TRAIN: "the recipe", JobKind.EVAL: "its trained model against its base",
               JobKind.TRIAL: "one cell of a sweep, train then eval", JobKind.JUDGE: "a judge job file's open answers "
               "judged", JobKind.SERVE: "a model served"}
ENTRY = typer.Option("train", "--entry", help="what the job runs: " + "; ".join(
    f"{k} ({ENTRY_WORDS[k]})" for k in ROADS))


def _request(recipe: str, overrides: list[str], entry: str, options: dict):
    from medscale.jobs.launch import LaunchRequest, entry_for

    kind = entry_for(entry)
    return LaunchRequest(kind.load_spec(recipe, overrides), recipe, overrides, kind,
                         {k: v for k, v in options.items() if v not in (None, [])})


def _problems(report) -> None:
    """A dry run prints the plan whatever pre-flight found; the problems go to stderr (a real submit stops on them)."""
    for f in report.findings:
        if f.level != "info":
            typer.echo(f"medscale: pre-flight {f.level}: {f.message}", err=True)


@submit_app.command("slurm")
def submit_slurm(recipe: str = RECIPE, overrides: Optional[list[str]] = OVERRIDES, *,
                 nodes: Optional[int] = typer.Option(None, "--nodes", min=1, help="nodes (default: the recipe's "
                                                     "dist.num_machines)"),
                 gpus_per_node: Optional[str] = typer.Option(None, "--gpus-per-node", help="GPUs per node, N or "
                                                             "TYPE:N (default: processes per node); 0: CPU only"),
                 procs_per_node: Optional[int] = typer.Option(None, "--procs-per-node", min=1,
                                                              help="training processes per node (default: the GPU "
                                                                   "count, else the recipe's dist.num_processes)"),
                 cpus_per_node: Optional[int] = typer.Option(None, "--cpus-per-node", min=1,
                                                             help="CPUs per node (default: 8 per GPU, else 1 per "
                                                                  "process)"),
                 partition: Optional[str] = typer.Option(None, "--partition", "-p", help="the SLURM partition "
                                                         "(default: the cluster's)"),
                 time: Optional[str] = typer.Option(None, "--time", "-t", help="time limit, e.g. 24:00:00"),
                 account: Optional[str] = typer.Option(None, "--account", "-A", help="the account charged "
                                                       "(default: yours)"),
                 output: Optional[str] = typer.Option(None, "--output", "-o", help="job log (default: "
                                                      "$MEDSCALE_HOME/slurm/%x-%j.out)"),
                 sbatch_arg: Optional[list[str]] = typer.Option(None, "--sbatch-arg", help="one more sbatch flag, "
                                                                "e.g. --sbatch-arg=--qos=high (repeatable)"),
                 entry: str = ENTRY,
                 dry_run: bool = typer.Option(False, "--dry-run", help="print the batch script, submit nothing"),
                 wait: bool = typer.Option(False, "--wait", help="wait for the job to end; exit with its code")) -> None:
    """Submit a recipe with sbatch: one accelerate launcher per node (slurm/common.sh), a checkpoint and a requeue
    when SLURM warns of the time limit; prints the SLURM job id."""
    from launcher.slurm import SlurmLauncher, log_path

    launcher = SlurmLauncher()
    plan = launcher.prepare(_request(recipe, overrides or [], entry, dict(
        nodes=nodes, gpus_per_node=gpus_per_node, procs_per_node=procs_per_node, cpus_per_node=cpus_per_node,
        partition=partition, time=time, account=account, output=output, sbatch_args=list(sbatch_arg or []))))
    if dry_run:
        _problems(plan.report)
        typer.echo(plan.script, nl=False)
        return
    handle = launcher.submit(plan)
    o = plan.options
    typer.echo(f"Submitted SLURM job {handle.job_id}: {recipe} on {o.nodes} node(s) x {o.procs_per_node} "
               f"process(es)\n  log    {log_path(o, handle.job_id)}\n"
               f"  watch  squeue -j {handle.job_id}; medscale jobs show {o.job_name}")
    if wait:
        raise typer.Exit(launcher.wait(handle))


@submit_app.command("ray")
def submit_ray(recipe: str = RECIPE, overrides: Optional[list[str]] = OVERRIDES, *,
               address: Optional[str] = typer.Option(None, "--address", help="the cluster's dashboard (job server) "
                                                     "address (default: $RAY_ADDRESS, else http://127.0.0.1:8265)"),
               dry_run: bool = typer.Option(False, "--dry-run", help="print the equivalent `ray job submit` "
                                            "command (registry password redacted); submit nothing"),
               env: Optional[list[str]] = typer.Option(None, "--env", help="KEY=VALUE for the job's runtime env "
                                                       "(repeatable; not recorded); MEDSCALE_HOME, "
                                                       "MEDSCALE_REGISTRY_URL, MEDSCALE_MODELS, MEDSCALE_DATA travel "
                                                       "with the job when set"),
               max_failures: int = typer.Option(3, "--max-failures", min=0,
                                                help="worker-group restarts (from the newest verified checkpoint) "
                                                     "before Ray gives up"),
               storage_path: Optional[str] = typer.Option(None, "--storage-path", help="shared storage for Ray's "
                                                          "run dir (default: the recipe's train.output_dir)"),
               gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="one GPU per worker, or CPU workers "
                                                  "(default: GPUs when the cluster has any)"),
               cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", min=0, help="CPUs reserved per "
                                                     "worker"),
               working_dir: Optional[Path] = typer.Option(None, "--working-dir", help="project to upload (default: "
                                                          "this directory if it holds launcher/ray_job.py)"),
               runtime_env: Optional[Path] = typer.Option(None, "--runtime-env", help="base runtime env YAML "
                                                          "(default: cluster/ray/runtime_env.yaml)"),
               entry: str = ENTRY,
               wait: bool = typer.Option(False, "--wait", help="wait for the job, print its logs, exit with its "
                                         "driver's code")) -> None:
    """Submit a recipe as a Ray job: Ray Train workers (dist.num_processes x dist.num_machines) each run it."""
    from launcher.ray import RayLauncher

    launcher = RayLauncher(env=env or [])
    plan = launcher.prepare(_request(recipe, overrides or [], entry, dict(
        address=address, max_failures=max_failures, storage_path=storage_path, use_gpu=gpu,
        cpus_per_worker=cpus_per_worker, working_dir=str(working_dir.resolve()) if working_dir else None,
        runtime_env=str(runtime_env.resolve()) if runtime_env else None)))
    if dry_run:
        _problems(plan.report)
        typer.echo(plan.submission.command())
        return
    handle = launcher.submit(plan)
    typer.echo(f"  the registry lists its attempts under Ray job {handle.submission_id}: medscale jobs show "
               f"{plan.request.recipe.name}")
    if wait:
        raise typer.Exit(launcher.wait(handle))
