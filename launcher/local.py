"""Local launcher: one process in-process, or `accelerate launch` for several processes on this machine."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch
import yaml

from medscale.errors import STOP_EXIT_CODES
from medscale.recipe import Recipe, RecipeError
from medscale.train.lifecycle import LaunchInfo, read_journal

# Seconds torchrun waits for workers to save and exit after a SIGTERM before it kills them (its default: 30).
SHUTDOWN_GRACE_S = "300"

CLUSTER_DIR = Path(__file__).resolve().parent.parent / "cluster" / "accelerate"


def accelerate_config(recipe: Recipe) -> Path:
    """`dist.config` as a path or a name in cluster/accelerate/; without one, DDP on GPUs or on CPU (gloo), or
    with `dist.deepspeed` a DeepSpeed config (ZeRO-2 or ZeRO-3 by the JSON's stage; on CPU cpu_deepspeed)."""
    cuda = torch.cuda.is_available()
    if recipe.dist.deepspeed:
        default = ("zero3_4gpu" if recipe.dist.zero_stage() == 3 else "zero2_4gpu") if cuda else "cpu_deepspeed"
    else:
        default = "ddp_4gpu" if cuda else "cpu_ddp"
    name = recipe.dist.config or default
    path = Path(name).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = CLUSTER_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CLUSTER_DIR.glob("*.yaml"))
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(recipe: Recipe, recipe_ref: str, overrides: list[str]) -> list[str]:
    """The `accelerate launch` command line; the recipe's process count wins over the config file's."""
    # With DeepSpeed, the recipe's JSON (an absolute path) replaces the config file's relative default.
    ds = ["--deepspeed_config_file", recipe.dist.deepspeed] if recipe.dist.deepspeed else []
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config(recipe)),
            "--num_processes", str(recipe.dist.num_processes * recipe.dist.num_machines),
            "--num_machines", str(recipe.dist.num_machines), "--main_process_port", str(free_port()), *ds,
            "-m", "medscale.train", recipe_ref, *overrides]


def run_forwarding_signals(cmd: list[str], env: dict) -> int:
    """Run the accelerate launcher in its own session and turn a SIGTERM/SIGUSR1 sent to us into exactly one
    SIGTERM to it: torchrun forwards that to every worker and waits for them to save. (Sending SIGUSR1 to
    torchrun itself would kill it: it only handles SIGTERM, SIGINT, SIGHUP and SIGQUIT.)"""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def attempts(output_dir: str) -> list[dict]:
    """The job's attempts as its output dir records them (oldest first)."""
    return (read_journal(output_dir) or {}).get("attempts", [])


def run_reporting_stops(recipe: Recipe, cmd: list[str], env: dict, runner: Callable[[list[str], dict], int]) -> int:
    """Run a launcher command and return its exit code, except that a preempted or cancelled attempt returns
    EXIT_PREEMPTED / EXIT_CANCELLED: torchrun reports any worker's non-zero exit as 1."""
    before = len(attempts(recipe.train.output_dir))
    code = runner(cmd, env)
    ours = attempts(recipe.train.output_dir)[before:]
    if code != 0 and ours and ours[-1]["status"] in STOP_EXIT_CODES:
        return STOP_EXIT_CODES[ours[-1]["status"]]
    return code


def launch(recipe: Recipe, recipe_ref: str, overrides: list[str],
           runner: Callable[[list[str], dict], int] = run_forwarding_signals) -> int:
    """Run in this process when there is one process, else start accelerate and return its exit code; a
    preempted or cancelled attempt returns EXIT_PREEMPTED / EXIT_CANCELLED whichever process count ran it."""
    env = {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": SHUTDOWN_GRACE_S}
    env.setdefault("MEDSCALE_LAUNCHER", "local")
    if recipe.dist.num_processes * recipe.dist.num_machines == 1:
        from medscale.train.run import run

        run(recipe, LaunchInfo.from_env(env))  # AttemptStopped carries its own exit code
        return 0
    cmd = accelerate_command(recipe, recipe_ref, overrides)
    print("+ " + " ".join(cmd), flush=True)
    return run_reporting_stops(recipe, cmd, env, runner)
