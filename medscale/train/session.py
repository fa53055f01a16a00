"""The model and its Trainer: one stage of `run()`, handed what the stages before it decided (the model's folder,
the recompute plan, the data, the attempt, where it starts), never calling back into them."""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from medscale.jobs.attempt import Attempt
from medscale.jobs.resume import StartPlan
from medscale.jobs.stop import StopFlag
from medscale.recipe import Recipe

log = logging.getLogger("medscale.train")


@dataclass(kw_only=True)
class Session:
    """What training produced beside the Trainer's own state, for the summary."""

    trainer: object
    attempt_cb: object
    meter: object
    trainable: int
    total: int
    swanlab_dir: str | None
    runtime_s: float | None = None


@contextmanager
def open_session(recipe: Recipe, args, tok, data, attempt: Attempt, *, start: StartPlan, model_dir: Path,
                 recompute: int | None, stop: StopFlag, extra: Sequence = ()):
    """The model (from `model_dir`, where the plan found it) and the Trainer with medscale's callbacks (throughput,
    finiteness, stop/save lifecycle, trackers, recompute on the first `recompute` decoder layers only, as the memory
    plan decided; None: all), then the launcher's `extra` ones; the trackers are closed however training ends."""
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
    model = load_model(recipe, folder=model_dir)
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
    attempt_cb = AttemptCallback(attempt, stop, health, t.save_total_limit, t.keep_best_checkpoint)
    tracking = start_trackers(recipe, args.process_index, attempt)
    if start.resume:
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
        yield Session(trainer=trainer, attempt_cb=attempt_cb, meter=meter, trainable=trainable, total=total,
                      swanlab_dir=tracking.swanlab_dir)
    finally:
        tracking.close()
