"""`run(recipe)`: the one training entry point every launcher ends in.

Linear on purpose (trl's `sft.py` main, torchtune's `recipe_main`), one stage a line, each stage handed what the
ones before it decided and never calling back into them: the RunPlan (`preflight.worker_plan`: what pre-flight
decided, the model's folder, memory plan and tokenized data; decided here once when nothing launched this run) ->
TrainingArguments (and the process group) -> data (`train.data`) -> where to start (`jobs.resume`, decided by
rank 0) -> the attempt (`jobs.attempt`) -> model and Trainer (`train.session`) -> train -> save and summarise.
`bench/run_path.py` measures it. No CLI parsing here; ranks and world size come from whatever torch.distributed /
accelerate / Ray set up, the launcher's identity from LaunchInfo. Bad input fails before the attempt starts, so it
leaves no output dir and no job row behind.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from medscale.errors import AttemptStopped, RunFailed
from medscale.jobs.attempt import Attempt
from medscale.jobs.kinds import JobKind
from medscale.jobs.launch import LaunchInfo
from medscale.jobs.record import LOSS_PLOT, SUMMARY, TRAINER_STATE, RunPaths, RunSummary
from medscale.jobs.resume import StartPlan, plan_start
from medscale.jobs.stop import stop_flag
from medscale.preflight import worker_plan
from medscale.recipe import Recipe
from medscale.train import dist
from medscale.train.args import training_arguments
from medscale.train.data import prepare_data
from medscale.train.report import eval_verdict, plot_losses
from medscale.train.session import Session, open_session
from medscale.verdicts import ResultRole

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
        tok, data = prepare_data(recipe, args, decided, stamp)
        start = dist.decided_by_rank0(args.process_index, lambda: plan_start(recipe))
        if start.summary is not None:
            log.info("job %s already finished at step %d (%s): nothing to train", recipe.name,
                     start.summary.global_step, Path(recipe.train.output_dir) / SUMMARY)
            return start.summary if args.process_index == 0 else None
        with Attempt(recipe, launch, args.process_index, args.world_size, kind=kind, resumed_from=start.resume,
                     step=start.step, changes=start.changes, stop=flag) as attempt:
            dist.stop_point(flag, attempt.step, args.device, start.resume)  # a stop during start-up, a cancel at start
            with open_session(recipe, args, tok, data, attempt, start=start, model_dir=Path(decided.model_dir),
                              recompute=decided.memory.recompute_layers, stop=flag, extra=callbacks) as session:
                dist.stop_point(flag, attempt.step, args.device, start.resume)  # loading the model takes minutes
                if start.finished:
                    _restore_final(session.trainer, start.resume)
                else:
                    result = session.trainer.train(resume_from_checkpoint=str(start.resume) if start.resume else None)
                    session.runtime_s = result.metrics["train_runtime"]
                    session.attempt_cb.raise_if_stopped()
                return _finish(recipe, session, data, attempt, start, started=started)


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


def _finish(recipe: Recipe, session: Session, data, attempt: Attempt, plan: StartPlan, *,
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
        paths=RunPaths(adapter=str(out), checkpoints=sorted(p.name for p in out.glob("checkpoint-*")),
                       trainer_state=str(out / TRAINER_STATE), loss_plot=str(out / LOSS_PLOT),
                       swanlab=session.swanlab_dir))
    plot_losses(history, out / LOSS_PLOT, recipe.name)
    summary.save(out)
    if verdict:
        from medscale.eval.run import result_row

        attempt.results_measured([result_row(r, model=f"{recipe.name} ({role})", base=recipe.model.path,
                                             adapter=out if role == ResultRole.TUNED else None, role=role,
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
