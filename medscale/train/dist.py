"""The few collectives `run()` needs, written once: nothing here knows which launcher started the processes (ranks
and world size come from whatever torch.distributed / accelerate / Ray set up). Every helper is a no-op in a
single process."""
from __future__ import annotations

from typing import Callable, TypeVar

import torch

from medscale.errors import AttemptStopped, UserError
from medscale.jobs import stop

T = TypeVar("T")


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def agree_max(code, device) -> int:
    """The largest code of all ranks (stop requests, failures), so every rank acts at the same step. `code`: an int,
    or a one-element tensor on `device`, read once, after the all-reduce (one host-device sync)."""
    if not is_distributed():
        return int(code)
    if torch.is_tensor(code):
        t = code.to(torch.int32).reshape(1)
    else:  # a fill kernel, not a copy from host memory (which waits for the device)
        t = torch.full((1,), code, dtype=torch.int32, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def stop_point(flag: stop.StopFlag, step: int, device, resume_from=None) -> None:
    """Before work a checkpoint would have to save: stop every rank together if any rank was asked to stop."""
    code = agree_max(flag.code, device)
    if code:
        flag.code = max(flag.code, code)
        flag.raise_if_set(step, resume_from)


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def gather(value) -> list:
    """Every rank's `value` (e.g. its final step, so a run proves all ranks trained: a silent world_size 1 shows)."""
    if not is_distributed():
        return [value]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def decided_by_rank0(rank: int, decide: Callable[[], T]) -> T:
    """Run `decide` on global rank 0 and give every rank its answer, or its UserError, so no rank starts collectives
    that another rank has refused to join."""
    box: list = [None]
    if rank == 0:
        try:
            box = [("ok", decide())]
        except UserError as e:
            box = [("error", (type(e), str(e)))]
    if is_distributed():
        torch.distributed.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        cls, msg = value
        raise cls(msg)
    return value


def shutdown(clean: bool) -> None:
    """End the process group; after a clean end (finished or stopped) wait for every rank first, or one rank can
    abort at exit and the launcher reports a failure."""
    if is_distributed():
        if clean:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


__all__ = ["AttemptStopped", "agree_max", "barrier", "decided_by_rank0", "gather", "is_distributed", "shutdown",
           "stop_point"]
