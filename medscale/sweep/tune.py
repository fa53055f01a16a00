"""The one sweep driver: register the sweep, skip what is finished, submit the rest through a launcher, evaluate
the bases once. Every trial is a job of kind trial that a launcher starts (the launchers come from the CLI, which
owns them), so it is an ordinary job: its attempts, verified checkpoints and metrics go to the registry.

`OnRay`: Ray Tune schedules the trials (one per cell, with the resources its recipe asks for: one GPU per process on
a GPU cluster), isolates their failures (a failed trial never stops the sweep) and, with `scheduler: asha`, stops
the worst ones early on their eval loss. Each trial's Tune actor hands it to the local launcher on its node
(pre-flight, `python -m medscale.sweep RECIPE ...`, or `accelerate launch` for several processes) and reads its
evaluations back from the registry (the metrics a run records as it logs them): `actor` holds that side.
`AsArray`: the trials as one array job of a batch scheduler (the SLURM launcher's `prepare_array`).

Every trial is identified by its output dir, so running the sweep again skips finished trials, never resumes one
stopped early, and resumes every other one (failed, preempted, interrupted) from its newest verified checkpoint. A stop
signal to the driver is passed on to its running trials, which save and end preempted before Ray goes down.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import medscale
from medscale import settings
from medscale.errors import StopRequested
from medscale.jobs.launch import LaunchRequest
from medscale.jobkind import JobKind
from medscale.jobs.stop import StopFlag, stop_flag
from medscale.registry import JobSpec, Registry, SweepInfo, TrialCell
from medscale.status import JobStatus
from medscale.sweep.actor import LauncherFor, TrialFailed, asha_scheduler, trial_request, trial_trainable
from medscale.sweep.spec import SweepError, SweepPlan, TrialPlan
from medscale.sweep.trial import forward_stop
from medscale.verdicts import ResultRole

DONE = (JobStatus.SUCCEEDED.value, JobStatus.STOPPED_EARLY.value)


@dataclass
class TrialOutcome:
    label: str
    job_id: int
    status: str  # the job's status after this run
    ran: bool  # trained (or tried to) in this run; False: skipped as finished or stopped early
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SweepOutcome:
    name: str
    sweep_id: int
    trials: list[TrialOutcome] = field(default_factory=list)
    bases_measured: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[TrialOutcome]:
        return [t for t in self.trials if t.status not in DONE]

    def to_dict(self) -> dict:
        return {"name": self.name, "sweep_id": self.sweep_id, "trials": [t.to_dict() for t in self.trials],
                "bases_measured": self.bases_measured}


# --------------------------------------------------------------------------- registry side


def trial_spec(t: TrialPlan, sweep: str) -> JobSpec:
    r = t.recipe
    return JobSpec(r.name, t.output_dir, "local", r.to_yaml(), r.fingerprint(), kind=JobKind.TRIAL,
                   launcher_options={"sweep": sweep, "trial": t.label})


def register(reg: Registry, plan: SweepPlan) -> tuple[int, dict[str, int]]:
    """The sweep row and one job (kind trial) per cell. A sweep of this name with another grid is refused: its
    trials would silently mix two experiments."""
    existing = {s.name: s for s in reg.sweeps()}.get(plan.name)
    recorded = [TrialCell.of(c) for c in existing.grid] if existing is not None else None
    if recorded is not None and recorded != [TrialCell.of(c) for c in plan.grid()]:
        old = {c.label for c in recorded}
        new = {t.label for t in plan.trials}
        what = (f"trials {', '.join(sorted(new ^ old))} differ" if new != old else
                "the same trials with other recipes or overrides")
        raise SweepError(f"sweep '{plan.name}' is already in the registry with another grid ({what}): give this one "
                         f"another name (`name:` in the sweep file, or --name), or run the recorded one again")
    sweep_id = reg.upsert_sweep(SweepInfo(plan.name, plan.definition, plan.grid(), [b.to_dict() for b in plan.bases]))
    return sweep_id, {t.label: reg.add_trial(sweep_id, trial_spec(t, plan.name), t.label, t.cell())
                      for t in plan.trials}


def pending(reg: Registry, plan: SweepPlan) -> list[TrialPlan]:
    """The trials to run now: all but the finished ones (succeeded, nothing missing) and those stopped early."""
    view = {t.label: t for t in reg.sweep(plan.name).trials}
    return [t for t in plan.trials
            if not (view[t.label].job.status in DONE and view[t.label].error is None)]


# --------------------------------------------------------------------------- bases


def _benchmarks(plan: SweepPlan) -> dict[str, tuple]:
    """base path -> the benchmark settings of its trials (the first trial of that base that lists benchmarks)."""
    out: dict[str, tuple] = {}
    for t in plan.trials:
        e = t.recipe.eval
        if e.benchmarks and t.base not in out:
            out[t.base] = (list(e.benchmarks), e.benchmark_mode, e.shots, e.data_dir, e.per_device_eval_batch_size,
                           t.recipe.train.seed, t.recipe.generation)
    return out


def missing_base_results(reg: Registry, plan: SweepPlan) -> dict[str, list]:
    """base path -> the benchmarks it has no result for yet (a base is measured once, whichever sweep asks)."""
    from medscale.eval.run import load_benchmarks

    have = {(r.base_path, r.fingerprint, r.mode, r.shots) for r in reg.results()
            if r.role is ResultRole.BASE and r.job_id is None and r.adapter_path is None}
    out = {}
    for base, (benches, mode, shots, data_dir, _, seed, _) in _benchmarks(plan).items():
        if base not in {b.path for b in plan.bases}:
            continue
        todo = [ref for ref, b in zip(benches, load_benchmarks(benches, data_dir, None, seed))
                if (base, b.fingerprint(), mode, shots) not in have]
        if todo:
            out[base] = todo
    return out


def evaluate_base(path: str, benchmarks: list, settings: tuple) -> list[str]:
    """Score one base model on the benchmarks its trials are scored on; stored as `base` results of no job."""
    from medscale.eval.run import record_results, run_eval
    from medscale.eval.spec import new_eval_spec
    from medscale.jobs.resolve import resolve

    _, mode, shots, data_dir, batch, seed, generation = settings
    report = run_eval(new_eval_spec(dict(model=path, benchmarks=benchmarks, mode=mode, shots=shots, seed=seed,
                                         data_dir=data_dir, batch_size=batch, generation=generation)), record=False)
    ref = resolve(path)
    record_results([(r, ref, ResultRole.BASE) for r in report.results], None)
    return [f"{r.benchmark} {100 * r.acc:.1f}%" for r in report.results]


# --------------------------------------------------------------------------- the driver


@dataclass
class Resources:
    cpus_per_process: float = 1.0
    use_gpu: bool | None = None  # None: GPUs when the cluster has any

    def of(self, processes: int, gpu: bool) -> dict:
        return {"CPU": self.cpus_per_process * processes, **({"GPU": processes} if gpu else {})}


def _env() -> dict[str, str]:
    """What every trial process needs from here: medscale's settings (home, registry, model and data roots)."""
    own = {k: v for k, v in os.environ.items()
           if k.startswith(settings.PREFIX) and k not in (settings.LAUNCHER.name, settings.LAUNCH_OPTIONS.name)}
    root = str(Path(medscale.__file__).resolve().parent.parent)  # workers import the medscale this driver runs
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**own, "PYTHONPATH": path, "RAY_CHDIR_TO_TRIAL_DIR": "0"}  # trial actors stay where the sweep started


def trial_requests(plan: SweepPlan, trials: list[TrialPlan]) -> list[LaunchRequest]:
    return [trial_request(t.recipe, t.recipe_ref, t.overrides, plan.name, t.label) for t in trials]


@dataclass(kw_only=True)
class OnRay:
    """Ray Tune on a cluster (`address`) or a local Ray: each trial launched on its actor's node by the local
    launcher `launcher_for` gives (its runner: the actor's), the unmeasured bases as Ray tasks, optional ASHA;
    a line per trial event as it happens, and Tune's own progress table only when `verbose`."""

    launcher_for: LauncherFor
    address: str | None = None
    resources: Resources = field(default_factory=Resources)
    max_concurrent: int | None = None
    asha: bool | None = None  # None: the sweep file's `scheduler`
    verbose: bool = False

    def run(self, plan: SweepPlan, todo: list[TrialPlan], bases: dict[str, list], job_ids: dict[str, int],
            echo: Callable[[str], None]) -> tuple[dict, dict]:
        return _on_ray(plan, todo, bases, job_ids, self, echo=echo)


@dataclass
class AsArray:
    """A batch scheduler's array: the pending trials handed to `submit` (their launch requests, the sweep's name ->
    the array job's id: the SLURM launcher's prepare_array -> submit), each task running its trial entry where
    the scheduler puts it. Nothing waits here: the trials are `queued`, their attempts reach the registry as
    they run, and a rerun of the sweep ranks them. Bases are measured by a sweep run on Ray."""

    submit: Callable[[list[LaunchRequest], str], str]
    job_id: str | None = None

    def run(self, plan: SweepPlan, todo: list[TrialPlan], bases: dict[str, list], job_ids: dict[str, int],
            echo: Callable[[str], None]) -> tuple[dict, dict]:
        if todo:
            self.job_id = self.submit(trial_requests(plan, todo), plan.name)
            echo(f"medscale: sweep {plan.name}: {len(todo)} trial(s) submitted as array job {self.job_id} (task i: "
                 f"trial {', '.join(f'{i} {t.label}' for i, t in enumerate(todo))})")
        if bases:
            echo(f"medscale: sweep {plan.name}: {len(bases)} base(s) not measured by an array: `medscale sweep run` "
                 f"on Ray measures them")
        return {}, {}


def run_sweep(plan: SweepPlan, scheduler: OnRay | AsArray, *, echo: Callable[[str], None] = print) -> SweepOutcome:
    """The one sweep driver: register the sweep, hand its unfinished trials (and unmeasured bases) to the scheduler,
    which submits each trial through a launcher as a job of kind trial, mark the trials ASHA stopped as
    `stopped_early`, and say what became of every trial."""
    from medscale.jobs.ops import stop_early

    with Registry() as reg:
        sweep_id, job_ids = register(reg, plan)
        todo = pending(reg, plan)
        bases = missing_base_results(reg, plan)
        skipped = len(plan.trials) - len(todo)
        echo(f"medscale: sweep {plan.name}: {len(plan.trials)} trial(s), {skipped} finished or stopped early "
             f"(skipped), {len(todo)} to run; {len(plan.bases)} base(s), {len(bases)} to evaluate")
        for t in todo:
            reg.set_trial_error(sweep_id, t.label, None)
        _build_tiny_models(todo)
        stopped: dict[str, dict] = {}
        errors: dict[str, str] = {}
        if todo or bases:
            stopped, errors = scheduler.run(plan, todo, bases, job_ids, echo)
        outcome = SweepOutcome(plan.name, sweep_id, bases_measured=sorted(bases))
        ran = {t.label for t in todo}
        for t in plan.trials:
            job_id = job_ids[t.label]
            if t.label in stopped and reg.job(job_id).status != JobStatus.SUCCEEDED:
                s = stopped[t.label]
                stop_early(reg, job_id, f"stopped early by the sweep's ASHA scheduler at step {s['step']} (eval loss "
                                        f"{s['eval_loss']:.4f}, among the worst at that rung)")
            status = reg.job(job_id).status
            reason = errors.get(t.label)
            if t.label in ran and status == JobStatus.SUCCEEDED and reason:  # trained, then its evaluation failed
                reg.set_trial_error(sweep_id, t.label, reason)
                status = JobStatus.FAILED.value
            elif t.label in ran and status in (JobStatus.QUEUED, JobStatus.RUNNING) and reason:  # never started
                reg.set_trial_error(sweep_id, t.label, reason)
                reg.set_status(job_id, JobStatus.FAILED)
                status = JobStatus.FAILED.value
            outcome.trials.append(TrialOutcome(t.label, job_id, str(status), t.label in ran, reason))
        return outcome


def _build_tiny_models(trials: list[TrialPlan]) -> None:
    """A demo recipe's tiny model is built on first use; build it once here, before concurrent trials race to."""
    if any(t.recipe.model.tiny is not None for t in trials):
        from medscale.model.tiny import ensure_tiny_model

        for model in {t.recipe.model.path: t.recipe.model for t in trials}.values():
            ensure_tiny_model(model)


def _on_ray(plan: SweepPlan, todo: list[TrialPlan], bases: dict[str, list], job_ids: dict[str, int], on: OnRay,
            *, echo) -> tuple[dict, dict]:
    """The Ray part: (trials ASHA stopped -> their last result, trials that failed -> why)."""
    import ray

    address, resources = on.address, on.resources
    asha = plan.spec.scheduler is not None if on.asha is None else on.asha

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    started = not ray.is_initialized()
    with _keeping_stop_signals():
        if started and address:
            _check_reachable(address)
            ray.init(address=address, runtime_env={"env_vars": _env()}, log_to_driver=False)
        elif started:  # a local Ray for this sweep, on loopback: nothing outside this machine needs to reach it
            ray.init(runtime_env={"env_vars": _env()}, log_to_driver=False, include_dashboard=False,
                     _node_ip_address="127.0.0.1")
    try:
        gpu = resources.use_gpu if resources.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
        settings = _benchmarks(plan)
        remote = ray.remote(max_calls=1)(evaluate_base)
        base_tasks = {path: remote.options(num_cpus=resources.cpus_per_process, num_gpus=1 if gpu else 0)
                      .remote(path, benches, settings[path]) for path, benches in bases.items()}
        scheduler = None
        if asha and todo:
            grace = plan.spec.scheduler.grace_period if plan.spec.scheduler and plan.spec.scheduler.grace_period \
                else min(t.recipe.eval.eval_steps or 1 for t in todo)
            factor = plan.spec.scheduler.reduction_factor if plan.spec.scheduler else 2
            scheduler = asha_scheduler(grace, factor)
        errors: dict[str, str] = {}
        if todo:
            errors = _fit(plan, todo, job_ids, on, gpu, scheduler=scheduler, echo=echo)
        for path, task in base_tasks.items():
            try:
                echo(f"medscale: base {path}: {', '.join(ray.get(task))}")
            except Exception as e:  # one base failing must not hide the trials' outcomes
                errors[f"base:{path}"] = _one_line(e)
                echo(f"medscale: base {path}: evaluation failed: {_one_line(e)}")
        return (scheduler.stopped if scheduler else {}), errors
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _keeping_stop_signals():
    """Ray's driver takes SIGTERM for itself as it starts (a stack dump, then an abort 3 s later): give the stop
    signals back to the handlers this process had, medscale's stop flag, so a stop reaches the trials
    (`forward_stop`) and the sweep exits 75 or 4."""
    own = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *StopFlag.SIGNALS)}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in own.items():
                if handler is not None:
                    signal.signal(sig, handler)


def _check_reachable(address: str) -> None:
    """A cluster address nobody answers at is one line now, not minutes of Ray retrying."""
    import socket

    if "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise SweepError(f"--address {address}: no Ray cluster answers there ({type(e).__name__}): start it (`ray "
                         f"start --head`) and pass its GCS address HOST:PORT, or leave --address out for a local "
                         f"Ray") from None


def _fit(plan, todo, job_ids, on: OnRay, gpu, *, scheduler, echo) -> dict[str, str]:
    from ray import tune

    resources, max_concurrent = on.resources, on.max_concurrent or plan.spec.max_concurrent

    root = Path(todo[0].output_dir).parent
    trials = {t.label: {"label": t.label, "sweep": plan.name, "recipe": t.recipe_ref, "overrides": t.overrides,
                        "cwd": os.getcwd(), "job_id": job_ids[t.label], "output_dir": t.output_dir,
                        "processes": t.processes, "log": str(root / ".logs" / f"{t.label}.log")} for t in todo}
    trainable = tune.with_resources(
        tune.with_parameters(trial_trainable(), launcher_for=on.launcher_for, trials=trials),
        lambda config: resources.of(trials[config["label"]]["processes"], gpu))
    # Tune's table shows each searched value in a column cut at 20 characters: the label, not a dict of the trial
    tuner = tune.Tuner(
        trainable, param_space={"label": tune.grid_search(list(trials))},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=max_concurrent, reuse_actors=False),
        run_config=tune.RunConfig(name=f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str(root / ".tune"), failure_config=tune.FailureConfig(max_failures=0),
                                  verbose=1 if on.verbose else 0, callbacks=[_progress(echo)]))
    # A stop raised at once inside Ray's own calls (ray.wait) comes out as a SystemError: read the flag at every step
    # of Tune's loop instead, and raise it there
    flag = stop_flag()
    at_once, flag.at_once = flag.at_once, False
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Tune's progress tables: stdout is for the sweep's own answer
            results = tuner.fit()
        _raise_if_stopped()
    except StopRequested as stop:  # the trials run on: pass the stop on before Ray's shutdown kills them unsaved
        forward_stop({label: t["output_dir"] for label, t in trials.items()}, stop.status, echo)
        raise
    finally:
        flag.at_once = at_once
    errors = {}
    for r in results:
        if r.error is not None:
            errors[r.config["label"]] = _one_line(r.error)
    return errors


def _progress(echo):
    """medscale's own progress: one line per trial event (Tune's table, with -v, repeats every trial each time); and
    at every step of Tune's loop, whether the sweep was asked to stop."""
    from ray.tune import Callback

    class Progress(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            echo(f"medscale: trial {trial.config['label']}: started")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            loss = result.get("eval_loss")
            if not result.get("done") and loss is not None:
                echo(f"medscale: trial {trial.config['label']}: step {result.get('step')}, eval loss {loss:.4f}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            echo(f"medscale: trial {trial.config['label']}: ended")

        def on_trial_error(self, iteration, trials, trial, **info):
            echo(f"medscale: trial {trial.config['label']}: failed (its reason is given at the end)")

        def on_step_end(self, iteration, trials, **info):
            _raise_if_stopped()

    return Progress()


def _raise_if_stopped() -> None:
    flag = stop_flag()
    if flag.code:
        raise StopRequested(flag.status, flag.reason)


def _one_line(e: BaseException) -> str:
    """A trial's reason as one line: Ray wraps the actor's exception; keep the innermost message."""
    cause = e
    while getattr(cause, "cause", None) is not None or cause.__cause__ is not None:
        cause = getattr(cause, "cause", None) or cause.__cause__
    text = str(cause).strip().splitlines()
    line = next((ln for ln in reversed(text) if ln.strip()), type(cause).__name__)
    failed = f"{TrialFailed.__name__}: "
    return line.strip().removeprefix(f"{TrialFailed.__module__}.{failed}").removeprefix(failed)[:2000]
