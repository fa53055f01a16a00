"""The submit side (`medscale submit ray`, `medscale jobs resume`): builds the Ray job (entrypoint + runtime env)
for a validated recipe, submits it with a JobSubmissionClient or prints the equivalent `ray job submit` command,
and follows it to its end. `RayLauncher` is the Launcher protocol over these."""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from launcher import LaunchError
from launcher.ray.options import RayOptions, check_for_ray
from medscale import settings
from medscale.jobs.launch import ENV_RAY_JOB_ID, LaunchInfo, LaunchRequest, register_submitted
from medscale.preflight import Report
from medscale.recipe import Recipe
from medscale.registry import redact

REPO = Path(__file__).resolve().parents[2]
ENTRY_SCRIPT = "launcher/ray_job.py"
RUNTIME_ENV_FILE = "cluster/ray/runtime_env.yaml"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
RECIPE_ENV = settings.RECIPE_YAML.name  # carries a recipe file that is not inside the uploaded working dir
# Variables that, when set where the job is submitted, travel with it (so the workers write to the same
# registry and expand ${MEDSCALE_MODELS} the same way); `--env KEY=VALUE` overrides them.
PASS_ENV = tuple(s.name for s in (settings.HOME, settings.REGISTRY_URL, settings.MODELS, settings.DATA,
                                  settings.HEARTBEAT_S))


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
        if redacted and (url := env.get("env_vars", {}).get(settings.REGISTRY_URL.name)):
            env["env_vars"][settings.REGISTRY_URL.name] = redact(url)
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
        report = request.entry.check(check_for_ray(request.recipe), devices=False, paths_must_exist=False)
        sub = prepare_submission(request.recipe, request.ref, request.overrides, opts=opts, env=self.env,
                                 entry=request.entry.kind.value)
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
