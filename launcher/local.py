"""Local launcher: one process in-process, or `accelerate launch` for several processes on this machine."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

from medscale.recipe import Recipe, RecipeError

CLUSTER_DIR = Path(__file__).resolve().parent.parent / "cluster" / "accelerate"


def accelerate_config(recipe: Recipe) -> Path:
    """`dist.config` as a path or a name in cluster/accelerate/; without one, DDP on GPUs or on CPU (gloo)."""
    name = recipe.dist.config or ("ddp_4gpu" if torch.cuda.is_available() else "cpu_ddp")
    path = Path(name).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = CLUSTER_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CLUSTER_DIR.glob("*.yaml"))
        raise RecipeError(f"dist.config: {path} not found (built-in configs: {', '.join(known)})")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(recipe: Recipe, recipe_ref: str, overrides: list[str]) -> list[str]:
    """The `accelerate launch` command line; the recipe's process count wins over the config file's."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config(recipe)),
            "--num_processes", str(recipe.dist.num_processes * recipe.dist.num_machines),
            "--num_machines", str(recipe.dist.num_machines), "--main_process_port", str(free_port()),
            "-m", "medscale.train", recipe_ref, *overrides]


def launch(recipe: Recipe, recipe_ref: str, overrides: list[str],
           runner: Callable[[list[str]], subprocess.CompletedProcess] = subprocess.run) -> int:
    """Run in this process when there is one process, else start accelerate and return its exit code."""
    if recipe.dist.num_processes * recipe.dist.num_machines == 1:
        from medscale.train.run import run

        run(recipe)
        return 0
    cmd = accelerate_command(recipe, recipe_ref, overrides)
    print("+ " + " ".join(cmd), flush=True)
    return runner(cmd).returncode
