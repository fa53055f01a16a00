"""Ray launcher: a Ray Train TorchTrainer whose workers each call the job's entry (`medscale.train.run()` for
training).

Two thin halves:
- **cluster side** (`launcher/ray_job.py`, the job's driver): validates the recipe, builds ScalingConfig /
  RunConfig from it, and runs `train_func` on `dist.num_processes x dist.num_machines` workers. Each worker
  re-loads the recipe from plain data (a built-in name, or the recipe file's text) and calls `run()`. A worker
  that fails or is preempted raises, so Ray's FailureConfig restarts the whole worker group, and the new group
  resumes from the newest verified checkpoint (`train.resume=auto`, or the checkpoint Ray hands back).
- **submit side** (`medscale submit ray`, `medscale jobs resume`): builds the job (entrypoint + runtime env),
  submits it with a JobSubmissionClient, or prints the equivalent `ray job submit` command.

Checkpoints are never copied into Ray's storage: a Trainer callback (`ray_report()`, run after medscale's own, so
the checkpoint is verified by then) has global rank 0 report each save as a small pointer folder
(`medscale_checkpoint.json` naming the checkpoint in the output dir) with Ray Train V2's
`CheckpointUploadMode.NO_UPLOAD`, and every other rank an empty report at the same save; medscale's retention keeps
deleting the real folders as it always does. Rank 0's run summary is train_func's return value (`Result.return_value`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from medscale import settings
from medscale.errors import EXIT_CANCELLED, UserError
from medscale.jobs.launch import ENV_RAY_JOB_ID, LaunchInfo, LaunchRequest, entry_for, register_submitted
from medscale.preflight import Report, check_launch
from medscale.recipe import Recipe, RecipeError, load_recipe
from medscale.registry import redact

log = logging.getLogger("medscale.ray")

REPO = Path(__file__).resolve().parent.parent
ENTRY_SCRIPT = "launcher/ray_job.py"
RUNTIME_ENV_FILE = "cluster/ray/runtime_env.yaml"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
POINTER = "medscale_checkpoint.json"
RECIPE_ENV = "MEDSCALE_RECIPE_YAML"  # carries a recipe file that is not inside the uploaded working dir
# Variables that, when set where the job is submitted, travel with it (so the workers write to the same
# registry and expand ${MEDSCALE_MODELS} the same way); `--env KEY=VALUE` overrides them.
PASS_ENV = ("MEDSCALE_HOME", "MEDSCALE_REGISTRY_URL", "MEDSCALE_MODELS", "MEDSCALE_DATA", "MEDSCALE_HEARTBEAT_S")


# --------------------------------------------------------------------------- options (entry script flags)

class LaunchError(UserError):
    """The Ray cluster cannot take this job (its job server unreachable, a bad --env, no project to upload)."""


@dataclass
class RayOptions:
    """What the Ray job needs beyond the recipe. Entry-script flags, each defaulting to an environment variable
    so a runtime env can set it too (until the recipe grows `dist.max_failures` and friends)."""

    max_failures: int = 3
    storage_path: str | None = None  # None: the recipe's train.output_dir
    use_gpu: bool | None = None  # None: GPUs when the cluster has any
    cpus_per_worker: float = 1.0
    # submit side only (not entry-script flags): where the job goes and what it uploads
    address: str | None = None  # None: $RAY_ADDRESS, else the local dashboard
    working_dir: str | None = None  # None: this directory if it holds launcher/ray_job.py
    runtime_env: str | None = None  # None: cluster/ray/runtime_env.yaml of the working dir

    @classmethod
    def from_dict(cls, d: dict) -> "RayOptions":
        keep = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (d or {}).items() if k in keep})

    def to_dict(self) -> dict:
        """What the job records for `jobs resume` (never `--env` values: they may hold secrets)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_env(cls, env=os.environ) -> "RayOptions":
        return cls(max_failures=settings.RAY_MAX_FAILURES.get(env), storage_path=settings.RAY_STORAGE_PATH.get(env),
                   use_gpu=settings.RAY_USE_GPU.get(env), cpus_per_worker=settings.RAY_CPUS_PER_WORKER.get(env))

    def flags(self) -> list[str]:
        """The entry-script flags that differ from the defaults (so a dry run shows only what was asked)."""
        d, out = RayOptions(), []
        if self.max_failures != d.max_failures:
            out += ["--max-failures", str(self.max_failures)]
        if self.storage_path:
            out += ["--storage-path", self.storage_path]
        if self.use_gpu is not None:
            out += ["--gpu" if self.use_gpu else "--cpu"]
        if self.cpus_per_worker != d.cpus_per_worker:
            out += ["--cpus-per-worker", f"{self.cpus_per_worker:g}"]
        return out


def num_workers(recipe: Recipe) -> int:
    return recipe.dist.num_processes * recipe.dist.num_machines


def scaling_config(recipe: Recipe, use_gpu: bool, cpus_per_worker: float = 1.0):
    """One Ray Train worker per recipe process; a GPU each when training on GPUs."""
    from ray.train import ScalingConfig

    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    return ScalingConfig(num_workers=num_workers(recipe), use_gpu=use_gpu, resources_per_worker=resources)


def run_config(recipe: Recipe, opts: RayOptions, job_id: str | None):
    """Ray's run lives in `<storage>/<job name>`; the storage defaults to the job's own output dir, so a
    resubmitted job finds its Ray run again and two jobs never share one. Ray keeps only pointers there."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    env = {"MEDSCALE_LAUNCHER": "ray", **({ENV_RAY_JOB_ID: job_id} if job_id else {})}
    return RunConfig(name=recipe.name, storage_path=opts.storage_path or os.path.abspath(recipe.train.output_dir),
                     failure_config=FailureConfig(max_failures=opts.max_failures),
                     # Ray deletes only its pointer folders; the checkpoints themselves follow train.save_total_limit
                     checkpoint_config=CheckpointConfig(num_to_keep=2),
                     worker_runtime_env={"env_vars": env})


# --------------------------------------------------------------------------- the recipe as plain data

def recipe_source(ref: str, env=os.environ) -> dict:
    """What every worker needs to re-load the recipe: a built-in name, or a file's name and text (a worker on
    another node may not see the driver's path). `env:VAR` reads the YAML text from that variable."""
    if ref.startswith("env:"):
        var = ref[4:]
        if not env.get(var):
            raise RecipeError(f"recipe {ref}: environment variable {var} is empty (it should hold the recipe YAML)")
        return {"name": None, "file": "recipe.yaml", "text": env[var]}
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist (relative paths are relative to the job's working "
                              f"dir, the uploaded project)")
        return {"name": None, "file": path.name, "text": path.read_text(encoding="utf-8")}
    return {"name": ref, "file": None, "text": None}


def check_for_ray(recipe: Recipe) -> Recipe:
    """What a Ray job needs of a recipe beyond its own checks (a launcher-domain validator)."""
    if not os.path.isabs(recipe.output_dir_as_written):
        raise RecipeError(f"train.output_dir={recipe.output_dir_as_written} is relative: in a Ray job it would land in "
                          f"the job's temporary copy of the working dir, on each node separately, and no restart or "
                          f"resubmit could find its checkpoints; use an absolute path on storage every node shares")
    return recipe


def load_from_source(source: dict, overrides: list[str]) -> Recipe:
    """Validate the recipe again where it runs (paths, environment and devices are this node's)."""
    if source["name"] is not None:
        return load_recipe(source["name"], overrides)
    with tempfile.TemporaryDirectory(prefix="medscale-recipe-") as folder:
        path = Path(folder) / source["file"]
        path.write_text(source["text"], encoding="utf-8")
        return load_recipe(str(path), overrides)


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
    os.environ.setdefault("MEDSCALE_LAUNCHER", "ray")
    if config.get("job_id"):
        os.environ.setdefault(ENV_RAY_JOB_ID, config["job_id"])
    overrides = list(config["overrides"])
    recipe = load_from_source(config["source"], overrides)
    if extra := resume_overrides(ray.train.get_checkpoint(), recipe):
        recipe = load_from_source(config["source"], overrides + extra)
    try:
        return entry_for(config.get("entry", "train")).load()(recipe, LaunchInfo.from_env(), callbacks=[ray_report()])
    except AttemptStopped as e:
        if e.status != "cancelled":
            raise
        return {"stopped": e.status}


# --------------------------------------------------------------------------- the driver (launcher/ray_job.py)

def current_job_id() -> str | None:
    """The id to record on every attempt: the one `medscale submit ray` chose, else the Ray job submission id
    (`ray job submit`), else Ray's core job id (a driver started by hand)."""
    if v := settings.RAY_JOB_ID.get():
        return v
    try:
        meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("metadata") or {}
    except ValueError:
        meta = {}
    if v := meta.get("job_submission_id"):
        return v
    import ray

    return ray.get_runtime_context().get_job_id() if ray.is_initialized() else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = RayOptions.from_env()
    p = argparse.ArgumentParser(
        prog="launcher/ray_job.py",
        description="Ray job driver: `ray job submit --working-dir . -- python launcher/ray_job.py RECIPE "
                    "[key=value ...]`. Trains the recipe on dist.num_processes x dist.num_machines Ray Train workers.")
    p.add_argument("recipe", help="built-in recipe name, a YAML path (relative to the working dir), or env:VAR")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    p.add_argument("--max-failures", type=int, default=env.max_failures,
                   help="worker-group restarts before the job fails (env MEDSCALE_RAY_MAX_FAILURES; default 3)")
    p.add_argument("--storage-path", default=env.storage_path,
                   help="shared storage for Ray's run dir (env MEDSCALE_RAY_STORAGE_PATH; default: train.output_dir)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpu", dest="use_gpu", action="store_true", default=env.use_gpu, help="one GPU per worker")
    g.add_argument("--cpu", dest="use_gpu", action="store_false", help="train on CPUs (gloo)")
    p.add_argument("--cpus-per-worker", type=float, default=env.cpus_per_worker,
                   help="CPUs reserved per worker (env MEDSCALE_RAY_CPUS_PER_WORKER; default 1)")
    p.add_argument("--entry", default="train", help="what every worker runs: train (default), eval, trial")
    return p.parse_intermixed_args(argv)


def build_trainer(recipe: Recipe, source: dict, overrides: list[str], opts: RayOptions, use_gpu: bool,
                  job_id: str | None, num_workers_override: int | None = None, entry: str = "train"):
    from ray.train.torch import TorchTrainer

    scaling = scaling_config(recipe, use_gpu, opts.cpus_per_worker)
    if num_workers_override is not None:  # tests: 0 runs train_func in this process (Ray Train local mode)
        scaling.num_workers = num_workers_override
    config = {"source": source, "overrides": list(overrides), "job_id": job_id, "entry": entry}
    return TorchTrainer(train_func, train_loop_config=config, scaling_config=scaling,
                        run_config=run_config(recipe, opts, job_id))


def _final_status(output_dir: str) -> str | None:
    from medscale.jobs.record import read_journal

    journal = read_journal(output_dir)
    return journal.last.status if journal and journal.last else None


def main(argv: list[str] | None = None) -> int:
    from medscale.errors import user_errors

    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    opts = RayOptions(max_failures=args.max_failures, storage_path=args.storage_path, use_gpu=args.use_gpu,
                      cpus_per_worker=args.cpus_per_worker)
    with user_errors():  # a bad recipe exits 2 here, before any worker starts (and before any restart loop)
        source = recipe_source(args.recipe)
        recipe = check_for_ray(load_from_source(source, args.overrides))
    # Read by Ray Train in this process and passed on to the workers: plain worker output, and no chdir into
    # Ray's trial dir (relative paths in the recipe stay relative to the working dir).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    import ray
    from ray.train import TrainingFailedError
    from ray.train.v2._internal.constants import is_v2_enabled

    if not is_v2_enabled():
        print("medscale: error: the Ray launcher needs Ray Train V2 (unset RAY_TRAIN_V2_ENABLED=0)", file=sys.stderr)
        return 2
    ray.init()  # the job's cluster (RAY_ADDRESS, set by `ray job submit`), else a local one
    job_id = current_job_id()
    use_gpu = opts.use_gpu if opts.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    print(f"medscale: {recipe.name}: {num_workers(recipe)} Ray Train worker(s) on {'GPU' if use_gpu else 'CPU'}, "
          f"max_failures={opts.max_failures}, Ray job id {job_id}, output {recipe.train.output_dir}", flush=True)
    trainer = build_trainer(recipe, source, args.overrides, opts, use_gpu, job_id, entry=args.entry)
    try:
        result = trainer.fit()
    except TrainingFailedError as e:
        print(f"medscale: {recipe.name}: Ray Train gave up: {e}", file=sys.stderr, flush=True)
        return 1
    status = _final_status(recipe.train.output_dir)
    target = pointed_checkpoint(result.checkpoint) if result.checkpoint else None
    print(f"medscale: {recipe.name}: attempt {status}; newest checkpoint reported to Ray: {target}", flush=True)
    if status == "cancelled":
        return EXIT_CANCELLED
    return 0 if status == "completed" else 1


# --------------------------------------------------------------------------- submit side

@dataclass
class RaySubmission:
    """One `ray job submit`: everything the JobSubmissionClient gets, and the CLI command that does the same."""

    address: str
    submission_id: str
    entrypoint: list[str]
    runtime_env: dict
    metadata: dict = field(default_factory=dict)

    def command(self, redacted: bool = True) -> str:
        env = json.loads(json.dumps(self.runtime_env))
        if redacted and (url := env.get("env_vars", {}).get("MEDSCALE_REGISTRY_URL")):
            env["env_vars"]["MEDSCALE_REGISTRY_URL"] = redact(url)
        if redacted and RECIPE_ENV in env.get("env_vars", {}):
            env["env_vars"][RECIPE_ENV] = "<recipe YAML>"
        return shlex.join(["ray", "job", "submit", "--address", self.address, "--submission-id", self.submission_id,
                           "--runtime-env-json", json.dumps(env, sort_keys=True), "--", *self.entrypoint])


def default_working_dir() -> Path:
    """The project the job uploads: this directory when it holds the entry script, else medscale's own source
    tree (an editable install; never site-packages)."""
    for folder in (Path.cwd(), REPO):
        if (folder / ENTRY_SCRIPT).is_file() and (folder / "pyproject.toml").is_file():
            return folder
    raise LaunchError(f"no medscale project here to upload as the job's working dir: run from the medscale "
                      f"project root (it holds {ENTRY_SCRIPT}) or pass --working-dir PROJECT")


def default_address(env=os.environ) -> str:
    return env.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def _inside(path: Path, folder: Path) -> Path | None:
    try:
        return path.resolve().relative_to(folder.resolve())
    except ValueError:
        return None


def _parse_env(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LaunchError(f"--env {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def prepare_submission(recipe: Recipe, recipe_ref: str, overrides: list[str], *, opts: RayOptions | None = None,
                       env: list[str] | None = None, submission_id: str | None = None, environ=os.environ,
                       entry: str = "train") -> RaySubmission:
    """The Ray job for a validated recipe. A built-in name or a recipe inside the working dir is named on the
    entrypoint; a recipe file outside it (e.g. the recorded one `jobs resume` writes) travels as text in
    MEDSCALE_RECIPE_YAML, since the cluster cannot see this machine's files."""
    opts = opts or RayOptions()
    check_for_ray(recipe)
    wd = Path(opts.working_dir).expanduser().resolve() if opts.working_dir else default_working_dir()
    if not (wd / ENTRY_SCRIPT).is_file():
        raise LaunchError(f"working dir {wd} has no {ENTRY_SCRIPT}: run from the medscale project or pass "
                          f"--working-dir PROJECT")
    env_file = Path(opts.runtime_env) if opts.runtime_env else wd / RUNTIME_ENV_FILE
    if opts.runtime_env and not env_file.is_file():
        raise LaunchError(f"--runtime-env {env_file} does not exist")
    base = (yaml.safe_load(env_file.read_text(encoding="utf-8")) or {}) if env_file.is_file() else {}
    sid = submission_id or f"medscale-{re.sub(r'[^A-Za-z0-9_.-]+', '-', recipe.name)}-{secrets.token_hex(4)}"
    env_vars = {str(k): str(v) for k, v in (base.get("env_vars") or {}).items()}
    env_vars.update({k: environ[k] for k in PASS_ENV if environ.get(k)})
    env_vars.update(_parse_env(env or []))
    launch = LaunchInfo("ray", {"ray_job_id": sid}, opts.to_dict())
    env_vars.update({"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", ENV_RAY_JOB_ID: sid, **launch.env()})
    ref, path = recipe_ref, Path(recipe_ref).expanduser()
    if path.suffix in (".yaml", ".yml"):  # as load_recipe tells a file from a built-in name
        rel = _inside(path, wd)
        if rel is not None:
            ref = rel.as_posix()
        else:
            text = path.read_text(encoding="utf-8")
            if "name" not in (yaml.safe_load(text) or {}):  # keep the job name the file's stem gave it here
                text = f"name: {recipe.name}\n{text}"
            env_vars[RECIPE_ENV] = text
            ref = f"env:{RECIPE_ENV}"
    runtime_env = {**base, "working_dir": str(wd), "env_vars": env_vars}
    entry_flag = ["--entry", entry] if entry != "train" else []
    entrypoint = ["python", ENTRY_SCRIPT, ref, *overrides, *opts.flags(), *entry_flag]
    return RaySubmission(opts.address or default_address(environ), sid, entrypoint, runtime_env,
                         {"medscale_job": recipe.name, "output_dir": os.path.abspath(recipe.train.output_dir)})


def _client(address: str, client_factory: Callable | None):
    """The job server's client; an address nobody answers at is a one-line LaunchError, not Ray's traceback."""
    if client_factory is None:
        from ray.job_submission import JobSubmissionClient as client_factory
    try:
        return client_factory(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise LaunchError(f"cannot reach the Ray job server at {address} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'no answer'}): start the cluster (`ray start "
                          f"--head` on the head node) or pass --address http://HEAD:8265 (or set RAY_ADDRESS)") from None


def submit(sub: RaySubmission, client_factory: Callable | None = None) -> str:
    """Hand the job to the cluster's job server (the dashboard address); returns the submission id."""
    return _client(sub.address, client_factory).submit_job(
        entrypoint=shlex.join(sub.entrypoint), runtime_env=sub.runtime_env, submission_id=sub.submission_id,
        metadata=sub.metadata)


def wait(address: str, submission_id: str, client_factory: Callable | None = None, poll_s: float = 2.0,
         out=sys.stdout) -> int:
    """Follow a submitted job to its end; print its logs; return the driver's exit code (0 only if it
    SUCCEEDED)."""
    client = _client(address, client_factory)
    while True:
        info = client.get_job_info(submission_id)
        status = getattr(info.status, "value", str(info.status))
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(poll_s)
    out.write(client.get_job_logs(submission_id))
    print(f"ray job {submission_id}: {status}", file=out, flush=True)
    if status == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1


@dataclass
class RayPlan:
    request: LaunchRequest
    submission: RaySubmission
    report: Report


class RayLauncher:
    """`ray job submit` of launcher/ray_job.py with the job's entry; `wait` follows it to its end. `env` holds the
    `--env KEY=VALUE` extras of this submission (passed on, never recorded: they may hold secrets)."""

    name = "ray"
    waits_by_default = False

    def __init__(self, env: list[str] | None = None, client_factory: Callable | None = None):
        self.env, self.client_factory = list(env or []), client_factory

    def prepare(self, request: LaunchRequest) -> RayPlan:
        opts = RayOptions.from_dict(request.options)
        report = check_launch(check_for_ray(request.recipe), devices=False, paths_must_exist=False)
        sub = prepare_submission(request.recipe, request.ref, request.overrides, opts=opts, env=self.env,
                                 entry=request.entry.kind)
        return RayPlan(LaunchRequest(request.recipe, request.ref, request.overrides, request.entry, opts.to_dict()),
                       sub, report)

    def submit(self, plan: RayPlan) -> RaySubmission:
        plan.report.raise_if_failed()
        submit(plan.submission, self.client_factory)
        register_submitted(plan.request, "ray")
        print(f"medscale: submitted {plan.request.recipe.name} to Ray at {plan.submission.address}: job "
              f"{plan.submission.submission_id} (follow it: ray job logs --address {plan.submission.address} -f "
              f"{plan.submission.submission_id})", flush=True)
        return plan.submission

    def wait(self, handle: RaySubmission) -> int:
        return wait(handle.address, handle.submission_id, self.client_factory)
