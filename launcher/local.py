"""Local launcher: one process in this process, or `accelerate launch` for several processes on this machine."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from launcher.process import Outcome, run_forwarding_signals, run_reporting_stops
from medscale.dist import DistContext
from medscale.errors import STOP_EXIT_CODES, AttemptStopped
from medscale.jobs.client import reconcile_output_dir
from medscale.jobs.launch import LaunchInfo, LaunchRequest
from medscale.jobs.stop import stop_flag
from medscale.paths import shipped
from medscale.preflight import Report
from medscale.recipe import Recipe, RecipeError

# Seconds torchrun waits for workers to save and exit after a SIGTERM before it kills them (its default: 30);
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT in the environment wins (a large model on slow storage saves for longer).
SHUTDOWN_GRACE_S = "300"


def cluster_dir() -> Path:
    return shipped("cluster", "accelerate")


def accelerate_config(recipe: Recipe) -> Path:
    """`dist.config` as a path or a name in cluster/accelerate/; without one, DDP on GPUs or on CPU (gloo), or
    with `dist.deepspeed` a DeepSpeed config (ZeRO-2 or ZeRO-3 by the JSON's stage; on CPU cpu_deepspeed)."""
    import torch

    cuda = torch.cuda.is_available()
    if recipe.dist.deepspeed:
        default = ("zero3_4gpu" if recipe.dist.zero_stage() == 3 else "zero2_4gpu") if cuda else "cpu_deepspeed"
    else:
        default = "ddp_4gpu" if cuda else "cpu_ddp"
    name = recipe.dist.config or default
    path = Path(name).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = cluster_dir() / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in cluster_dir().glob("*.yaml"))
        raise RecipeError(f"dist.config: {path} not found (built-in configs: {', '.join(known)})")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    is_ds = str(cfg.get("distributed_type", "")).upper() == "DEEPSPEED"
    if recipe.dist.deepspeed and (not is_ds or cfg.get("use_cpu")):
        why = "use_cpu: true (the Trainer would skip DeepSpeed)" if is_ds else \
            f"distributed_type: {cfg.get('distributed_type')}, not DEEPSPEED"
        raise RecipeError(f"dist.config={recipe.dist.config}: {path.name} has {why}, but dist.deepspeed is set: "
                          f"remove dist.config (medscale then picks {default}) or name a DeepSpeed accelerate config")
    if is_ds and not recipe.dist.deepspeed:
        raise RecipeError(f"dist.config={recipe.dist.config} is a DeepSpeed accelerate config, but dist.deepspeed is "
                          f"not set: add dist.deepspeed=zero2 | zero3 | zero3_offload (the recipe owns the ZeRO "
                          f"settings), or use dist.config={default}")
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(recipe: Recipe, recipe_ref: str, overrides: list[str], module: str = "medscale.train"
                       ) -> list[str]:
    """The `accelerate launch` command line (through launcher.accelerate_main: a failed worker is one line) running
    `python -m MODULE RECIPE overrides` on every process; the recipe's process count wins over the config file's."""
    # With DeepSpeed, the recipe's JSON (an absolute path) replaces the config file's relative default.
    ds = ["--deepspeed_config_file", recipe.dist.deepspeed] if recipe.dist.deepspeed else []
    return [sys.executable, "-m", "launcher.accelerate_main", "--config_file", str(accelerate_config(recipe)),
            "--num_processes", str(DistContext.planned(recipe.dist).world_size),
            "--num_machines", str(recipe.dist.num_machines), "--main_process_port", str(free_port()), *ds,
            "-m", module, recipe_ref, *overrides]


def entry_command(recipe: Recipe, recipe_ref: str, overrides: list[str], module: str = "medscale.train") -> list[str]:
    """The command that runs an entry module on this machine: the module itself for one process, else `accelerate
    launch` with the recipe's process count (a sweep trial's process, a SLURM node's one-process job)."""
    if DistContext.planned(recipe.dist).world_size == 1:
        return [sys.executable, "-m", module, recipe_ref, *overrides]
    return accelerate_command(recipe, recipe_ref, overrides, module)


@dataclass
class LocalPlan:
    request: LaunchRequest
    env: dict
    report: Report  # a pre-flight that passed (prepare raised a failed one)
    launch: LaunchInfo  # what `env` tells the processes: the in-process run and the RunPlan's stamp read it here
    command: list[str] | None = None  # None: one process, run in this process


@dataclass
class LocalHandle:
    plan: LocalPlan
    outcome: Outcome | None = None
    code: int | None = field(default=None)


class LocalLauncher:
    """Runs here: one process in-process, several through `accelerate launch`; `wait` returns the exit code.
    `in_process=False` starts even one process as a child, through `runner`: a sweep trial under its Ray Tune
    actor, which watches the process while the launcher waits for it."""

    name = "local"
    waits_by_default = True

    def __init__(self, runner: Callable[[list[str], dict], Outcome] = run_forwarding_signals, *,
                 in_process: bool = True):
        self.runner, self.in_process = runner, in_process

    def prepare(self, request: LaunchRequest) -> LocalPlan:
        recipe = request.recipe
        report = request.entry.passed(recipe, devices=True)  # once, before any process is spawned
        env = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": SHUTDOWN_GRACE_S, **os.environ,
               **LaunchInfo("local", options=dict(request.options)).env()}
        launch = LaunchInfo.from_env(env)  # as its processes read it (a SLURM allocation's or Ray job's ids included)
        if self.in_process and DistContext.planned(recipe.dist).world_size == 1:
            return LocalPlan(request, env, report, launch)
        return LocalPlan(request, env, report, launch, entry_command(recipe, request.ref, request.overrides,
                                                                     request.entry.module))

    def submit(self, plan: LocalPlan) -> LocalHandle:
        return LocalHandle(plan)  # nothing queues locally: `wait` runs it

    def wait(self, handle: LocalHandle) -> int:
        plan, flag = handle.plan, stop_flag()
        if flag.code:  # asked to stop while preparing: nothing started, nothing to save
            print(f"medscale: {flag.reason}: stopping before the run started", file=sys.stderr, flush=True)
            return STOP_EXIT_CODES[flag.status]
        out, launch = plan.request.recipe.train.output_dir, plan.launch
        reconcile_output_dir(out)  # a rerun repairs what the registry missed
        if plan.report.plan is not None:  # what pre-flight decided for this launch: its processes read it
            plan.report.plan.save(out, launch.launched_at.isoformat())
        if plan.command is None:
            try:
                plan.request.entry.load()(plan.request.recipe, launch)
            except AttemptStopped as e:
                print(f"medscale: {e}", file=sys.stderr, flush=True)
                return e.exit_code
            return 0
        print("+ " + " ".join(plan.command), flush=True)
        return run_reporting_stops(out, plan.command, plan.env, self.runner)

