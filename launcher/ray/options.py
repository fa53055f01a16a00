"""What crosses from the submit side to the Ray job's driver and on to its workers, as plain data: the entry
script's options (`RayOptions`) and the recipe (a built-in name, or a file's name and text), re-validated where it
runs."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from medscale import settings
from medscale.jobs.launch import entry_for
from medscale.recipe import Recipe, RecipeError


# --------------------------------------------------------------------------- options (entry script flags)

@dataclass(kw_only=True)
class RayOptions:
    """What the Ray job needs beyond the recipe. Entry-script flags, each defaulting to an environment variable
    so a runtime env can set it too (until the recipe grows `dist.max_failures` and friends)."""

    max_failures: int = 3
    storage_path: str | None = None  # None: the recipe's train.output_dir
    use_gpu: bool | None = None  # None: GPUs when the cluster has any
    cpus_per_worker: float = 1.0
    # submit side only (not entry-script flags): where the job goes and what it uploads
    address: str | None = None  # None: $RAY_ADDRESS, else the local dashboard
    working_dir: str | None = None  # None: this directory if it holds launcher/ray_job.py
    runtime_env: str | None = None  # None: cluster/ray/runtime_env.yaml of the working dir

    @classmethod
    def from_dict(cls, d: dict) -> "RayOptions":
        keep = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (d or {}).items() if k in keep})

    def to_dict(self) -> dict:
        """What the job records for `jobs resume` (never `--env` values: they may hold secrets)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_env(cls, env=os.environ) -> "RayOptions":
        return cls(max_failures=settings.RAY_MAX_FAILURES.get(env), storage_path=settings.RAY_STORAGE_PATH.get(env),
                   use_gpu=settings.RAY_USE_GPU.get(env), cpus_per_worker=settings.RAY_CPUS_PER_WORKER.get(env))

    def flags(self) -> list[str]:
        """The entry-script flags that differ from the defaults (so a dry run shows only what was asked)."""
        d, out = RayOptions(), []
        if self.max_failures != d.max_failures:
            out += ["--max-failures", str(self.max_failures)]
        if self.storage_path:
            out += ["--storage-path", self.storage_path]
        if self.use_gpu is not None:
            out += ["--gpu" if self.use_gpu else "--cpu"]
        if self.cpus_per_worker != d.cpus_per_worker:
            out += ["--cpus-per-worker", f"{self.cpus_per_worker:g}"]
        return out


# --------------------------------------------------------------------------- the recipe as plain data

def recipe_source(ref: str, env=os.environ) -> dict:
    """What every worker needs to re-load the recipe: a built-in name, or a file's name and text (a worker on
    another node may not see the driver's path). `env:VAR` reads the YAML text from that variable."""
    if ref.startswith("env:"):
        var = ref[4:]
        if not env.get(var):
            raise RecipeError(f"recipe {ref}: environment variable {var} is empty (it should hold the recipe YAML)")
        return {"name": None, "file": "recipe.yaml", "text": env[var]}
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist (relative paths are relative to the job's working "
                              f"dir, the uploaded project)")
        return {"name": None, "file": path.name, "text": path.read_text(encoding="utf-8")}
    return {"name": ref, "file": None, "text": None}


def check_for_ray(recipe: Recipe) -> Recipe:
    """What a Ray job needs of a recipe beyond its own checks (a launcher-domain validator)."""
    if not os.path.isabs(recipe.output_dir_as_written):
        raise RecipeError(f"train.output_dir={recipe.output_dir_as_written} is relative: in a Ray job it would land in "
                          f"the job's temporary copy of the working dir, on each node separately, and no restart or "
                          f"resubmit could find its checkpoints; use an absolute path on storage every node shares")
    return recipe


def load_from_source(source: dict, overrides: list[str], entry: str = "train"):
    """Validate the entry's spec (a recipe; an evaluation's job file) again where it runs (paths, environment and
    devices are this node's)."""
    load = entry_for(entry).load_spec
    if source["name"] is not None:
        return load(source["name"], overrides)
    with tempfile.TemporaryDirectory(prefix="medscale-recipe-") as folder:
        path = Path(folder) / source["file"]
        path.write_text(source["text"], encoding="utf-8")
        return load(str(path), overrides)
