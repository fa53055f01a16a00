"""SLURM launcher: the sbatch script for a recipe (`medscale submit slurm`, `jobs resume`), and the per-node command
that slurm/common.sh starts with srun on every node of a job (`python -m launcher.slurm node-run ...`).

One accelerate launcher per node, built by launcher.local.accelerate_command plus the multi-node flags, so the
command line is made in one place for every launcher.

Stopping for preemption (the scripts' `#SBATCH --signal=B:USR1@300`): SLURM signals only the batch shell; its
trap sends SIGUSR2 to the srun client, which forwards it to every process of the step on every node. Only this
module's node wrapper listens to SIGUSR2 (the accelerate launcher and the workers are started with SIGUSR1 and
SIGUSR2 ignored), and it turns the first one into exactly one SIGTERM to its accelerate launcher: torchrun
forwards that once to each worker and waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT for them to save. Sending SIGTERM to
srun instead makes srun kill the step ("forcing job termination"), and a SIGTERM to the step reaches every worker
directly *and* through torchrun; a SIGUSR1 to torchrun kills it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from launcher import LaunchError
from launcher.process import Outcome, run_reporting_stops
from medscale import medscale_home, settings
from medscale.dist import DistContext
from medscale.errors import EXIT_BAD_INPUT, STOP_EXIT_CODES, UserError
from medscale.jobkind import JobKind
from medscale.jobs.kinds import ROADS
from medscale.jobs.launch import LaunchInfo, LaunchRequest, entry_for, popen_tied, register_submitted
from medscale.jobs.record import read_journal
from medscale.paths import shipped
from medscale.preflight import Report
from medscale.recipe import Recipe, RecipeError
from medscale.status import AttemptStatus

STOP_SIGNAL = signal.SIGUSR2  # batch shell -> srun -> node wrapper: "save and stop"
WARNING = "B:USR1@300"  # the warning every script asks for: 5 minutes before the time limit, to the batch shell

Executor = Callable[[list[str], str], str]  # (sbatch command, script on stdin) -> sbatch's stdout


# --------------------------------------------------------------------------- the per-node command

def node_overrides(recipe: Recipe, nodes: int) -> list[str]:
    """Overrides that fit a recipe to `nodes` machines: dist.num_machines, and the gradient accumulation that keeps
    a declared train.effective_batch_size (the seed's batch), or a RecipeError when no whole number does."""
    if nodes == recipe.dist.num_machines:
        return []
    out = [f"dist.num_machines={nodes}"]
    t = recipe.train
    if getattr(t, "effective_batch_size", None) is not None:  # a recipe's batch (an evaluation's spec has none)
        per_step = t.per_device_train_batch_size * recipe.dist.num_processes * nodes
        if t.effective_batch_size % per_step:
            raise RecipeError(
                f"{nodes} nodes x {recipe.dist.num_processes} processes x per_device_train_batch_size "
                f"{t.per_device_train_batch_size} = {per_step} samples per step does not divide "
                f"train.effective_batch_size={t.effective_batch_size}: use fewer nodes, or set "
                f"train.effective_batch_size={per_step} (or a multiple of it: a larger batch than the recipe's)")
        accum = t.effective_batch_size // per_step
        if accum != t.gradient_accumulation_steps:
            out.append(f"train.gradient_accumulation_steps={accum}")
    return out


def node_command(recipe: Recipe, recipe_ref: str, overrides: list[str], *, machine_rank: int, main_ip: str,
                 port: int, module: str = "medscale.train") -> list[str]:
    """What one node runs: `accelerate launch` with this node's machine rank and the job's main address (the
    recipe already fitted to the job's nodes), or the entry module itself for a 1-process job."""
    from launcher.local import entry_command

    cmd = entry_command(recipe, recipe_ref, overrides, module)
    if DistContext.planned(recipe.dist).world_size == 1:
        return cmd
    cmd[cmd.index("--main_process_port") + 1] = str(port)
    at = cmd.index("-m", 3)  # the training module follows the launcher's own flags
    return [*cmd[:at], "--machine_rank", str(machine_rank), "--main_process_ip", main_ip, *cmd[at:]]


def run_stoppable(cmd: list[str], env: dict) -> Outcome:
    """Run the node's launcher; the first SIGUSR2 becomes exactly one SIGTERM to it. SIGTERM/SIGUSR1/SIGINT to
    this wrapper are ignored: SLURM sends those to every process of the step (time limit, scancel), so the
    launcher and workers already have them."""
    quiet = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGUSR1, STOP_SIGNAL)}
    proc = popen_tied(cmd, env)  # inherits SIGUSR1/SIGUSR2 ignored (exec keeps SIG_IGN); dies with this wrapper
    sent = False

    def stop(_signum, _frame):
        nonlocal sent
        if not sent:
            sent = True
            print(f"medscale: node {env.get('SLURM_NODEID', '?')}: stop requested: SIGTERM to the launcher "
                  f"(pid {proc.pid}); workers save a checkpoint and exit", file=sys.stderr, flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)

    previous = {**quiet, STOP_SIGNAL: signal.signal(STOP_SIGNAL, stop)}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        return Outcome(proc.wait(), signal.SIGTERM if sent else None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _time_limit(job_id: str | None) -> str | None:
    if not job_id:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%l"], capture_output=True, text=True, timeout=20)
        limit = r.stdout.strip()
        if r.returncode == 0 and limit and limit not in ("UNLIMITED", "INVALID", "NOT_SET"):
            return limit
    return None


def options_from_env(recipe: Recipe, env=os.environ) -> dict:
    """What a job started by a static script (`sbatch slurm/8b_huatuo.sh`) asked SLURM for, so `jobs resume` asks
    for it again (a job from `medscale submit slurm` carries its options in MEDSCALE_LAUNCH_OPTIONS instead)."""
    gpus = env.get("SLURM_GPUS_PER_NODE") or env.get("SLURM_GPUS_ON_NODE") or "0"
    opts = {"nodes": recipe.dist.num_machines, "procs_per_node": recipe.dist.num_processes, "gpus_per_node": gpus,
            "cpus_per_node": int(env["SLURM_CPUS_PER_TASK"]) if env.get("SLURM_CPUS_PER_TASK", "").isdigit() else None,
            "partition": env.get("SLURM_JOB_PARTITION"), "account": env.get("SLURM_JOB_ACCOUNT"),
            "time": _time_limit(env.get("SLURM_JOB_ID"))}
    return {k: v for k, v in opts.items() if v is not None}


def node_run(recipe_ref: str, overrides: list[str], *, nodes: int, machine_rank: int, main_ip: str, port: int,
             entry: str = "train", runner: Callable[[list[str], dict], Outcome] = run_stoppable) -> int:
    """One node of a SLURM job: fit the recipe to the job's nodes, start this node's launcher, and return the
    registry's code for a preempted (75) or cancelled (4) attempt, whatever code the launcher reports."""
    from launcher.local import SHUTDOWN_GRACE_S

    load = entry_for(entry).load_spec
    recipe = load(recipe_ref, overrides)
    overrides = [*overrides, *node_overrides(recipe, nodes)]
    recipe = load(recipe_ref, overrides)
    env = {**os.environ}
    launch = LaunchInfo.from_env(env)
    launch.launcher, launch.options = "slurm", launch.options or options_from_env(recipe, env)
    env.update(launch.env())
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_GRACE_S)
    cmd = node_command(recipe, recipe_ref, overrides, machine_rank=machine_rank, main_ip=main_ip, port=port,
                       module=entry_for(entry).module)
    print(f"medscale: node {machine_rank}/{nodes}: + {shlex.join(cmd)}", file=sys.stderr, flush=True)
    return run_reporting_stops(recipe.train.output_dir, cmd, env, runner)


# --------------------------------------------------------------------------- sbatch scripts

@dataclass(kw_only=True)
class SlurmOptions:
    """What `medscale submit slurm` asks SLURM for. None: derived from the recipe (see resolve)."""

    nodes: int | None = None  # default: the recipe's dist.num_machines
    gpus_per_node: str | None = None  # "4" or "a100:4"; default: the processes per node; "0": none requested
    procs_per_node: int | None = None  # default: the GPU count, or the recipe's dist.num_processes without GPUs
    cpus_per_node: int | None = None  # default: 8 per GPU, or 1 per process without GPUs
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    output: str | None = None  # default: $MEDSCALE_HOME/slurm/%x-%j.out
    job_name: str | None = None
    sbatch_args: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "SlurmOptions":
        keep = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in keep and v is not None})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) not in (None, [])}


_UNSAFE = re.compile(r"[\x00-\x20\x7f\"'\\`$;|&<>]")


def check_options(o: SlurmOptions) -> None:
    """Every value that lands on an `#SBATCH` line: no control characters (a newline would end the directive and
    run the rest as a command, dropping every later directive), no blanks or shell/quote characters (sbatch reads
    directives word by word). Refused with the option's name, never quoted into something else."""
    values = [("--partition", o.partition), ("--time", o.time), ("--account", o.account), ("--output", o.output),
              ("--job-name (the recipe name)", o.job_name), ("--gpus-per-node", o.gpus_per_node),
              *[("--sbatch-arg", a) for a in o.sbatch_args]]
    for name, value in values:
        if value is not None and (bad := _UNSAFE.search(str(value))):
            raise LaunchError(f"{name} {value!r}: contains {bad.group()!r}, which an #SBATCH line cannot carry safely "
                              f"(control characters, blanks, quotes and shell characters are refused): remove it")
    for a in o.sbatch_args:
        if not a.startswith("--"):
            raise LaunchError(f"--sbatch-arg {a!r}: expected one long sbatch option, e.g. --sbatch-arg=--qos=high")


def _gpu_count(gpus: str) -> int:
    count = str(gpus).rsplit(":", 1)[-1]
    if not count.isdigit():
        raise LaunchError(f"--gpus-per-node {gpus}: expected a count or TYPE:COUNT, e.g. 4 or a100:4")
    return int(count)


def resolve(recipe: Recipe, opts: SlurmOptions) -> tuple[SlurmOptions, list[str]]:
    """Fill the defaults; returns the options and the overrides that make the recipe match them."""
    o = SlurmOptions(**{f.name: getattr(opts, f.name) for f in fields(SlurmOptions)})
    o.nodes = o.nodes or recipe.dist.num_machines
    if o.gpus_per_node is None:
        o.gpus_per_node = str(o.procs_per_node or recipe.dist.num_processes)
    gpus = _gpu_count(o.gpus_per_node)
    o.procs_per_node = o.procs_per_node or gpus or recipe.dist.num_processes
    if gpus and o.procs_per_node > gpus:
        raise LaunchError(f"{o.procs_per_node} processes per node but --gpus-per-node {o.gpus_per_node}: one "
                          f"process per GPU (--gpus-per-node 0 runs on CPUs)")
    o.cpus_per_node = o.cpus_per_node or (8 * gpus if gpus else o.procs_per_node)
    o.job_name = o.job_name or recipe.name
    o.output = o.output or str(medscale_home() / "slurm" / "%x-%j.out")
    check_options(o)
    extra = [f"dist.num_processes={o.procs_per_node}"] if o.procs_per_node != recipe.dist.num_processes else []
    return o, extra


def _one_line(text: str) -> str:
    """`text` for a comment line: control characters escaped (JSON-style), so a newline in a recipe path cannot end
    the comment and run the rest as a command."""
    return json.dumps(text, ensure_ascii=False)


def render_script(recipe_ref: str, overrides: list[str], opts: SlurmOptions, command: list[str],
                  launch: LaunchInfo | None = None, *, entry: str = "train", array: list[list[str]] | None = None
                  ) -> str:
    """A batch script that sources slurm/common.sh and runs the recipe's entry; `opts` already resolved. `array`:
    an array job instead, task i running `array[i]` (REF [key=value ...]: a sweep's trials; `recipe_ref` names
    what they are)."""
    gpus = _gpu_count(opts.gpus_per_node)
    lines = [f"--job-name={opts.job_name}", f"--nodes={opts.nodes}",
             "--ntasks-per-node=1", f"--cpus-per-task={opts.cpus_per_node}",
             *([f"--gpus-per-node={opts.gpus_per_node}"] if gpus else []),
             *([f"--partition={opts.partition}"] if opts.partition else []),
             *([f"--account={opts.account}"] if opts.account else []),
             *([f"--time={opts.time}"] if opts.time else []),
             f"--signal={WARNING}", "--requeue", "--open-mode=append", f"--output={opts.output}", "--export=ALL",
             *([f"--array=0-{len(array) - 1}"] if array else []), *opts.sbatch_args]
    runs = [f"medscale_run {' '.join(shlex.quote(a) for a in args)}" for args in array or [[recipe_ref, *overrides]]]
    if array:  # the array task picks its run; a task id outside the array is refused, one line
        runs = ['case "${SLURM_ARRAY_TASK_ID:-}" in', *[f"    {i}) {run} ;;" for i, run in enumerate(runs)],
                f'    *) echo "medscale: array task \'${{SLURM_ARRAY_TASK_ID:-}}\': this array has {len(runs)} task(s)'
                f' (0-{len(runs) - 1})" >&2; exit 2 ;;', "esac"]
    exports = {settings.REPO.name: str(shipped("slurm").parent), settings.PYTHON.name: sys.executable,
               settings.ENTRY.name: entry, **(launch.env() if launch else {})}
    return "\n".join([
        "#!/bin/bash",  # sbatch reads #SBATCH lines only until the first command: they come first
        *[f"#SBATCH {line}" for line in lines],
        f"# Rendered by medscale for {'array' if array else f'{entry} job'} {_one_line(recipe_ref)}: {opts.nodes} "
        f"node(s) x {opts.procs_per_node} process(es), {'GPUs ' + opts.gpus_per_node if gpus else 'no GPUs'} per node.",
        f"# medscale hands it to `{shlex.join(command)}` on stdin; a saved copy submits with `sbatch FILE`. A stopped",
        f"# job continues with `medscale jobs resume JOB` (same resources, {ROADS[JobKind(entry)].resumes}).",
        *[f"export {k}={shlex.quote(v)}" for k, v in exports.items()],
        'source "$MEDSCALE_REPO/slurm/common.sh"',
        *runs,
        "",
    ])


def run_sbatch(cmd: list[str], script: str) -> str:
    """The real executor: sbatch reads the script on stdin; its stdout (with --parsable: JOBID[;CLUSTER])."""
    try:
        r = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise LaunchError("sbatch not found: run this on a SLURM login node (or install slurm-client)") from None
    if r.returncode != 0:
        raise LaunchError(f"sbatch failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "RESIZING",
          "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")
QUEUED_AS = "queued_as"  # in a submitted job's launcher options: the SLURM job (array task) it waits in
FINAL_CODES = {AttemptStatus.COMPLETED: 0, **STOP_EXIT_CODES}


def slurm_state(job_id: str) -> str | None:
    """The job's state as squeue sees it now; None when SLURM no longer lists it (or cannot be asked)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.split()[0]
    return None


def log_path(opts: SlurmOptions, job_id: str | None) -> str:
    return opts.output.replace("%x", opts.job_name or "").replace("%j", job_id or "%j")


@dataclass(kw_only=True)
class SlurmPlan:
    request: LaunchRequest
    options: SlurmOptions
    overrides: list[str]
    script: str
    command: list[str]
    report: Report
    tasks: list["SlurmPlan"] = field(default_factory=list)  # an array job: each task's own plan, in task order

    def each(self) -> list["SlurmPlan"]:
        return self.tasks or [self]


@dataclass
class SlurmHandle:
    plan: SlurmPlan
    job_id: str


class SlurmLauncher:
    """`sbatch` of a rendered script that runs the entry on every node (slurm/common.sh); `wait` follows the job
    with squeue and returns its attempt's exit code. The executor (sbatch) and the state query (squeue) are
    parameters, so tests check the script without a cluster."""

    name = "slurm"
    waits_by_default = False

    def __init__(self, executor: Executor = run_sbatch, state: Callable[[str], str | None] = slurm_state,
                 poll_s: float = 10.0):
        self.executor, self.state, self.poll_s = executor, state, poll_s

    def prepare(self, request: LaunchRequest) -> SlurmPlan:
        """Validate the recipe for the requested shape and render the batch script; refuse while the job's last
        SLURM job is still queued or running (e.g. requeued after a preemption): it continues by itself, and two
        jobs in one output dir would overwrite each other's checkpoints."""
        ref = str(Path(request.ref).resolve()) if Path(request.ref).suffix in (".yaml", ".yml") else request.ref
        overrides = list(request.overrides)
        o, extra = resolve(request.recipe, SlurmOptions.from_dict(request.options))
        overrides += extra
        recipe = request.entry.load_spec(ref, overrides)
        node_overrides(recipe, o.nodes)  # refuse a shape the recipe cannot take, before queueing
        report = request.entry.check(recipe, devices=False)
        journal = read_journal(recipe.train.output_dir)
        last = next((a.launcher_ids["slurm_job_id"] for a in reversed(journal.attempts)
                     if a.launcher_ids.get("slurm_job_id")), None) if journal else None
        if last and (now := self.state(last)) in ACTIVE:
            raise LaunchError(f"SLURM job {last} of {recipe.name} is still {now}: it continues by itself from the "
                              f"newest verified checkpoint; to start it anew, `scancel {last}` first")
        command = ["sbatch", "--parsable"]
        launch = LaunchInfo("slurm", options=o.to_dict())
        script = render_script(ref, overrides, o, command, launch, entry=request.entry.kind.value)
        return SlurmPlan(request=LaunchRequest(recipe, ref, overrides, request.entry, o.to_dict()), options=o,
                         overrides=overrides, script=script, command=command, report=report)

    def prepare_array(self, requests: list[LaunchRequest], name: str) -> SlurmPlan:
        """Several jobs of one kind and shape (a sweep's trials) as one SLURM array: each prepared as its own job
        (validated, pre-flighted, refused while its last SLURM job is active), task i running requests[i]. Every
        task asks SLURM for the same resources, so trials of different shapes are refused: one array per shape."""
        tasks = [self.prepare(r) for r in requests]
        shapes = {(t.options.nodes, t.options.procs_per_node, t.options.gpus_per_node, t.options.cpus_per_node)
                  for t in tasks}
        if len(shapes) > 1:
            raise LaunchError(f"{name}: its jobs ask for {len(shapes)} different shapes (nodes, processes, GPUs, "
                              f"CPUs): one SLURM array asks for one; give every trial the same dist settings")
        asked = SlurmOptions.from_dict(requests[0].options)
        o = SlurmOptions(**{**tasks[0].options.to_dict(), "job_name": name,
                            "output": asked.output or str(medscale_home() / "slurm" / "%x-%A_%a.out")})
        check_options(o)
        shape = {k: v for k, v in tasks[0].options.to_dict().items() if k not in ("job_name", "output")}
        launch = LaunchInfo("slurm", options=shape)  # what a task's attempts record: its job resumes alone
        script = render_script(name, [], o, tasks[0].command, launch, entry=requests[0].entry.kind.value,
                               array=[[t.request.ref, *t.overrides] for t in tasks])
        return SlurmPlan(request=tasks[0].request, options=o, overrides=[], script=script, command=tasks[0].command,
                         report=tasks[0].report, tasks=tasks)

    def submit(self, plan: SlurmPlan) -> SlurmHandle:
        for each in plan.each():
            each.report.raise_if_failed()
            self._refuse_if_queued(each.request.recipe)
        o = plan.options
        if "%" not in o.output.rsplit("/", 1)[0]:
            Path(o.output).parent.mkdir(parents=True, exist_ok=True)  # sbatch does not create it
        job_id = self.executor(plan.command, plan.script).strip().split(";")[0]
        for i, each in enumerate(plan.each()):  # the SLURM job each one waits in, until its first attempt starts
            queued = {**each.request.options, QUEUED_AS: f"{job_id}_{i}" if plan.tasks else job_id}
            register_submitted(replace(each.request, options=queued), "slurm")
        return SlurmHandle(plan, job_id)

    def _refuse_if_queued(self, recipe) -> None:
        """A job submitted before and still waiting in SLURM's queue has no attempt yet (prepare's check cannot see
        it): the registry holds the SLURM job it waits in. Submitting it again would run it twice into one output
        dir (a sweep run again while its array still waits)."""
        from medscale.registry import JobSpec, Registry, RegistryError

        try:
            with Registry() as reg:
                found = reg.find_by_key(JobSpec(recipe.name, os.path.abspath(recipe.train.output_dir), "", "", ""))
                waiting = reg.job(found).launcher_options.get(QUEUED_AS) if found is not None else None
        except RegistryError:
            return
        if waiting and (now := self.state(waiting)) in ACTIVE:
            raise LaunchError(f"SLURM job {waiting} of {recipe.name} is still {now}: it runs by itself when SLURM "
                              f"starts it; to submit it anew, `scancel {waiting}` first")

    def wait(self, handle: SlurmHandle) -> int:
        """Until SLURM no longer lists the job (a requeued job stays listed); then the code of its last attempt (of
        an array: the first task's that did not complete, else 0)."""
        import time

        while self.state(handle.job_id) is not None:
            time.sleep(self.poll_s)
        codes = []
        for each in handle.plan.each():
            journal = read_journal(each.request.recipe.train.output_dir)
            codes.append(FINAL_CODES.get(journal.last.status, 1) if journal and journal.last else 1)
        return next((c for c in codes if c), 0)


# --------------------------------------------------------------------------- `python -m launcher.slurm`

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launcher.slurm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, what in (("node-run", "run this node's part of the job (srun starts it on every node)"),
                       ("node-command", "print this node's command, run nothing")):
        s = sub.add_parser(name, help=what)
        s.add_argument("--nodes", type=int, required=True, help="nodes in the job ($SLURM_NNODES)")
        s.add_argument("--machine-rank", type=int, required=True, help="this node ($SLURM_NODEID, on the node)")
        s.add_argument("--main-ip", required=True, help="host of machine rank 0 (first host of the nodelist)")
        s.add_argument("--port", type=int, required=True, help="free port on the main host")
        s.add_argument("--entry", default=settings.ENTRY.get(), help="entry kind the nodes run")
        s.add_argument("recipe")
        s.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    try:
        if a.cmd == "node-command":
            load = entry_for(a.entry).load_spec
            overrides = [*a.overrides, *node_overrides(load(a.recipe, a.overrides), a.nodes)]
            print(shlex.join(node_command(load(a.recipe, overrides), a.recipe, overrides,
                                          machine_rank=a.machine_rank, main_ip=a.main_ip, port=a.port,
                                          module=entry_for(a.entry).module)))
            return 0
        return node_run(a.recipe, a.overrides, nodes=a.nodes, machine_rank=a.machine_rank, main_ip=a.main_ip,
                        port=a.port, entry=a.entry)
    except UserError as e:
        print(f"medscale: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
