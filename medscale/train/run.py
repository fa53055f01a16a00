"""`run(recipe)`: the one training entry point every launcher ends in.

Linear on purpose (trl's `sft.py` main, torchtune's `recipe_main`): the RunPlan (what pre-flight decided: memory
plan, tokenized data; decided here once when nothing launched this run) -> TrainingArguments (and the process group)
-> data -> where to start (decided by rank 0) -> the attempt -> model and Trainer -> train -> save and summarise.
No CLI parsing here; ranks and world size come from whatever torch.distributed / accelerate / Ray set up, the
launcher's identity from LaunchInfo. Bad input fails before the attempt starts, so it leaves no output dir and no job
row behind.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from medscale.errors import AttemptStopped, RunFailed
from medscale.jobs.attempt import Attempt
from medscale.jobs.kinds import JobKind
from medscale.jobs.launch import LaunchInfo
from medscale.jobs.record import LOSS_PLOT, SUMMARY, TRAINER_STATE, RunSummary
from medscale.jobs.resume import StartPlan, plan_start
from medscale.jobs.runplan import RunPlan
from medscale.jobs.stop import stop_flag
from medscale.preflight import data_manifest, worker_plan
from medscale.recipe import Recipe
from medscale.train import dist
from medscale.train.args import training_arguments
from medscale.train.report import eval_verdict, plot_losses

if TYPE_CHECKING:
    from transformers import TrainerCallback

log = logging.getLogger("medscale.train")


def run(recipe: Recipe, launch: LaunchInfo | None = None,
        callbacks: Sequence["TrainerCallback"] = (), kind: JobKind = JobKind.TRAIN) -> RunSummary | None:
    """Train the recipe as one attempt of its job; returns the run summary on global rank 0 (None on other ranks).
    Raises AttemptStopped after a preemption or cancel (with a verified checkpoint once training has started).
    Launchers may add Trainer `callbacks`; they run after medscale's (e.g. Ray reports verified checkpoints).
    `kind` is the job's kind in the registry (a sweep's trial trains through here too)."""
    flag = stop_flag()
    flag.install()
    launch = launch or LaunchInfo.from_env()
    stamp = launch.launched_at.isoformat() if launch.launched_at else None
    decided = worker_plan(recipe, stamp)  # the launcher's pre-flight decisions, else this host's: before any work
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before the first CUDA allocation
    started = time.time()
    # also initialises torch.distributed under a launcher
    args = training_arguments(recipe, decided.memory.recompute, decided.memory.batch())
    if args.process_index == 0 and decided.memory.batch_note:
        log.info("%s", decided.memory.batch_note)
    with _process_group():
        tok, data = _prepare_data(recipe, args, decided, stamp)
        plan = dist.decided_by_rank0(args.process_index, lambda: plan_start(recipe))
        if plan.summary is not None:
            log.info("job %s already finished at step %d (%s): nothing to train", recipe.name,
                     plan.summary.global_step, Path(recipe.train.output_dir) / SUMMARY)
            return plan.summary if args.process_index == 0 else None
        with Attempt(recipe, launch, args.process_index, args.world_size, kind=kind,
                     resumed_from=plan.resume, changes=plan.changes, stop=flag) as attempt:
            dist.stop_point(flag, attempt.step, args.device, plan.resume)  # a stop during start-up, a cancel at start
            recompute = decided.memory.recompute_layers
            with _session(recipe, args, tok, data, attempt, plan=plan, extra=callbacks,
                          recompute=recompute) as session:
                dist.stop_point(flag, attempt.step, args.device, plan.resume)  # loading the model takes minutes
                if plan.finished:
                    _restore_final(session.trainer, plan.resume)
                else:
                    result = session.trainer.train(resume_from_checkpoint=str(plan.resume) if plan.resume else None)
                    session.runtime_s = result.metrics["train_runtime"]
                    session.attempt_cb.raise_if_stopped()
                return _finish(recipe, session, data, attempt, plan, started=started)


# --------------------------------------------------------------------------- the steps of run()

@contextmanager
def _process_group():
    """End the process group however run() ends: after waiting for every rank when they all finished or stopped
    together, at once after a failure (a rank that failed will never reach a barrier). TrainingArguments with a
    ZeRO-3 config also set a process-wide flag under which transformers builds every later model partitioned
    (empty weights): it is cleared too, for what the process does next (a sweep trial's evaluation)."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    try:
        yield
    except AttemptStopped:
        dist.shutdown(clean=True)
        raise
    except BaseException:
        dist.shutdown(clean=False)
        raise
    finally:
        unset_hf_deepspeed_config()
    dist.shutdown(clean=True)


def _prepare_data(recipe: Recipe, args, decided: RunPlan, stamp: str | None):
    """Tokenizer and datasets: the cache entry the RunPlan names (pre-flight tokenized it). A run that decided for
    itself tokenizes here, the main process first (the others load its cache), and records its plan, data manifest
    included, beside the journal. The main process builds the tiny demo model if asked. Bad data raises DataError
    here, before the attempt starts."""
    from medscale.data.pipeline import build_datasets, cache_root, cached_datasets
    from medscale.model.load import load_tokenizer
    from medscale.model.tiny import ensure_tiny_model

    seed = recipe.train.seed
    with args.main_process_first(desc="build model folder and datasets"):
        if args.local_process_index == 0:
            ensure_tiny_model(recipe.model)
        tok = load_tokenizer(recipe.model)
        data = cached_datasets(Path(decided.data.cache), recipe.data, tok, seed) if decided.data else None
        if data is None:  # decided here, or its cache entry was removed since
            data = build_datasets(recipe.data, tok, seed, decided.memory.token_budget, cache_root())
    if recipe.train.compile != "off":  # a compiled step sees a few row lengths (a graph each), not one per batch
        data.collator.row_cap = decided.memory.token_budget or args.per_device_train_batch_size * recipe.data.max_length
    if decided.launch is None and args.process_index == 0:
        decided.data = data_manifest(recipe, data)
        decided.save(recipe.train.output_dir, stamp)
    return tok, data


@dataclass(kw_only=True)
class _Session:
    """What training produced beside the Trainer's own state, for the summary."""

    trainer: object
    attempt_cb: object
    meter: object
    trainable: int
    total: int
    swanlab_dir: str | None
    runtime_s: float | None = None


@contextmanager
def _session(recipe: Recipe, args, tok, data, attempt: Attempt, *, plan: StartPlan, extra: Sequence,
             recompute: int | None):
    """The model and the Trainer with medscale's callbacks (throughput, finiteness, stop/save lifecycle, trackers,
    recompute on the first `recompute` decoder layers only); the trackers are closed however training ends."""
    from transformers import set_seed

    from medscale.model.load import count_parameters, load_model
    from medscale.train.callbacks import (AdaptiveClipper, AttemptCallback, MedscaleTrainer, ProgressToCollator,
                                          RecomputeFirstLayers, StepHealth, ThroughputMeter, decoder_blocks,
                                          flops_per_token)
    from medscale.train.tracking import start_trackers

    if recipe.dist.deepspeed:
        from medscale.train.safe_load import install

        install()  # DeepSpeed's own resume would unpickle whatever a checkpoint folder holds
    set_seed(recipe.train.seed)  # the adapter's random init too, so two runs of one recipe are comparable
    model = load_model(recipe)
    trainable, total = count_parameters(model)
    t, world = recipe.train, args.world_size
    layers = len(decoder_blocks(model))
    partial = recompute is not None and 0 < recompute < layers
    per_row = data.stats["train"].get("samples_per_pack", t.per_device_train_batch_size)  # mean when packed
    meter = ThroughputMeter(per_row * t.gradient_accumulation_steps * world, world,
                            flops_per_token(total, trainable, 1.0 if recompute is None else min(recompute / layers, 1)))
    health = StepHealth()
    clipper = (AdaptiveClipper(t.max_grad_norm, t.adaptive_clip.percentile, t.adaptive_clip.window,
                               t.adaptive_clip.min_history) if t.adaptive_clip else None)
    attempt_cb = AttemptCallback(attempt, stop_flag(), health, t.save_total_limit, t.keep_best_checkpoint)
    tracking = start_trackers(recipe, args.process_index, attempt)
    if plan.resume:
        args.eval_on_start = False  # the base model's loss is already in the restored log history
    trainer = MedscaleTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                              data_collator=data.collator, processing_class=tok, meter=meter, health=health,
                              clipper=clipper, callbacks=[meter, ProgressToCollator(data.collator), attempt_cb]
                              + tracking.callbacks + ([RecomputeFirstLayers(recompute)] if partial else [])
                              + list(extra))
    if (recipe.eval.benchmarks or recipe.eval.control) and args.eval_strategy != "no":
        if recipe.dist.zero_stage() == 3:  # sharded scoring runs uneven batches per rank: ZeRO-3 would hang on it
            log.warning("ZeRO-3: eval.benchmarks / eval.control are measured at the end of the run only")
        else:
            from medscale.eval.callback import BenchmarkCallback

            bench_cb = BenchmarkCallback.from_recipe(recipe)
            trainer.add_callback(bench_cb)
            bench_cb.log = trainer.log  # reaches SwanLab and the log history like any metric
    if args.process_index == 0:
        if t.gradient_checkpointing == "auto":
            log.info("gradient_checkpointing=auto: recompute %d of %d decoder layers", layers if recompute is None
                     else recompute, layers)
        log.info("recipe %s (%s): %d processes, trainable %.2fM of %.1fM parameters, data %s", recipe.name,
                 recipe.fingerprint(), world, trainable / 1e6, total / 1e6, json.dumps(data.stats))
    try:
        yield _Session(trainer=trainer, attempt_cb=attempt_cb, meter=meter, trainable=trainable, total=total,
                       swanlab_dir=tracking.swanlab_dir)
    finally:
        tracking.close()


ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def _restore_final(trainer, ckpt: Path) -> None:
    """A run killed after saving its last step: its final adapter is that checkpoint's. Copy it out, restore the
    Trainer's state (log history included), and load the weights for the final evaluation (not under ZeRO-3, whose
    partitioned weights only the Trainer's own resume can load: that evaluation is then skipped)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState
    from transformers.integrations import is_deepspeed_zero3_enabled

    trainer.state = TrainerState.load_from_json(str(ckpt / TRAINER_STATE))
    if not is_deepspeed_zero3_enabled():
        set_peft_model_state_dict(trainer.model, load_file(str(ckpt / "adapter_model.safetensors")))
    elif trainer.eval_dataset is not None:
        trainer.eval_dataset = None
        log.warning("ZeRO-3: the final evaluation of a run finished from %s is skipped", ckpt.name)
    log.info("job finished training at %s before it was killed: redoing only its final evaluation, save and "
             "summary", ckpt.name)


def _save_final(trainer, out: Path) -> None:
    """The final adapter (adapter_model.safetensors + adapter_config.json + tokenizer) is saved into a staging folder
    and moved in file by file, each fsynced and renamed: a crash or a full disk never leaves a torn adapter that
    looks final. Every rank calls save_model (ZeRO-3 gathers the weights), global rank 0 writes and moves, holding
    the staging folder's lock: one a kill leaves behind is removed by the next run of the job or `jobs gc`."""
    from medscale.jobs.leftovers import FINAL_SAVE, owned
    from medscale.jobs.record import fsync_dir
    from medscale.train.callbacks import disk_full_named

    staging = out / FINAL_SAVE
    with owned(staging) if trainer.is_world_process_zero() else nullcontext(), disk_full_named(out):
        trainer.save_model(str(staging))
        dist.barrier()
        if trainer.is_world_process_zero():
            for f in sorted(staging.iterdir()):
                if f.is_file():
                    fd = os.open(f, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    os.replace(f, out / f.name)
            fsync_dir(out)


def _finish(recipe: Recipe, session: _Session, data, attempt: Attempt, plan: StartPlan, *,
            started: float) -> RunSummary | None:
    """Final evaluation (unless the last step was just evaluated), final adapter + state, and on rank 0 the run
    summary and the loss curve."""
    out, trainer = Path(recipe.train.output_dir), session.trainer
    state = trainer.state
    evaluated_last = any(h.get("step") == state.global_step and "eval_loss" in h for h in state.log_history)
    final_eval = trainer.evaluate() if trainer.eval_dataset is not None and not evaluated_last else {}
    finished_from = plan.resume if plan.finished else None
    if finished_from is not None and trainer.is_world_process_zero():
        for name in ADAPTER_FILES:  # byte for byte the adapter the run saved at its last step
            shutil.copy2(finished_from / name, out / name)
        trainer.processing_class.save_pretrained(out)
    elif finished_from is None:
        _save_final(trainer, out)
    trainer.save_state()
    verdict = _run_verdict(recipe, trainer)
    steps = dist.gather(state.global_step)
    if not trainer.is_world_process_zero():
        return None
    history = state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    summary = RunSummary(
        recipe=recipe.name, fingerprint=recipe.fingerprint(), host=socket.gethostname(),
        attempt=attempt.info.number, resumed_from=str(plan.resume) if plan.resume else None,
        world_size=trainer.args.world_size, steps_per_rank=steps, global_step=state.global_step,
        epochs=round(state.epoch or 0, 3),
        train_runtime_s=round(session.runtime_s, 2) if session.runtime_s else None,
        wall_s=round(time.time() - started, 2), loss_first=losses[0] if losses else None,
        loss_last=losses[-1] if losses else None,
        train_loss_mean=sum(losses) / len(losses) if losses else None,
        **eval_verdict(history, final_eval.get("eval_loss")), trainable_params=session.trainable,
        total_params=session.total, data=data.stats, **{k: round(v, 4) for k, v in session.meter.summary().items()},
        finished_from_checkpoint=str(finished_from) if finished_from else None,
        benchmarks=verdict.benchmarks if verdict else {}, control=verdict.control if verdict else None,
        paths={"adapter": str(out), "checkpoints": sorted(p.name for p in out.glob("checkpoint-*")),
               "trainer_state": str(out / TRAINER_STATE), "loss_plot": str(out / LOSS_PLOT),
               "swanlab": session.swanlab_dir})
    plot_losses(history, out / LOSS_PLOT, recipe.name)
    summary.save(out)
    if verdict:
        from medscale.eval.run import result_row

        attempt.results_measured([result_row(r, model=f"{recipe.name} ({role})", base=recipe.model.path,
                                             adapter=out if role == "tuned" else None, role=role,
                                             step=state.global_step) for r, role in verdict.results])
        if verdict.failure:
            raise RunFailed(verdict.failure)
    return summary


def _run_verdict(recipe: Recipe, trainer):
    """The benchmark verdicts and the forgetting guard at the end of a run (every rank: scoring is sharded)."""
    if not (recipe.eval.benchmarks or recipe.eval.control):
        return None
    if recipe.dist.zero_stage() == 3:
        log.warning("ZeRO-3: the end-of-run benchmark verdict is skipped; run `medscale eval %s --against base`",
                    recipe.train.output_dir)
        return None
    from medscale.eval.verdict import run_verdict

    return run_verdict(trainer.model, trainer.processing_class, recipe, trainer.state.global_step)
