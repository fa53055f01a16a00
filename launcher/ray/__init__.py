"""Ray launcher: a Ray Train TorchTrainer whose workers each call the job's entry (`medscale.train.run()` for
training). One module per program, and what they hand each other:

- `submission` (`medscale submit ray`, `medscale jobs resume`; `RayLauncher`): builds the job (entrypoint + runtime
  env), submits it with a JobSubmissionClient, or prints the equivalent `ray job submit` command.
- `driver` (`launcher/ray_job.py`, the job's driver on the cluster): validates the recipe, builds ScalingConfig /
  RunConfig from it, and runs `train_func` on `dist.num_processes x dist.num_machines` workers.
- `worker` (`train_func`, on every worker): re-loads the recipe from plain data (a built-in name, or the recipe
  file's text) and calls the entry. A worker that fails or is preempted raises, so Ray's FailureConfig restarts the
  whole worker group, and the new group resumes from the newest verified checkpoint (`train.resume=auto`, or the
  checkpoint Ray hands back).
- `options`: what crosses between them as plain data (`RayOptions`, the recipe's source).

Checkpoints are never copied into Ray's storage: a Trainer callback (`ray_report()`, run after medscale's own, so
the checkpoint is verified by then) has global rank 0 report each save as a small pointer folder
(`medscale_checkpoint.json` naming the checkpoint in the output dir) with Ray Train V2's
`CheckpointUploadMode.NO_UPLOAD`, and every other rank an empty report at the same save; medscale's retention keeps
deleting the real folders as it always does. Rank 0's run summary is train_func's return value (`Result.return_value`).

The names below are this package's public surface (`from launcher.ray import RayLauncher`, ...).
"""
from __future__ import annotations

from launcher import LaunchError
from launcher.ray.driver import build_trainer, current_job_id, main, num_workers, parse_args, run_config, scaling_config
from launcher.ray.options import RayOptions, check_for_ray, load_from_source, recipe_source
from launcher.ray.submission import (DEFAULT_ADDRESS, ENTRY_SCRIPT, PASS_ENV, RECIPE_ENV, REPO, RUNTIME_ENV_FILE,
                                     RayLauncher, RayPlan, RaySubmission, default_address, default_working_dir,
                                     prepare_submission, submit, wait)
from launcher.ray.worker import POINTER, pointed_checkpoint, ray_report, report_save, resume_overrides, train_func

__all__ = ["DEFAULT_ADDRESS", "ENTRY_SCRIPT", "PASS_ENV", "POINTER", "RECIPE_ENV", "REPO", "RUNTIME_ENV_FILE",
           "LaunchError", "RayLauncher", "RayOptions", "RayPlan", "RaySubmission", "build_trainer", "check_for_ray",
           "current_job_id", "default_address", "default_working_dir", "load_from_source", "main", "num_workers",
           "parse_args", "pointed_checkpoint", "prepare_submission", "ray_report", "recipe_source", "report_save",
           "resume_overrides", "run_config", "scaling_config", "submit", "train_func", "wait"]
