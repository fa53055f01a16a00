"""Where an attempt starts: decided once, by global rank 0, before anything is written.

`plan_start(recipe)` resolves `train.resume` (auto: the newest verified checkpoint of this output dir; never; or a
checkpoint path), clears saves above the resume point that do not verify (torn ones removed, damaged ones set
aside), and refuses to start when that would lose or misdescribe work:
- a second live run in the same output dir;
- a job that had verified checkpoints but has none that verifies now (it would silently start from step 0);
- a recipe that differs from the checkpoint's in a way that changes what is learned (the record would describe a
  recipe that did not produce the weights). Differences that are safe to resume with (a larger max_steps, logging
  and saving cadence, evaluation and tracking settings) are allowed and recorded on the new attempt.
A checkpoint at the run's final step means the job has finished training: only the final evaluation, save and
summary remain (a run killed after its last save is finished, never trained a step past its end).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medscale.jobs.attempt import refuse_if_running
from medscale.jobs.checkpoint import (checkpoint_dirs, checkpoint_step, clear_newer_than, damaged_dirs,
                                      latest_verified, problem)
from medscale.jobs.errors import CheckpointError
from medscale.jobs.record import RECIPE_FILE, TRAINER_STATE, RunSummary, read_journal

# Keys that change nothing already learned: resuming with another value continues the same run.
SAFE_KEYS = ("description", "train.logging_steps", "train.save_steps", "train.save_total_limit",
             "train.keep_best_checkpoint", "train.resume", "train.output_dir", "train.dataloader_num_workers",
             "data.num_proc", "dist.config", "track.", "eval.", "generation.",
             "train.gradient_checkpointing")  # recompute changes memory and speed, not the numbers
# Keys safe only when they grow: training longer continues the schedule, shorter would end before the checkpoint.
GROW_KEYS = ("train.max_steps", "train.num_train_epochs")
# Keys safe while the samples per optimizer step stay the same (e.g. more nodes, less accumulation).
BATCH_KEYS = ("dist.num_processes", "dist.num_machines", "train.gradient_accumulation_steps")


@dataclass
class StartPlan:
    resume: Path | None = None
    changes: list[str] = field(default_factory=list)  # resume-safe keys that differ from the checkpoint's recipe
    finished: bool = False  # the resume checkpoint is at the run's final step: nothing left to train
    summary: RunSummary | None = None  # ... and its summary is written already: nothing left to do


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _samples_per_step(flat: dict) -> int:
    return (flat.get("train.per_device_train_batch_size", 1) * flat.get("train.gradient_accumulation_steps", 1)
            * flat.get("dist.num_processes", 1) * flat.get("dist.num_machines", 1))


def recipe_changes(saved: dict, recipe) -> tuple[list[str], list[str]]:
    """(safe, unsafe) dotted keys where `recipe` differs from the recipe a checkpoint was saved with."""
    now = _flat(recipe.model_dump(mode="json"))
    then = _flat(saved)
    keys = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k) and k in now and k in then)
    safe, unsafe = [], []
    for k in keys:
        a, b = then[k], now[k]
        if k == "train.output_dir" or k.startswith(SAFE_KEYS) or k == "description":
            ok = True
        elif k in GROW_KEYS:
            ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > a > 0
        elif k in BATCH_KEYS:
            ok = _samples_per_step(then) == _samples_per_step(now)
        else:
            ok = False
        (safe if ok else unsafe).append(f"{k}: {a!r} -> {b!r}")
    return safe, unsafe


def _saved_recipe(ckpt: Path) -> dict | None:
    f = ckpt / RECIPE_FILE
    return yaml.safe_load(f.read_text(encoding="utf-8")) if f.is_file() else None


def _finished(ckpt: Path, changes: list[str]) -> bool:
    """The checkpoint is the run's last step, and no key that makes the run longer changed."""
    if any(c.startswith(GROW_KEYS) for c in changes):
        return False
    try:
        state = json.loads((ckpt / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return 0 < state.get("max_steps", 0) <= state.get("global_step", -1)


def resolve_resume(mode: str, out: Path) -> Path | None:
    """`train.resume` -> the checkpoint to start from: auto = the newest verified of this output dir."""
    if mode == "never":
        return None
    if mode == "auto":
        return latest_verified(out)
    path = Path(mode).expanduser()
    if (why := problem(path)) is not None:
        raise CheckpointError(f"train.resume={mode}: not a verified checkpoint ({why}); use train.resume=auto to "
                              f"pick the newest verified one")
    step = checkpoint_step(path)
    newer = [p.name for s, p in checkpoint_dirs(out) if s > step and problem(p, check_hashes=False) is None]
    if newer:
        raise CheckpointError(f"train.resume={mode}: {out} holds newer verified checkpoints ({', '.join(newer)}) "
                              f"that this run would overwrite; resume into a new train.output_dir, or delete them")
    return path


def plan_start(recipe) -> StartPlan:
    out = Path(os.path.abspath(recipe.train.output_dir))
    mode, name = recipe.train.resume, recipe.name
    refuse_if_running(out, name)
    start = resolve_resume(mode, out)
    if mode == "never" and (newest := latest_verified(out)) is not None:
        raise CheckpointError(f"train.resume=never but {out} holds verified checkpoints of job {name} (newest "
                              f"{newest.name}): set train.resume=auto to continue, or choose a new train.output_dir")
    journal = read_journal(out)
    if journal is not None and journal.stopped_early and mode != "never":
        raise CheckpointError(f"job {name} in {out} was {journal.stopped_early}; it is never resumed: train it "
                              f"further as a new job (another train.output_dir)")
    clear_newer_than(out, start)
    if start is None and mode == "auto" and journal is not None and journal.verified_steps:
        aside = ", ".join(p.name for p in damaged_dirs(out)) or "none left on disk"
        raise CheckpointError(
            f"job {name} saved verified checkpoints (steps {', '.join(map(str, journal.verified_steps))}) but none "
            f"verifies now (set aside: {aside}); nothing was deleted and nothing restarts from step 0 silently: to "
            f"start over set train.resume=never, or choose a new train.output_dir")
    if start is None:
        return StartPlan()
    saved = _saved_recipe(start)
    safe, unsafe = recipe_changes(saved, recipe) if saved is not None else ([], [])
    if unsafe:
        raise CheckpointError(
            f"{start} was trained with a different recipe than this run's ({'; '.join(unsafe)}): resuming would "
            f"describe weights this recipe did not produce. Either run the recipe it was saved with "
            f"(`medscale jobs resume {name}` uses the recorded one) or start a new job with another "
            f"train.output_dir")
    plan = StartPlan(resume=start, changes=safe, finished=_finished(start, safe))
    if plan.finished:
        try:
            summary = RunSummary.load(out)
        except ValueError:  # a summary from another version or damaged: write it again
            summary = None
        plan.summary = summary if summary is not None and summary.global_step == checkpoint_step(start) else None
    return plan
