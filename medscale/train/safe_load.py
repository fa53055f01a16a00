"""DeepSpeed reads its checkpoint states with `torch.load(weights_only=False)`: a pickle planted in a checkpoint
folder would run code on resume (a manifest only proves the files are the ones that were saved, and anyone who can
write the folder can rewrite it). medscale's runs read them with `weights_only=True`, allowing only the few
DeepSpeed classes those states hold. A checkpoint folder is trusted for tensors, never for code."""
from __future__ import annotations

import importlib
import pickle

ALLOWED = ("deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
           "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address")


def _allowed() -> list:
    out = []
    for dotted in ALLOWED:
        module, _, name = dotted.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # another DeepSpeed version: that class does not exist there
            continue
    return out


def safe_load(path, map_location=None):
    """torch.load of one DeepSpeed state file: tensors, containers and ALLOWED classes, nothing else."""
    import torch

    from medscale.jobs.errors import CheckpointError

    try:
        with torch.serialization.safe_globals(_allowed()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).split("GLOBAL ", 1)[-1].split(" ", 1)[0] if "GLOBAL " in str(e) else type(e).__name__
        raise CheckpointError(f"{path} holds a Python object medscale does not load ({detail}): a checkpoint folder "
                              f"is trusted for tensors, not code. Resume from a checkpoint this run saved, or start "
                              f"a new train.output_dir") from None


def install() -> None:
    """Make DeepSpeed's checkpoint engine read through `safe_load` (idempotent)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    TorchCheckpointEngine.load = lambda self, path, map_location=None: safe_load(path, map_location)
