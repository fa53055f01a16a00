"""Where this process stands in a run of several: one typed DistContext, read from the environment here and nowhere
else. torchrun, accelerate and Ray Train set the same variables for every process they start (RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE); a process without them is the whole world. `planned` is the same shape for the world a
recipe asks for, before anything starts. Torch-free and importing nothing of ours, so every package (the job record
and the CLI included) may use it."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class DistSection(Protocol):
    """The recipe's `dist` section, as far as the world size goes."""

    num_processes: int
    num_machines: int


@dataclass(frozen=True)
class DistContext:
    rank: int = 0  # global: 0 is the main process, the only one that writes the job record and the registry
    local_rank: int = 0  # on this node: the GPU this process uses
    world_size: int = 1
    procs_per_node: int = 1
    launched: bool = False  # a launcher set the variables (False: a plain `python -m ...` process)

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // self.procs_per_node)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DistContext:
        """This process's place, as its launcher told it."""
        env = os.environ if env is None else env
        world = _whole(env, "WORLD_SIZE", 1)
        return cls(rank=_whole(env, "RANK", 0), local_rank=_whole(env, "LOCAL_RANK", 0), world_size=world,
                   procs_per_node=_whole(env, "LOCAL_WORLD_SIZE", world), launched="LOCAL_RANK" in env)

    @classmethod
    def planned(cls, dist: DistSection) -> DistContext:
        """The world a recipe asks for, seen from its main process: dist.num_processes on each of dist.num_machines."""
        return cls(world_size=dist.num_processes * dist.num_machines, procs_per_node=dist.num_processes)


def _whole(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    try:
        return default if raw is None else int(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r} is no whole number (a launcher sets it for each process)") from None
