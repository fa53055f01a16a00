"""`run(recipe)`: the one training entry point every launcher ends in.

Short and linear on purpose: pre-flight -> TrainingArguments -> start the attempt (resume point
agreed by all ranks) -> data -> model -> Trainer -> train -> save -> summary -> end the attempt.
No CLI parsing here; ranks and world size come from whatever torch.distributed / accelerate / Ray
set up, and the launcher's identity from LaunchInfo.
"""
from __future__ import annotations

import importlib.util
import json
import os
import logging
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from medscale import medscale_home
from medscale.errors import AttemptStopped
from medscale.recipe import Recipe, RecipeError
from medscale.train.checkpoint import (discard_newer_unverified, latest_verified, resolve_resume,
                                       write_json_atomic)
from medscale.train.lifecycle import STOP_CANCELLED, JobTracker, LaunchInfo, StopFlag
from medscale.train.report import eval_verdict, plot_losses

if TYPE_CHECKING:
    from transformers import TrainerCallback

log = logging.getLogger("medscale.train")


def preflight(recipe: Recipe) -> None:
    """Every cheap check that can fail, before any heavy work or any file is written; all at once."""
    from medscale.data.formats import DataError, expand_sources
    from medscale.model.load import check_model_dir
    from medscale.plan import fit_problems

    problems = []
    if recipe.model.load_in_4bit and not torch.cuda.is_available():
        problems.append("model.load_in_4bit needs a CUDA GPU (bitsandbytes 4-bit training); "
                        "on CPU set model.load_in_4bit=false")
    if recipe.model.tiny is None:
        try:
            check_model_dir(recipe.model)
        except RecipeError as e:
            problems.append(str(e))
    if recipe.train.use_liger_kernel and torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is None:
        problems.append("train.use_liger_kernel needs liger-kernel: pip install 'medscale[gpu]', "
                        "or set train.use_liger_kernel=false")
    problems += _deepspeed_problems(recipe)
    problems += fit_problems(recipe)
    gpus = torch.cuda.device_count()
    if gpus and recipe.dist.num_processes > gpus * recipe.dist.num_machines:
        problems.append(f"dist.num_processes={recipe.dist.num_processes} but this machine has {gpus} GPU(s)")
    for src in recipe.data.sources + recipe.data.eval_sources:
        try:
            expand_sources(src.path)
        except DataError as e:
            problems.append(f"data source: {e}")
    if problems:
        raise RecipeError("\n".join(problems))


def _deepspeed_problems(recipe: Recipe) -> list[str]:
    """DeepSpeed mismatches that would otherwise fail after the model loads, or silently train something else."""
    from medscale.train.checkpoint import MANIFEST, checkpoint_dirs

    problems: list[str] = []
    ds = recipe.dist
    ds_name = f"dist.deepspeed={Path(ds.deepspeed).stem}" if ds.deepspeed else "no dist.deepspeed"
    # accelerate's DeepSpeed launcher sets ACCELERATE_CONFIG_DS_FIELDS; only the recipe says which ZeRO config runs
    if "ACCELERATE_CONFIG_DS_FIELDS" in os.environ and not ds.deepspeed:
        problems.append("started by accelerate with a DeepSpeed config (distributed_type: DEEPSPEED) but the recipe "
                        "has no dist.deepspeed: set dist.deepspeed=zero2 | zero3 | zero3_offload (or a .json path), "
                        "or launch with a non-DeepSpeed accelerate config")
    if ds.deepspeed and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        problems.append("dist.deepspeed is set but accelerate was started with use_cpu (e.g. cpu_ddp.yaml): the "
                        "Trainer would skip DeepSpeed and train plain DDP; use cluster/accelerate/cpu_deepspeed.yaml "
                        "(the local launcher picks it when dist.config is unset)")
    if ds.deepspeed and importlib.util.find_spec("deepspeed") is None:
        problems.append(f"{ds_name} needs DeepSpeed: pip install deepspeed, or remove dist.deepspeed")
    # A checkpoint resumes only under the same DeepSpeed layout (no DeepSpeed / ZeRO-1,2 / ZeRO-3) and, with
    # ZeRO, the same number of processes: else the Trainer fails after loading the model, or silently starts a
    # fresh optimizer. Cheap look at the checkpoint train.resume would pick (manifest present, not re-hashed).
    mode, out = recipe.train.resume, Path(recipe.train.output_dir)
    ckpt = (None if mode == "never" else Path(mode).expanduser() if mode != "auto" else
            next((c for _, c in reversed(checkpoint_dirs(out)) if (c / MANIFEST).is_file()), None))
    if ckpt is not None and ckpt.is_dir():
        tag = (ckpt / "latest").read_text().strip() if (ckpt / "latest").is_file() else None
        shards = ckpt / tag if tag and (ckpt / tag).is_dir() else None
        saved = ("no DeepSpeed" if shards is None else
                 "ZeRO-3" if list(shards.glob("zero_pp_rank_*_model_states.pt")) else "ZeRO-1/2")
        want = "no DeepSpeed" if not ds.deepspeed else "ZeRO-3" if ds.zero_stage() == 3 else "ZeRO-1/2"
        ranks = len(list(shards.glob("*zero_pp_rank_*_optim_states.pt"))) if shards else 0
        procs = ds.num_processes * ds.num_machines
        if saved != want:
            problems.append(f"train.resume: {ckpt} was saved with {saved}, but this recipe runs {want} ({ds_name}); "
                            f"its optimizer state would not load (DeepSpeed refuses the folder; without DeepSpeed the "
                            f"Trainer silently starts a fresh optimizer): continue with the dist.deepspeed it was "
                            f"saved with, or choose a new train.output_dir")
        elif ranks and ranks != procs:
            problems.append(f"train.resume: {ckpt} was saved by {ranks} DeepSpeed processes and ZeRO cannot "
                            f"re-partition its optimizer state for {procs}: set dist.num_processes so that "
                            f"processes x machines = {ranks}, or choose a new train.output_dir")
    return problems


def ensure_model(recipe: Recipe) -> None:
    from medscale.model.load import check_model_dir
    from medscale.model.tiny import build_tiny_model

    if recipe.model.tiny is not None and not (Path(recipe.model.path) / "config.json").is_file():
        spec = recipe.model.tiny
        log.info("building tiny random Qwen3 at %s", recipe.model.path)
        build_tiny_model(recipe.model.path, layers=spec.layers, hidden=spec.hidden, tokenizer=spec.tokenizer)
    check_model_dir(recipe.model)


def training_arguments(recipe: Recipe):
    from transformers import TrainingArguments

    t, e, cuda = recipe.train, recipe.eval, torch.cuda.is_available()
    ds = recipe.dist.deepspeed
    extra: dict = {}
    if ds:
        if "LOCAL_RANK" not in os.environ:
            # One process without a launcher: DeepSpeed still wants a (1-process) process group, and without
            # these it looks for MPI. Set only here, before anything reads them.
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
                os.environ.setdefault(k, v)
        if not cuda:
            # On a machine without GPUs accelerate gives DeepSpeed no backend, and every rank trains alone
            # (world size 1, exit 0). Set up accelerate's state with gloo ourselves and let the Trainer use it.
            from datetime import timedelta

            from accelerate import PartialState

            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
            PartialState(backend="gloo", timeout=timedelta(minutes=30))
            extra["accelerator_config"] = {"use_configured_state": True}
    return TrainingArguments(
        output_dir=t.output_dir, num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        per_device_train_batch_size=1 if recipe.data.batching == "packed" else t.per_device_train_batch_size,
        per_device_eval_batch_size=e.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps or t.warmup_ratio,
        weight_decay=t.weight_decay, optim=t.optim, max_grad_norm=t.max_grad_norm,
        # use_cpu=True would bypass DeepSpeed (plain gloo DDP); DeepSpeed picks its CPU accelerator + gloo itself
        bf16=t.bf16 and cuda, use_cpu=not cuda and not ds, deepspeed=ds,
        gradient_checkpointing=t.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
        use_liger_kernel=t.use_liger_kernel and cuda,
        logging_steps=t.logging_steps, logging_first_step=True, save_strategy="steps", save_steps=t.save_steps,
        save_total_limit=None, seed=t.seed, data_seed=t.seed,  # retention is medscale's: verified checkpoints only
        eval_strategy=e.eval_strategy, eval_steps=e.eval_steps,
        eval_on_start=e.eval_on_start and e.eval_strategy != "no",
        include_num_input_tokens_seen="non_padding", report_to="none",
        run_name=recipe.track.run_name or recipe.name, remove_unused_columns=False, label_names=["labels"],
        dataloader_num_workers=t.dataloader_num_workers, ddp_find_unused_parameters=False, **extra,
    )


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _gather_steps(step: int) -> list[int]:
    """Every rank's final step, so a run can prove all ranks trained (a silent world_size 1 shows here)."""
    if not _is_distributed():
        return [step]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, step)
    return out


def _plan_start(recipe: Recipe, tracker: JobTracker) -> str | None:
    """Global rank 0: refuse a second live run in this output dir, pick the checkpoint to resume from, and
    clear torn saves above it."""
    tracker.check_not_running()
    out = recipe.train.output_dir
    start = resolve_resume(recipe.train.resume, out)
    if recipe.train.resume == "never" and (newest := latest_verified(out)) is not None:
        raise RecipeError(f"train.resume=never but {out} holds verified checkpoints of job {recipe.name} (newest "
                          f"{newest.name}): set train.resume=auto to continue, or choose a new train.output_dir")
    discard_newer_unverified(out, start)
    return str(start) if start else None


def _finished_summary(recipe: Recipe, resume: str | None) -> dict | None:
    """The run summary of a job that already trained to its last step, else None. (Resuming from a checkpoint
    at max_steps would make the HF Trainer train one step past it.)"""
    summary_file = Path(recipe.train.output_dir) / "run_summary.json"
    if not resume or not summary_file.is_file():
        return None
    state = json.loads((Path(resume) / "trainer_state.json").read_text(encoding="utf-8"))
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    done = 0 < state.get("max_steps", 0) <= state["global_step"] == summary.get("global_step")
    return summary if done and summary.get("fingerprint") == recipe.fingerprint() else None


def _decided_by_rank0(rank: int, decide):
    """Run `decide` on global rank 0 and give every rank its answer (or its RecipeError), so no rank
    starts collectives that another rank has refused to join."""
    box: list = [None]
    if rank == 0:
        try:
            box = [("ok", decide())]
        except RecipeError as e:
            box = [("error", str(e))]
    if _is_distributed():
        torch.distributed.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise RecipeError(value)
    return value


def _shutdown_distributed() -> None:
    if _is_distributed():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()  # else a rank can abort at exit and the launcher fails


def run(recipe: Recipe, launch: LaunchInfo | None = None, callbacks: Sequence[TrainerCallback] = ()) -> dict | None:
    """Train the recipe as one attempt of its job; returns the run summary on global rank 0 (None on other
    ranks). Raises AttemptStopped after a preemption or cancel has been saved as a verified checkpoint.
    Launchers may add Trainer `callbacks`; they run after medscale's (e.g. Ray reports verified checkpoints)."""
    preflight(recipe)
    # Fewer fragmentation OOMs with variable-length batches; must be set before the first CUDA allocation.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    started = time.time()
    args = training_arguments(recipe)  # also initialises torch.distributed under a launcher
    tracker = JobTracker(recipe, launch or LaunchInfo.from_env(), args.process_index, args.world_size)
    resume = _decided_by_rank0(args.process_index, lambda: _plan_start(recipe, tracker))
    if (finished := _decided_by_rank0(args.process_index, lambda: _finished_summary(recipe, resume))) is not None:
        log.info("job %s already finished at step %s (%s): nothing to train", recipe.name,
                 finished["global_step"], Path(recipe.train.output_dir) / "run_summary.json")
        _shutdown_distributed()
        return finished if args.process_index == 0 else None
    if resume:
        args.eval_on_start = False  # the base model's loss is already in the restored log history
    flag = StopFlag()
    flag.install()
    tracker.start(Path(resume) if resume else None, flag.cancel)
    try:
        summary, stopped = _train(recipe, args, tracker, flag, resume, started, callbacks)
    except KeyboardInterrupt:
        tracker.end("cancelled", "interrupted (Ctrl-C)")
        raise
    except BaseException as e:
        tracker.end("failed", f"{type(e).__name__}: {e}"[:2000])
        raise
    finally:
        flag.restore()
    if stopped:
        status = "cancelled" if stopped == STOP_CANCELLED else "preempted"
        tracker.end(status, f"stopped at step {tracker.step} with a verified checkpoint")
        _shutdown_distributed()
        raise AttemptStopped(status, tracker.step)
    tracker.end("completed")
    _shutdown_distributed()
    return summary


def _train(recipe: Recipe, args, tracker: JobTracker, flag: StopFlag, resume: str | None,
           started: float, extra_callbacks: Sequence[TrainerCallback] = ()) -> tuple[dict | None, int]:
    """The training proper: (summary on rank 0, stop code). A stopped run skips the final save and summary."""
    from medscale.data.pipeline import build_datasets
    from medscale.model.load import count_parameters, load_model, load_tokenizer
    from medscale.plan import token_budget
    from medscale.train.callbacks import (AdaptiveClipper, AttemptCallback, MedscaleTrainer, ProgressToCollator,
                                          ThroughputMeter, flops_per_token)
    from medscale.train.tracking import finish_swanlab, start_swanlab
    from transformers import set_seed

    rank, world = args.process_index, args.world_size
    with args.main_process_first(desc="build model folder and datasets"):
        if args.local_process_index == 0:
            ensure_model(recipe)
        tok = load_tokenizer(recipe.model)
        # the main process tokenizes and caches; the others wait, then load the cache (no collective timeouts)
        data = build_datasets(recipe.data, tok, recipe.train.seed, token_budget(recipe),
                              medscale_home() / "cache" / "data")
    set_seed(recipe.train.seed)  # the adapter's random init too, so two runs of one recipe are comparable
    model = load_model(recipe)
    trainable, total = count_parameters(model)
    t = recipe.train
    per_row = data.stats["train"].get("samples_per_pack", t.per_device_train_batch_size)  # mean when packed
    meter = ThroughputMeter(per_row * t.gradient_accumulation_steps * world, world,
                            flops_per_token(total, trainable, t.gradient_checkpointing))
    clipper = (AdaptiveClipper(t.max_grad_norm, t.adaptive_clip.percentile, t.adaptive_clip.window,
                               t.adaptive_clip.min_history) if t.adaptive_clip else None)
    swan_cb, swan_dir = start_swanlab(recipe, rank)
    attempt_cb = AttemptCallback(tracker, flag, t.save_total_limit, t.keep_best_checkpoint)
    callbacks = [meter, ProgressToCollator(data.collator), attempt_cb]
    trainer = MedscaleTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                              data_collator=data.collator, processing_class=tok, meter=meter, clipper=clipper,
                              callbacks=callbacks + ([swan_cb] if swan_cb else []) + list(extra_callbacks))
    if rank == 0:
        log.info("recipe %s (%s): %d processes, trainable %.2fM of %.1fM parameters, data %s", recipe.name,
                 recipe.fingerprint(), world, trainable / 1e6, total / 1e6, json.dumps(data.stats))
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        if swan_cb:
            finish_swanlab()
    if attempt_cb.stopped:
        return None, attempt_cb.stopped
    evaluated_last = any(h.get("step") == trainer.state.global_step and "eval_loss" in h
                         for h in trainer.state.log_history)
    final_eval = trainer.evaluate() if data.eval is not None and not evaluated_last else {}
    trainer.save_model(t.output_dir)  # adapter_model.safetensors + adapter_config.json + tokenizer, rank 0
    trainer.save_state()
    steps = _gather_steps(trainer.state.global_step)
    summary = None
    if trainer.is_world_process_zero():
        out = Path(t.output_dir)
        history = trainer.state.log_history
        losses = [h["loss"] for h in history if "loss" in h]
        summary = {
            "recipe": recipe.name, "fingerprint": recipe.fingerprint(), "host": socket.gethostname(),
            "attempt": tracker.attempt.number, "resumed_from": resume,
            "world_size": world, "steps_per_rank": steps, "global_step": trainer.state.global_step,
            "epochs": round(trainer.state.epoch or 0, 3), "train_runtime_s": round(result.metrics["train_runtime"], 2),
            "wall_s": round(time.time() - started, 2),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "train_loss_mean": result.training_loss, **eval_verdict(history, final_eval.get("eval_loss")),
            "trainable_params": trainable, "total_params": total, "data": data.stats,
            **{k: round(v, 4) for k, v in meter.summary().items()},
            "paths": {"adapter": str(out), "checkpoints": sorted(p.name for p in out.glob("checkpoint-*")),
                      "trainer_state": str(out / "trainer_state.json"), "loss_plot": str(out / "loss.png"),
                      "swanlab": swan_dir},
        }
        plot_losses(history, out / "loss.png", recipe.name)
        write_json_atomic(out / "run_summary.json", summary)
    return summary, 0
