"""`medscale sweep run | show | list | slurm-task`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medscale.cli.app import AS_JSON, OVERRIDES, App, echo_json, setup_logging

sweep_app = App(no_args_is_help=True, help="Sweeps on Ray Tune: a grid of trials (train, then eval) and a leaderboard.")


def _plan(spec_ref: str, overrides: list[str], grid: list[str], random_n: int | None, bases: list[str] | None, *,
          name: str | None = None, output_root: str | None = None):
    """A sweep file or built-in sweep, or a recipe with --grid -> the validated plan (nothing written)."""
    import yaml

    from medscale.sweep.spec import SweepError, builtin_sweeps, is_sweep_file, load_spec, plan_sweep, spec_from_recipe

    if random_n is not None and random_n < 1:
        raise SweepError(f"--random {random_n}: run a random N >= 1 of the cells, or leave --random out for all")
    path = Path(spec_ref).expanduser()
    if spec_ref in builtin_sweeps() or (path.suffix in (".yaml", ".yml") and is_sweep_file(path)):
        spec, _ = load_spec(spec_ref)
        if grid:
            extra, _ = spec_from_recipe(spec.recipes[0].recipe, grid)
            spec = spec.model_copy(update={"grid": {**spec.grid, **extra.grid}})
    else:
        spec, _ = spec_from_recipe(spec_ref, grid, name)
    update = {k: v for k, v in {"random": random_n, "name": name, "output_root": output_root}.items()
              if v is not None}
    spec = spec.model_copy(update=update)
    definition = yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True, exclude_defaults=True),
                                sort_keys=False, allow_unicode=True)
    return plan_sweep(spec, definition, overrides, bases)


@sweep_app.command("run")
def run(spec: str = typer.Argument(..., help="a sweep file or built-in sweep (e.g. r1-distill-seed004), or a recipe "
                                             "with --grid"),
        overrides: Optional[list[str]] = OVERRIDES, *,
        grid: list[str] = typer.Option([], "--grid", help="key=v1,v2: an axis of the grid (repeatable)"),
        random_n: Optional[int] = typer.Option(None, "--random", help="run a seeded random N of the cells"),
        bases: Optional[list[str]] = typer.Option(None, "--bases", help="base models ranked beside the trials: "
                                                                        "auto, PATH or LABEL=PATH (repeatable)"),
        name: Optional[str] = typer.Option(None, "--name", help="the sweep's name (default: the file's, or "
                                                                "RECIPE-sweep)"),
        address: Optional[str] = typer.Option(None, "--address", help="a Ray cluster (ray://HEAD:10001 or HEAD:6379); "
                                                                      "default: a local Ray"),
        max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", help="at most N trials at once"),
        cpus: float = typer.Option(1.0, "--cpus-per-process", help="CPUs reserved per trial process"),
        gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="one GPU per trial process (default: when the "
                                                                     "cluster has GPUs)"),
        asha: Optional[bool] = typer.Option(None, "--asha/--no-asha", help="stop the worst trials early on eval loss "
                                                                           "(default: the file's `scheduler`)"),
        output_root: Optional[str] = typer.Option(None, "--output-root", help="where trials write (default "
                                                                              "$MEDSCALE_HOME/runs/sweeps); shared "
                                                                              "storage on a cluster"),
        launcher: str = typer.Option("ray", "--launcher", help="ray: Ray Tune (a local Ray, or --address); slurm: "
                                                              "one SLURM array job of the unfinished trials"),
        launch_opt: Optional[list[str]] = typer.Option(None, "--launch-opt", help="KEY=VALUE for the slurm "
                                                       "launcher, e.g. partition=gpu (repeatable)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the trials and bases (with --launcher slurm: "
                                                              "the array's batch script); start and write nothing"),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="log medscale's debug lines too, and show Ray "
                                                                    "Tune's own progress table (default: a line per "
                                                                    "trial event)"),
        as_json: bool = AS_JSON) -> None:
    """Run a sweep on Ray Tune or as a SLURM array: every cell a trial job (train, then eval) submitted through a
    launcher; finished trials are skipped, interrupted ones resume from their verified checkpoints; then (on Ray)
    the leaderboard."""
    from medscale.sweep.spec import SweepError

    if launcher not in ("ray", "slurm"):
        raise SweepError(f"--launcher {launcher}: use ray (Ray Tune, local or --address) or slurm (an array job)")
    if launch_opt and launcher != "slurm":
        raise SweepError("--launch-opt: only --launcher slurm takes launcher options (Ray Tune's are --address, "
                         "--cpus-per-process, --gpu/--cpu)")
    ray_only = {"--address": address, "--max-concurrent": max_concurrent, "--asha/--no-asha": asha, "--gpu/--cpu": gpu}
    if launcher == "slurm" and (given := [flag for flag, value in ray_only.items() if value is not None]):
        raise SweepError(f"{', '.join(given)}: Ray Tune's options; an array job takes --launch-opt KEY=VALUE (the "
                         f"`medscale submit slurm` options, e.g. gpus_per_node=1)")
    if max_concurrent is not None and max_concurrent < 1:
        raise SweepError(f"--max-concurrent {max_concurrent}: at least 1 trial at a time (leave it out: as many as "
                         f"the resources allow)")
    plan = _plan(spec, overrides or [], grid, random_n, bases, name=name, output_root=output_root)
    if launcher == "slurm":
        _on_slurm(plan, launch_opt or [], dry_run, as_json)
        return
    if dry_run:
        _print_plan(plan, as_json)
        return
    from functools import partial

    from launcher.local import LocalLauncher
    from medscale.registry import Registry
    from medscale.sweep.board import leaderboard
    from medscale.sweep.tune import OnRay, Resources, run_sweep

    setup_logging()
    on_ray = OnRay(launcher_for=partial(LocalLauncher, in_process=False), address=address,
                   resources=Resources(cpus, gpu), max_concurrent=max_concurrent, asha=asha, verbose=verbose)
    outcome = run_sweep(plan, on_ray, echo=lambda s: typer.echo(s, err=as_json))
    if plan.spec.judge is not None:
        _judge_trials(plan, echo=lambda s: typer.echo(s, err=as_json))
    with Registry() as reg:
        board = leaderboard(reg, plan.name)
    if as_json:
        echo_json({**outcome.to_dict(), "leaderboard": board.to_dict()})
    else:
        typer.echo(board.to_markdown())
    for t in outcome.failed:
        typer.echo(f"medscale: trial {t.label} {t.status}: {t.reason or 'see medscale jobs show ' + str(t.job_id)}",
                   err=True)
    raise typer.Exit(1 if outcome.failed else 0)


@sweep_app.command("judge")
def judge(spec: str = typer.Argument(..., help="a sweep file or built-in sweep whose `judge` section says how"),
          overrides: Optional[list[str]] = OVERRIDES, *,
          name: Optional[str] = typer.Option(None, "--name", help="the sweep's name, where the run gave one")) -> None:
    """Judge each finished fine-tune of a sweep against its own base on open questions, as the sweep file's `judge`
    section says (`sweep run` does it after the trials; run this after a SLURM array or to judge again)."""
    from medscale.sweep.spec import SweepError

    plan = _plan(spec, overrides or [], [], None, None, name=name)
    if plan.spec.judge is None:
        raise SweepError(f"{spec}: no `judge` section (questions, and judge or judge_endpoint): add one to judge "
                         f"its fine-tunes, or run `medscale judge BASE TRIAL` yourself")
    setup_logging()
    raise typer.Exit(1 if _judge_trials(plan, echo=typer.echo) else 0)


def _judge_trials(plan, echo) -> int:
    """Each trial that succeeded judged (B) against its base (A) as a judge job in `<trial>/judge`: the report finds
    it by its sides; a rerun continues from what the engine kept. Returns how many judgements failed."""
    from medscale.cli.eval import launch_eval
    from medscale.judge.spec import new_judge_spec, read_judgement
    from medscale.registry import Registry
    from medscale.status import JobStatus

    j = plan.spec.judge
    with Registry() as reg:
        finished = {job.name for job in reg.jobs(JobStatus.SUCCEEDED.value)}
    failed = 0
    for t in plan.trials:
        if t.name not in finished:
            echo(f"medscale: {t.label} not judged: the trial has not succeeded")
            continue
        spec = new_judge_spec(dict(
            models=[t.base, t.name], questions=j.questions, mode="pairwise", judge=j.judge or j.judge_endpoint,
            limit=j.limit, greedy=j.greedy, api_key_env=j.api_key_env,
            sampling={"max_new_tokens": j.max_new_tokens} if j.max_new_tokens else {},
            judge_sampling={"max_new_tokens": j.judge_max_new_tokens}), Path(t.output_dir) / "judge")
        if launch_eval(spec, "local", {}, dry_run=False):
            failed += 1
            echo(f"medscale: judging {t.label} against its base failed: see {spec.train.output_dir}")
            continue
        echo(f"medscale: {t.label} against its base: {read_judgement(spec.train.output_dir).verdict}")
    return failed


def _on_slurm(plan, launch_opt: list[str], dry_run: bool, as_json: bool) -> None:
    """The sweep's unfinished trials as one SLURM array (the SLURM launcher's prepare_array -> submit); a dry run
    prints the batch script of every trial and submits nothing."""
    from dataclasses import replace

    from launcher.slurm import SlurmLauncher
    from medscale.cli.eval import _launch_options
    from medscale.sweep.tune import AsArray, run_sweep, trial_requests

    options, backend = _launch_options("slurm", launch_opt), SlurmLauncher()

    def prepared(requests, name):
        return backend.prepare_array([replace(r, options={**r.options, **options}) for r in requests], name)

    if dry_run:
        typer.echo(prepared(trial_requests(plan, plan.trials), plan.name).script, nl=False)
        return
    setup_logging()
    array = AsArray(lambda requests, name: backend.submit(prepared(requests, name)).job_id)
    outcome = run_sweep(plan, array, echo=lambda s: typer.echo(s, err=as_json))
    if as_json:
        echo_json({**outcome.to_dict(), "array_job": array.job_id})


def _print_plan(plan, as_json: bool) -> None:
    rows = [{"label": t.label, "job": t.name, "recipe": t.recipe_ref, "overrides": t.asked,
             "output_dir": t.output_dir, "processes": t.processes, "base": t.base, "note": t.note}
            for t in plan.trials]
    if as_json:
        echo_json({"name": plan.name, "trials": rows, "bases": [b.to_dict() for b in plan.bases]})
        return
    typer.echo(f"sweep {plan.name}: {len(rows)} trial(s)")
    for r in rows:
        typer.echo(f"  {r['label']:32s} {r['recipe']} {' '.join(r['overrides'])}" + (f"  ({r['note']})" if r['note']
                                                                                      else ""))
    for b in plan.bases:
        typer.echo(f"  base {b.label}: {b.path}")


@sweep_app.command("show")
def show(sweep: str = typer.Argument(..., help="sweep name or id"),
         metric: Optional[str] = typer.Option(None, "--metric", help="eval_loss, control, or a benchmark name "
                                                                    "(default: the sweep's `metric`)"),
         as_json: bool = AS_JSON,
         markdown: bool = typer.Option(False, "--md", help="a Markdown table")) -> None:
    """The leaderboard: trials and bases ranked by a metric, every fine-tune worse than its own base marked."""
    from medscale.registry import Registry
    from medscale.sweep.board import leaderboard
    from medscale.sweep.metric import SweepMetric

    with Registry() as reg:
        board = leaderboard(reg, sweep, SweepMetric(name=metric) if metric else None)
    if as_json:
        typer.echo(board.to_json())
    elif markdown:
        typer.echo(board.to_markdown())
    else:
        _render(board)


def _render(board) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from medscale.sweep.board import RowKind

    t = Table(title=Text(f"{board.sweep} ranked by {board.metric.name} ({'lower' if board.lower_is_better else 'higher'} "
                         f"is better)"))
    for h in board.header():
        t.add_column(h, justify="right" if h in ("#", "steps") else "left")
    for r in board.rows:
        cells = [Text(c) for c in board.cells(r)]  # Text: a label with [brackets] is not rich markup
        if r.worse_than_base:
            cells[board.VERSUS].stylize("bold red")
        t.add_row(*cells, style="dim" if r.kind is RowKind.BASE else None)
    console = Console(width=200)
    console.print(t)
    if line := board.worse_line():
        console.print(Text(line))


@sweep_app.command("list")
def list_sweeps(as_json: bool = AS_JSON) -> None:
    """Every sweep in the registry."""
    from medscale.registry import Registry

    with Registry() as reg:
        sweeps = reg.sweeps()
    if as_json:
        echo_json([{"name": s.name, "trials": len(s.grid), "bases": s.bases} for s in sweeps])
        return
    for s in sweeps:
        typer.echo(f"{s.name:32s} {len(s.grid)} trial(s), {len(s.bases)} base(s)")


@sweep_app.command("slurm-task", hidden=True)  # internal: what slurm/r1_sweep.sh runs in each array task
def slurm_task(spec: str = typer.Argument(..., help="a sweep file or built-in sweep"),
               index: int = typer.Argument(..., help="the array task id ($SLURM_ARRAY_TASK_ID)")) -> None:
    """For slurm/r1_sweep.sh: register the sweep and its trial INDEX, print the trial's recipe and overrides
    (NUL-separated) for `medscale_run` with MEDSCALE_ENTRY=trial."""
    import sys

    from medscale.registry import Registry, RegistryError
    from medscale.sweep.spec import SweepError
    from medscale.sweep.tune import register

    plan = _plan(spec, [], [], None, None)
    if not 0 <= index < len(plan.trials):
        raise SweepError(f"array task {index}: sweep {plan.name} has {len(plan.trials)} trials (use "
                         f"--array=0-{len(plan.trials) - 1})")
    try:
        with Registry() as reg:
            register(reg, plan)
    except RegistryError as e:  # the trial still runs: its first attempt records the job, `jobs sync` the rest
        typer.echo(f"medscale: warning: {e}; sweep {plan.name} not registered", err=True)
    t = plan.trials[index]
    sys.stdout.write("\0".join([t.recipe_ref, *t.overrides]) + "\0")
