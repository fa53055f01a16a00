"""The Ray Train worker: `train_func` runs the job's entry on every worker, and each verified save is reported
to Ray as a pointer to the checkpoint in the output dir (never a copy)."""
from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

from launcher.ray.options import load_from_source
from medscale import settings
from medscale.jobs.launch import ENV_RAY_JOB_ID, LaunchInfo, entry_for
from medscale.recipe import Recipe
from medscale.status import AttemptStatus

log = logging.getLogger("medscale.ray")

POINTER = "medscale_checkpoint.json"


# --------------------------------------------------------------------------- checkpoints <-> Ray

def pointed_checkpoint(checkpoint) -> Path | None:
    """The medscale checkpoint folder a Ray checkpoint stands for: its pointer's target, or itself when it is a
    medscale checkpoint (local mode reports those directly)."""
    from medscale.jobs.checkpoint import MANIFEST

    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        d = Path(d)
        if (d / POINTER).is_file():
            return Path(json.loads((d / POINTER).read_text(encoding="utf-8"))["path"])
        if (d / MANIFEST).is_file():
            return Path(checkpoint.path)
    return None


def resume_overrides(checkpoint, recipe: Recipe) -> list[str]:
    """On a restart Ray hands back the last checkpoint rank 0 reported. Resume from it (`train.resume=PATH`) when
    it is a verified checkpoint of this job and still its newest; when the output dir has a newer verified one
    (reported too late) or Ray's was deleted since, continue from the newest (`auto`). A Ray checkpoint of another
    job (two jobs with one name sharing --storage-path) is ignored."""
    from medscale.jobs.checkpoint import checkpoint_step, latest_verified, read_manifest

    target = pointed_checkpoint(checkpoint)
    if target is None:
        if checkpoint is not None:
            log.warning("Ray's checkpoint %s is not a medscale checkpoint (no %s): ignored", checkpoint.path, POINTER)
        return []
    out = Path(os.path.abspath(recipe.train.output_dir))
    if target.parent != out:
        log.warning("Ray's checkpoint %s is not in this job's output dir %s: ignored", target, out)
        return []
    newest = latest_verified(out)
    if read_manifest(target, check_hashes=False) is None or newest is None:
        log.warning("Ray's checkpoint %s is gone or not verified: continuing from the newest verified one", target)
        return ["train.resume=auto"]
    if checkpoint_step(newest) > checkpoint_step(target):
        log.info("output dir has %s, newer than Ray's %s: continuing from it", newest.name, target.name)
        return ["train.resume=auto"]
    log.info("restart: resuming from Ray's checkpoint %s", target)
    return [f"train.resume={target}"]


def _scalars(d: dict) -> dict:
    return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float, str, bool))}


def _pointer(step: int, path: Path, output_dir: Path):
    """A Ray checkpoint that stands for `path`: a one-file folder in Ray's run dir (any storage filesystem).
    Its name is unique, so a step trained again (a resubmit from an older checkpoint) never makes Ray hold one
    folder twice: its num_to_keep would delete the folder the newer entry still needs."""
    import ray.train

    try:
        storage = ray.train.get_context().get_storage()
    except NotImplementedError:  # local mode (num_workers=0): no Ray storage, report the folder itself
        return ray.train.Checkpoint(str(path))
    fs = storage.storage_filesystem
    folder = f"{storage.experiment_fs_path}/medscale-checkpoint-{step}-{secrets.token_hex(3)}"
    fs.create_dir(folder)
    with fs.open_output_stream(f"{folder}/{POINTER}") as f:
        f.write(json.dumps({"path": str(path), "step": step, "output_dir": str(output_dir)}).encode())
    return ray.train.Checkpoint(folder, filesystem=fs)


def report_save(output_dir: str, step: int, rank0: bool) -> None:
    """Tell Ray Train about the checkpoint just saved at `step`, without copying it; called on every rank.

    `ray.train.report` is a collective that every worker must call equally often, so every rank reports once per
    save: global rank 0 with a pointer folder in Ray's run dir (NO_UPLOAD: Ray records it, nothing is
    transferred), the others with no checkpoint (Ray's "report from rank 0 only" pattern). Only a verified
    checkpoint (manifest present) is reported; a pointer that cannot be made is logged and reported as no
    checkpoint, never skipped: a rank missing from the collective would leave the others waiting forever.
    """
    import ray.train
    from ray.train import CheckpointUploadMode

    from medscale.jobs.checkpoint import read_manifest

    metrics, checkpoint = {}, None
    if rank0:
        out = Path(os.path.abspath(output_dir))
        path = out / f"checkpoint-{step}"
        try:
            if (manifest := read_manifest(path, check_hashes=False)) is None:
                log.warning("%s has no valid manifest: not reported to Ray", path)
            else:
                metrics = {**_scalars(manifest.get("metrics")), "step": step, "medscale_checkpoint": str(path)}
                checkpoint = _pointer(step, path, out)
                log.info("reporting %s to Ray (no upload)", path.name)
        except Exception:  # e.g. Ray's storage unreachable: training goes on, the next save tries again
            log.exception("could not make a Ray pointer for %s: reported without a checkpoint", path)
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)


def ray_report():
    """The Trainer callback that run() gets in a Ray worker (built here, on first use: transformers is slow to
    import). The HF Trainer calls on_save on every rank at the same step, and after medscale's own callbacks,
    so AttemptCallback has made the checkpoint verified (written its manifest) by then."""
    from transformers import TrainerCallback

    class RayReport(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            report_save(args.output_dir, state.global_step, state.is_world_process_zero)

    return RayReport()


# --------------------------------------------------------------------------- the train function (every worker)

def train_func(config: dict) -> dict | None:
    """One Ray Train worker: re-validate the recipe from plain data, resume from what Ray hands back, run() with
    ray_report(). Returns run()'s summary (rank 0; Ray's `Result.return_value`). An exception (a preempted attempt
    included) propagates so that Ray restarts the worker group; a cancel is final and returns (the driver exits
    EXIT_CANCELLED)."""
    import ray.train

    from medscale.errors import AttemptStopped

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # RunConfig's worker_runtime_env sets these; local mode (num_workers=0) runs in the driver without it
    os.environ.setdefault(settings.LAUNCHER.name, "ray")
    if config.get("job_id"):
        os.environ.setdefault(ENV_RAY_JOB_ID, config["job_id"])
    overrides = list(config["overrides"])
    entry = config.get("entry", "train")
    recipe = load_from_source(config["source"], overrides, entry)
    if extra := resume_overrides(ray.train.get_checkpoint(), recipe):
        recipe = load_from_source(config["source"], overrides + extra, entry)
    try:
        return entry_for(entry).load()(recipe, LaunchInfo.from_env(), callbacks=[ray_report()])
    except AttemptStopped as e:
        if e.status is not AttemptStatus.CANCELLED:
            raise
        return {"stopped": e.status}
