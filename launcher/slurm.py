"""SLURM launcher: the sbatch script for a recipe (`medscale submit slurm`, `jobs resume`), and the per-node command
that slurm/common.sh starts with srun on every node of a job (`python -m launcher.slurm node-run ...`).

One accelerate launcher per node, built by launcher.local.accelerate_command plus the multi-node flags, so the
command line is made in one place for every launcher.

Stopping for preemption (the scripts' `#SBATCH --signal=B:USR1@300`): SLURM signals only the batch shell; its
trap sends SIGUSR2 to the srun client, which forwards it to every process of the step on every node. Only this
module's node wrapper listens to SIGUSR2 (the accelerate launcher and the workers are started with SIGUSR1 and
SIGUSR2 ignored), and it turns the first one into exactly one SIGTERM to its accelerate launcher: torchrun
forwards that once to each worker and waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT for them to save. Sending SIGTERM to
srun instead makes srun kill the step ("forcing job termination"), and a SIGTERM to the step reaches every worker
directly *and* through torchrun; a SIGUSR1 to torchrun kills it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from medscale import medscale_home
from medscale.errors import EXIT_BAD_INPUT
from medscale.recipe import Recipe, RecipeError, load_recipe

REPO = Path(__file__).resolve().parent.parent
STOP_SIGNAL = signal.SIGUSR2  # batch shell -> srun -> node wrapper: "save and stop"
WARNING = "B:USR1@300"  # the warning every script asks for: 5 minutes before the time limit, to the batch shell
RECORD = "slurm_job.json"  # in the output dir: the resources the job ran with, so `jobs resume` asks for them again

Executor = Callable[[list[str], str], str]  # (sbatch command, script on stdin) -> sbatch's stdout


# --------------------------------------------------------------------------- the per-node command

def node_overrides(recipe: Recipe, nodes: int) -> list[str]:
    """Overrides that fit a recipe to `nodes` machines: dist.num_machines, and the gradient accumulation that keeps
    a declared train.effective_batch_size (the seed's batch), or a RecipeError when no whole number does."""
    if nodes == recipe.dist.num_machines:
        return []
    out = [f"dist.num_machines={nodes}"]
    t = recipe.train
    if t.effective_batch_size is not None:
        per_step = t.per_device_train_batch_size * recipe.dist.num_processes * nodes
        if t.effective_batch_size % per_step:
            raise RecipeError(
                f"{nodes} nodes x {recipe.dist.num_processes} processes x per_device_train_batch_size "
                f"{t.per_device_train_batch_size} = {per_step} samples per step does not divide "
                f"train.effective_batch_size={t.effective_batch_size}: use fewer nodes, or set "
                f"train.effective_batch_size={per_step} (or a multiple of it: a larger batch than the recipe's)")
        accum = t.effective_batch_size // per_step
        if accum != t.gradient_accumulation_steps:
            out.append(f"train.gradient_accumulation_steps={accum}")
    return out


def node_command(recipe: Recipe, recipe_ref: str, overrides: list[str], *, machine_rank: int, main_ip: str,
                 port: int) -> list[str]:
    """What one node runs: `accelerate launch` with this node's machine rank and the job's main address (the
    recipe already fitted to the job's nodes), or the training module itself for a 1-process job."""
    from launcher.local import accelerate_command

    if recipe.dist.num_processes * recipe.dist.num_machines == 1:
        return [sys.executable, "-m", "medscale.train", recipe_ref, *overrides]
    cmd = accelerate_command(recipe, recipe_ref, overrides)
    cmd[cmd.index("--main_process_port") + 1] = str(port)
    at = cmd.index("-m", 3)  # the training module follows the launcher's own flags
    return [*cmd[:at], "--machine_rank", str(machine_rank), "--main_process_ip", main_ip, *cmd[at:]]


def run_stoppable(cmd: list[str], env: dict) -> int:
    """Run the node's launcher; the first SIGUSR2 becomes exactly one SIGTERM to it. SIGTERM/SIGUSR1/SIGINT to
    this wrapper are ignored: SLURM sends those to every process of the step (time limit, scancel), so the
    launcher and workers already have them."""
    quiet = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGUSR1, STOP_SIGNAL)}
    proc = subprocess.Popen(cmd, env=env)  # inherits SIGUSR1/SIGUSR2 ignored (exec keeps SIG_IGN)
    sent = False

    def stop(_signum, _frame):
        nonlocal sent
        if not sent:
            sent = True
            print(f"medscale: node {env.get('SLURM_NODEID', '?')}: stop requested: SIGTERM to the launcher "
                  f"(pid {proc.pid}); workers save a checkpoint and exit", file=sys.stderr, flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)

    previous = {**quiet, STOP_SIGNAL: signal.signal(STOP_SIGNAL, stop)}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _time_limit(job_id: str | None) -> str | None:
    if not job_id:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%l"], capture_output=True, text=True, timeout=20)
        limit = r.stdout.strip()
        if r.returncode == 0 and limit and limit not in ("UNLIMITED", "INVALID", "NOT_SET"):
            return limit
    return None


def record_resources(recipe: Recipe, env=os.environ) -> None:
    """Write RECORD in the output dir: what this job asked SLURM for, so a `jobs resume` asks for it again."""
    gpus = env.get("SLURM_GPUS_PER_NODE") or env.get("SLURM_GPUS_ON_NODE") or "0"
    rec = {"slurm_job_id": env.get("SLURM_JOB_ID"), "nodes": recipe.dist.num_machines,
           "procs_per_node": recipe.dist.num_processes, "gpus_per_node": gpus,
           "cpus_per_node": int(env["SLURM_CPUS_PER_TASK"]) if env.get("SLURM_CPUS_PER_TASK", "").isdigit() else None,
           "partition": env.get("SLURM_JOB_PARTITION"), "account": env.get("SLURM_JOB_ACCOUNT"),
           "time": _time_limit(env.get("SLURM_JOB_ID"))}
    from medscale.train.checkpoint import write_json_atomic

    out = Path(recipe.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RECORD, rec)


def node_run(recipe_ref: str, overrides: list[str], *, nodes: int, machine_rank: int, main_ip: str, port: int,
             runner: Callable[[list[str], dict], int] = run_stoppable) -> int:
    """One node of a SLURM job: fit the recipe to the job's nodes, start this node's launcher, and return the
    registry's code for a preempted (75) or cancelled (4) attempt, whatever code the launcher reports."""
    from launcher.local import SHUTDOWN_GRACE_S, run_reporting_stops

    recipe = load_recipe(recipe_ref, overrides)
    overrides = [*overrides, *node_overrides(recipe, nodes)]
    recipe = load_recipe(recipe_ref, overrides)
    env = {**os.environ, "MEDSCALE_LAUNCHER": "slurm"}
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_GRACE_S)
    if machine_rank == 0:
        record_resources(recipe, env)
    cmd = node_command(recipe, recipe_ref, overrides, machine_rank=machine_rank, main_ip=main_ip, port=port)
    print(f"medscale: node {machine_rank}/{nodes}: + {shlex.join(cmd)}", file=sys.stderr, flush=True)
    return run_reporting_stops(recipe, cmd, env, runner)


# --------------------------------------------------------------------------- sbatch scripts

@dataclass
class SlurmOptions:
    """What `medscale submit slurm` asks SLURM for. None: derived from the recipe (see resolve)."""

    nodes: int | None = None  # default: the recipe's dist.num_machines
    gpus_per_node: str | None = None  # "4" or "a100:4"; default: the processes per node; "0": none requested
    procs_per_node: int | None = None  # default: the GPU count, or the recipe's dist.num_processes without GPUs
    cpus_per_node: int | None = None  # default: 8 per GPU, or 1 per process without GPUs
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    output: str | None = None  # default: $MEDSCALE_HOME/slurm/%x-%j.out
    job_name: str | None = None
    sbatch_args: list[str] = field(default_factory=list)


def _gpu_count(gpus: str) -> int:
    count = gpus.rsplit(":", 1)[-1]
    if not count.isdigit():
        raise RecipeError(f"--gpus-per-node {gpus}: expected a count or TYPE:COUNT, e.g. 4 or a100:4")
    return int(count)


def resolve(recipe: Recipe, opts: SlurmOptions) -> tuple[SlurmOptions, list[str]]:
    """Fill the defaults; returns the options and the overrides that make the recipe match them."""
    o = SlurmOptions(**{f.name: getattr(opts, f.name) for f in fields(SlurmOptions)})
    o.nodes = o.nodes or recipe.dist.num_machines
    if o.gpus_per_node is None:
        o.gpus_per_node = str(o.procs_per_node or recipe.dist.num_processes)
    gpus = _gpu_count(o.gpus_per_node)
    o.procs_per_node = o.procs_per_node or gpus or recipe.dist.num_processes
    if gpus and o.procs_per_node > gpus:
        raise RecipeError(f"{o.procs_per_node} processes per node but --gpus-per-node {o.gpus_per_node}: one "
                          f"process per GPU (--gpus-per-node 0 runs on CPUs)")
    o.cpus_per_node = o.cpus_per_node or (8 * gpus if gpus else o.procs_per_node)
    o.job_name = o.job_name or recipe.name
    o.output = o.output or str(medscale_home() / "slurm" / "%x-%j.out")
    extra = [f"dist.num_processes={o.procs_per_node}"] if o.procs_per_node != recipe.dist.num_processes else []
    return o, extra


def render_script(recipe_ref: str, overrides: list[str], opts: SlurmOptions, command: list[str]) -> str:
    """A batch script that sources slurm/common.sh and runs the recipe; `opts` already resolved."""
    gpus = _gpu_count(opts.gpus_per_node)
    lines = [f"--job-name={opts.job_name}", f"--nodes={opts.nodes}",
             "--ntasks-per-node=1", f"--cpus-per-task={opts.cpus_per_node}",
             *([f"--gpus-per-node={opts.gpus_per_node}"] if gpus else []),
             *([f"--partition={opts.partition}"] if opts.partition else []),
             *([f"--account={opts.account}"] if opts.account else []),
             *([f"--time={opts.time}"] if opts.time else []),
             f"--signal={WARNING}", "--requeue", "--open-mode=append", f"--output={opts.output}", "--export=ALL",
             *opts.sbatch_args]
    run = " ".join(shlex.quote(a) for a in [recipe_ref, *overrides])
    return "\n".join([
        "#!/bin/bash",
        f"# Rendered by `medscale submit slurm` for recipe {recipe_ref}: {opts.nodes} node(s) x {opts.procs_per_node} "
        f"process(es), {'GPUs ' + opts.gpus_per_node if gpus else 'no GPUs'} per node.",
        f"# medscale hands it to `{shlex.join(command)}` on stdin; a saved copy submits with `sbatch FILE`. A stopped",
        "# job continues with `medscale jobs resume JOB` (same resources, newest verified checkpoint).",
        *[f"#SBATCH {line}" for line in lines],
        f"export MEDSCALE_REPO={shlex.quote(str(REPO))}",
        f"export MEDSCALE_PYTHON={shlex.quote(sys.executable)}",
        'source "$MEDSCALE_REPO/slurm/common.sh"',
        f"medscale_run {run}",
        "",
    ])


def run_sbatch(cmd: list[str], script: str) -> str:
    """The real executor: sbatch reads the script on stdin; its stdout (with --parsable: JOBID[;CLUSTER])."""
    try:
        r = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise RecipeError("sbatch not found: run this on a SLURM login node (or install slurm-client)") from None
    if r.returncode != 0:
        raise RecipeError(f"sbatch failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


@dataclass
class Submission:
    script: str
    command: list[str]
    options: SlurmOptions
    job_id: str | None = None


def submit(recipe_ref: str, overrides: list[str], opts: SlurmOptions | None = None, *, dry_run: bool = False,
           executor: Executor = run_sbatch) -> Submission:
    """Validate the recipe for the requested shape, render the batch script, and (unless dry_run) sbatch it."""
    overrides = list(overrides)
    ref = str(Path(recipe_ref).resolve()) if Path(recipe_ref).suffix in (".yaml", ".yml") else recipe_ref
    recipe = load_recipe(ref, overrides)
    o, extra = resolve(recipe, opts or SlurmOptions())
    overrides += extra
    node_overrides(load_recipe(ref, overrides), o.nodes)  # refuse a shape the recipe cannot take, before queueing
    command = ["sbatch", "--parsable"]
    sub = Submission(render_script(ref, overrides, o, command), command, o)
    if dry_run:
        return sub
    if "%" not in o.output.rsplit("/", 1)[0]:
        Path(o.output).parent.mkdir(parents=True, exist_ok=True)  # sbatch does not create it
    sub.job_id = executor(command, sub.script).strip().split(";")[0]
    return sub


def options_from_record(output_dir: str) -> SlurmOptions:
    """The resources a job ran with (RECORD in its output dir), else the defaults."""
    path = Path(output_dir) / RECORD
    if not path.is_file():
        return SlurmOptions()
    rec = json.loads(path.read_text(encoding="utf-8"))
    keep = {f.name for f in fields(SlurmOptions)}
    return SlurmOptions(**{k: v for k, v in rec.items() if k in keep and v is not None})


ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "RESIZING",
          "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")


def slurm_state(job_id: str) -> str | None:
    """The job's state as squeue sees it now; None when SLURM no longer lists it (or cannot be asked)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.split()[0]
    return None


def log_path(opts: SlurmOptions, job_id: str | None) -> str:
    return opts.output.replace("%x", opts.job_name or "").replace("%j", job_id or "%j")


def launch(recipe: Recipe, recipe_ref: str, overrides: list[str], executor: Executor = run_sbatch,
           state: Callable[[str], str | None] = slurm_state) -> int:
    """`medscale jobs resume` of a SLURM job: submit the recorded recipe again with the resources it ran with; the
    new SLURM job continues from the newest verified checkpoint (train.resume=auto). Returns 0 once queued.
    Refused while the job's last SLURM job is still queued or running (e.g. requeued after a preemption): it
    continues by itself, and two jobs in one output dir would overwrite each other's checkpoints."""
    from launcher.local import attempts

    last = next((a["slurm_job_id"] for a in reversed(attempts(recipe.train.output_dir)) if a.get("slurm_job_id")),
                None)
    if last and (now := state(last)) in ACTIVE:
        raise RecipeError(f"SLURM job {last} of {recipe.name} is still {now}: it continues by itself from the newest "
                          f"verified checkpoint; to start it anew, `scancel {last}` first")
    sub = submit(recipe_ref, overrides, options_from_record(recipe.train.output_dir), executor=executor)
    print(f"medscale: {recipe.name} resubmitted as SLURM job {sub.job_id} (log {log_path(sub.options, sub.job_id)}); "
          f"it resumes from the newest verified checkpoint in {recipe.train.output_dir}", flush=True)
    return 0


# --------------------------------------------------------------------------- `python -m launcher.slurm`

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launcher.slurm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, what in (("node-run", "run this node's part of the job (srun starts it on every node)"),
                       ("node-command", "print this node's command, run nothing")):
        s = sub.add_parser(name, help=what)
        s.add_argument("--nodes", type=int, required=True, help="nodes in the job ($SLURM_NNODES)")
        s.add_argument("--machine-rank", type=int, required=True, help="this node ($SLURM_NODEID, on the node)")
        s.add_argument("--main-ip", required=True, help="host of machine rank 0 (first host of the nodelist)")
        s.add_argument("--port", type=int, required=True, help="free port on the main host")
        s.add_argument("recipe")
        s.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    try:
        if a.cmd == "node-command":
            recipe = load_recipe(a.recipe, a.overrides)
            overrides = [*a.overrides, *node_overrides(recipe, a.nodes)]
            print(shlex.join(node_command(load_recipe(a.recipe, overrides), a.recipe, overrides,
                                          machine_rank=a.machine_rank, main_ip=a.main_ip, port=a.port)))
            return 0
        return node_run(a.recipe, a.overrides, nodes=a.nodes, machine_rank=a.machine_rank, main_ip=a.main_ip,
                        port=a.port)
    except RecipeError as e:
        print(f"medscale: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
