"""The recipe as HF TrainingArguments, and the process group they start.

Kept apart from `run()` because the DeepSpeed-on-CPU bootstrap is subtle and has nothing to do with the run's
story: one process without a launcher still needs a (1-process) group, and without GPUs accelerate gives
DeepSpeed no backend, so every rank would silently train alone.
"""
from __future__ import annotations

import inspect
import os
import socket

import torch
from transformers import TrainingArguments

from medscale.dist import DistContext
from medscale.recipe import Recipe, RecipeError

# How long a process waits at a collective (torch.distributed's timeout) unless train.trainer_args.ddp_timeout says
# otherwise. A run that tokenizes for itself (started without the local launcher's pre-flight: SLURM, Ray) does it
# on the main process while the others wait at a barrier; transformers' 1,800 s would kill a first run on large
# data. Measured: `medscale check` tokenizing 226k HuatuoGPT-style records (169 tokens each on average) with the
# Qwen3 tokenizer and data.num_proc=2 spent 375 CPU-seconds (about 3 min on 2 idle cores) and took 32 min on a
# shared, loaded 2-core host; the full 711k-record file takes 3x that. 4 h covers it; a shorter limit only makes a
# hung collective fail sooner.
DDP_TIMEOUT_S = 4 * 3600


def _one_process_group_env() -> None:
    """DeepSpeed in one process without a launcher wants a process group, and looks for MPI without these."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(k, v)


def recompute_arguments(cls, on: bool) -> dict:
    """Activation recomputation under the name `cls` knows: transformers 5.2x calls it activation_checkpointing (the
    old name warns), 5.17, the lowest medscale supports, only gradient_checkpointing."""
    key = "activation_checkpointing" if "activation_checkpointing" in inspect.signature(cls).parameters \
        else "gradient_checkpointing"
    return {key: on, f"{key}_kwargs": {"use_reentrant": False}}


# Liger's fused linear cross-entropy alone: its RMSNorm, SwiGLU and RoPE kernels stay out (they break under inductor)
FLCE_ONLY = {"rope": False, "rms_norm": False, "swiglu": False, "cross_entropy": False,
             "fused_linear_cross_entropy": True}


def liger_arguments(liger: bool | str) -> dict:
    """train.use_liger_kernel=fused_linear_cross_entropy as TrainingArguments' liger_kernel_config."""
    return {"liger_kernel_config": FLCE_ONLY} if liger == "fused_linear_cross_entropy" else {}


def compile_arguments(mode: str) -> dict:
    """train.compile as TrainingArguments (accelerate compiles the model; the backend stays inductor unless
    train.trainer_args.torch_compile_backend says otherwise, e.g. aot_eager)."""
    if mode == "off":
        return {}
    return {"torch_compile": True, "torch_compile_mode": None if mode == "default" else mode}


def training_arguments(recipe: Recipe, recompute: bool, batch: tuple[int, int] | None = None):
    """TrainingArguments from the recipe; under a launcher this also initialises torch.distributed. `recompute`:
    whether any layer is recomputed, `batch`: (micro-batch, accumulation) when merged, as the run's memory plan
    decided (RunPlan.memory); None keeps the recipe's."""
    t, e, cuda = recipe.train, recipe.eval, torch.cuda.is_available()
    micro, accum = batch or (t.per_device_train_batch_size, t.gradient_accumulation_steps)
    if problems := t.trainer_args_problems(TrainingArguments):
        raise RecipeError("; ".join(problems))
    ds = recipe.dist.deepspeed
    extra: dict = {"ddp_timeout": DDP_TIMEOUT_S, **t.trainer_args}
    if ds:
        if not DistContext.from_env().launched:
            _one_process_group_env()
        if not cuda:
            from datetime import timedelta

            from accelerate import PartialState

            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
            PartialState(backend="gloo", timeout=timedelta(seconds=extra["ddp_timeout"]))
            extra["accelerator_config"] = {"use_configured_state": True}
    pinned = t.dataloader_pin_memory and cuda
    if pinned:  # a copy from pageable memory makes the host wait for the GPU, one from pinned memory does not
        extra["accelerator_config"] = {**extra.get("accelerator_config", {}), "non_blocking": True}
    return TrainingArguments(
        output_dir=t.output_dir, num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        per_device_train_batch_size=1 if recipe.data.batching == "packed" else micro,
        per_device_eval_batch_size=e.per_device_eval_batch_size,
        gradient_accumulation_steps=accum, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps or t.warmup_ratio,
        weight_decay=t.weight_decay, optim=t.optim, max_grad_norm=t.max_grad_norm,
        # use_cpu=True would bypass DeepSpeed (plain gloo DDP); DeepSpeed picks its CPU accelerator + gloo itself
        bf16=t.bf16 and cuda, use_cpu=not cuda and not ds, deepspeed=ds,
        **recompute_arguments(TrainingArguments, recompute),
        use_liger_kernel=bool(t.use_liger_kernel) and cuda, **liger_arguments(t.use_liger_kernel),
        **compile_arguments(t.compile),
        logging_steps=t.logging_steps, logging_first_step=True, save_strategy="steps", save_steps=t.save_steps,
        save_total_limit=None, seed=t.seed, data_seed=t.seed,  # retention is medscale's: verified checkpoints only
        eval_strategy=e.eval_strategy, eval_steps=e.eval_steps,
        eval_on_start=e.eval_on_start and e.eval_strategy != "no",
        # the Trainer would hide a NaN loss (logging_nan_inf_filter): medscale fails the attempt on one instead
        logging_nan_inf_filter=False,
        include_num_input_tokens_seen="non_padding", report_to="none",  # medscale's trackers: train/tracking.py
        run_name=recipe.track.run_name or recipe.name, remove_unused_columns=False, label_names=["labels"],
        dataloader_num_workers=t.dataloader_num_workers, dataloader_pin_memory=pinned,
        dataloader_persistent_workers=t.dataloader_num_workers > 0, ddp_find_unused_parameters=False, **extra,
    )
