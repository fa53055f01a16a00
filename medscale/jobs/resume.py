"""Where an attempt starts: decided once, by global rank 0, before anything is written.

`plan_start(recipe)` resolves `train.resume` (auto: the newest verified checkpoint of this output dir; never; or a
checkpoint path), removes what a killed run left (its final-save staging folder, its exports' temporary folders),
clears saves above the resume point that do not verify (torn ones removed, anything else set aside), and refuses to
start when that would lose or misdescribe work:
- a second live run in the same output dir;
- a job that had verified checkpoints, or has checkpoints set aside, but none that verifies now (it would silently
  start from step 0: `medscale train --restart` starts over);
- a recipe that differs from the checkpoint's in a way that changes what is learned (the record would describe a
  recipe that did not produce the weights). Differences that are safe to resume with (a larger max_steps, logging
  and saving cadence, evaluation and tracking settings) are allowed and recorded on the new attempt.
A checkpoint at the run's final step means the job has finished training: only the final evaluation, save and
summary remain (a run killed after its last save is finished, never trained a step past its end).
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from medscale.dist import DistContext
from medscale.jobs.checkpoint import (checkpoint_dirs, checkpoint_step, clear_newer_than, damaged_dirs,
                                      latest_verified, problem, set_aside)
from medscale.jobs.errors import CheckpointError, JobStateError
from medscale.jobs.leftovers import run_leftovers
from medscale.jobs.record import RECIPE_FILE, TRAINER_STATE, Journal, RunSummary, read_journal
from medscale.recipe import Recipe, load_saved
from medscale.registry import pid_alive
from medscale.status import AttemptStatus

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
    step: int = 0  # the resume checkpoint's step
    changes: list[str] = field(default_factory=list)  # resume-safe keys that differ from the checkpoint's recipe
    finished: bool = False  # the resume checkpoint is at the run's final step: nothing left to train
    summary: RunSummary | None = None  # ... and its summary is written already: nothing left to do


def refuse_if_running(output_dir: Path, name: str) -> None:
    """Two live runs in one output dir would overwrite each other's checkpoints: refuse the second. A live process
    that only reuses the recorded PID (it started after the attempt did) is no run."""
    last = (read_journal(output_dir) or Journal(name, str(output_dir))).last
    if (last and last.status == AttemptStatus.RUNNING and last.host == socket.gethostname()
            and last.pid != os.getpid() and pid_alive(last.pid, last.started_at)):
        raise JobStateError(f"job {name} is already running in {output_dir} (attempt {last.number}, pid {last.pid}): "
                            f"stop it (`medscale jobs cancel {name}`) or choose another train.output_dir")


def _differences(then, now, prefix: str = ""):
    """(dotted key, saved value, new value) where two typed recipes (or sections) differ, section by section, each
    value as the recipe file writes it (a field's serializer applied: track.report_to is the trackers that log).
    Only the fields the saved recipe recorded are compared: one newer than the job's medscale was not in its
    recipe. A dict value (train.trainer_args) is compared key by key, its keys present on both sides."""
    written_then, written_now = then.model_dump(mode="json"), now.model_dump(mode="json")
    for name in type(then).model_fields:
        if name not in then.model_fields_set or name not in written_then:
            continue
        a, b, key = written_then[name], written_now[name], f"{prefix}{name}"
        if isinstance(getattr(then, name), BaseModel) and isinstance(getattr(now, name), BaseModel):
            yield from _differences(getattr(then, name), getattr(now, name), key + ".")
        elif isinstance(a, dict) and isinstance(b, dict):
            yield from ((f"{key}.{k}", a[k], b[k]) for k in a.keys() & b.keys() if a[k] != b[k])
        elif a != b:
            yield key, a, b


def _samples_per_step(recipe: Recipe) -> int:
    return (recipe.train.per_device_train_batch_size * recipe.train.gradient_accumulation_steps
            * DistContext.planned(recipe.dist).world_size)


def recipe_changes(saved: Recipe, recipe: Recipe) -> tuple[list[str], list[str]]:
    """(safe, unsafe) dotted keys where `recipe` differs from the recipe a checkpoint was saved with, each as
    "key: saved value -> new value" (the values as the recipe file writes them)."""
    safe, unsafe = [], []
    for k, a, b in sorted(_differences(saved, recipe), key=lambda d: d[0]):
        if k == "train.output_dir" or k.startswith(SAFE_KEYS) or k == "description":
            ok = True
        elif k in GROW_KEYS:
            ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > a > 0
        elif k in BATCH_KEYS:
            ok = _samples_per_step(saved) == _samples_per_step(recipe)
        else:
            ok = False
        (safe if ok else unsafe).append(f"{k}: {a!r} -> {b!r}")
    return safe, unsafe


def _saved_recipe(ckpt: Path) -> Recipe | None:
    """The recipe the checkpoint was saved with, as this version reads it (medscale.recipe.load_saved)."""
    f = ckpt / RECIPE_FILE
    return load_saved(f) if f.is_file() else None


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
    run_leftovers(out, remove=True)
    start = resolve_resume(mode, out)
    if mode == "never" and (newest := latest_verified(out)) is not None:
        raise CheckpointError(f"train.resume=never (--restart) but {out} holds verified checkpoints of job {name} "
                              f"(newest {newest.name}): set train.resume=auto to continue, `--checkpoint N` to go "
                              f"back to step N, or choose a new train.output_dir")
    journal = read_journal(out)
    if journal is not None and journal.stopped_early and mode != "never":
        raise CheckpointError(f"job {name} in {out} was {journal.stopped_early}; it is never resumed: train it "
                              f"further as a new job (another train.output_dir)")
    clear_newer_than(out, start)
    aside = damaged_dirs(out)
    if start is None and mode == "auto" and (aside or (journal is not None and journal.verified_steps)):
        saved = (f"saved verified checkpoints (steps {', '.join(map(str, journal.verified_steps))})"
                 if journal is not None and journal.verified_steps else "has checkpoints"
                 + (" and no job record (medscale_job.json)" if journal is None else ""))
        raise CheckpointError(
            f"job {name} in {out} {saved} but no checkpoint verifies now (set aside: "
            f"{', '.join(str(p) for p in aside) or 'none left on disk'}); nothing was deleted and nothing restarts "
            f"from step 0 silently: to start over run again with --restart (train.resume=never), or choose a new "
            f"train.output_dir")
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
    plan = StartPlan(resume=start, step=checkpoint_step(start), changes=safe, finished=_finished(start, safe))
    if plan.finished:
        try:
            summary = RunSummary.load(out)
        except JobStateError:  # a damaged summary (or one of no version's layout): write it again
            summary = None
        plan.summary = summary if summary is not None and summary.global_step == plan.step else None
    return plan


def verified_steps(out: Path) -> list[int]:
    """Steps of this output dir's checkpoints whose manifest checks out by size (cheap: no re-hashing)."""
    return [s for s, p in checkpoint_dirs(out) if problem(p, check_hashes=False) is None]


def roll_back(recipe, step: int) -> str:
    """`medscale train --checkpoint N`: the override that resumes from checkpoint-N of this job's output dir, after
    setting aside (never deleting) the verified checkpoints newer than it, which the run would save over. N must be
    a step that verifies; bad weights behind a good manifest (NaN) are left behind this way."""
    out = Path(os.path.abspath(recipe.train.output_dir))
    steps = verified_steps(out)
    ckpt = out / f"checkpoint-{step}"
    if step not in steps or (why := problem(ckpt)) is not None:
        why = f"({why})" if step in steps else "is no verified checkpoint"
        raise CheckpointError(f"--checkpoint {step}: {ckpt} {why}; verified steps in {out}: "
                              f"{', '.join(map(str, steps)) or 'none'}")
    refuse_if_running(out, recipe.name)
    for s, p in checkpoint_dirs(out):
        if s > step and s in steps:
            set_aside(p, f"newer than --checkpoint {step}, which this run resumes from")
    return f"train.resume={json.dumps(str(ckpt))}"


def nan_advice(out: Path, resumed_from: Path | None) -> str:
    """What to do after a NaN/inf step. A run that diverged right after resuming, with nothing saved since, has the
    bad weights in that checkpoint (its manifest only proves the files are the ones saved): resuming from it again
    would fail again, so name the verified one before it."""
    steps = verified_steps(out)
    if resumed_from is None or not steps or steps[-1] != checkpoint_step(resumed_from):
        newest = f"checkpoint-{steps[-1]}" if steps else "the beginning (no verified checkpoint)"
        return f"lower train.learning_rate (or check the data) and run again: it resumes from {newest}"
    before = [s for s in steps if s < steps[-1]]
    back = (f"run again with `--checkpoint {before[-1]}` to resume from checkpoint-{before[-1]}, the verified one "
            f"before it ({resumed_from.name} is set aside, not deleted)" if before else
            "there is no verified checkpoint before it: start again in a new train.output_dir")
    return (f"this attempt resumed from {resumed_from} and nothing finite was saved since, so its weights are the "
            f"likely cause and a plain rerun would resume from it again: {back}")
