"""`medscale jobs list | show | resume | cancel | sync | gc`: thin wrappers over `medscale.jobs.ops`, plus the
rich tables people read (rendering lives here; the operations return data). Imports no torch."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from medscale.cli.app import AS_JSON, App, echo_json, setup_logging
from medscale.status import VISIBLE_JOB_STATUSES, AttemptStatus, JobStatus

jobs_app = App(no_args_is_help=True, help="Jobs in the registry: list, show, resume, cancel, sync, gc.")

JOB = typer.Argument(..., help="job id, name or output dir (a name used by several output dirs needs one of the others)")
STATUS_STYLE = {JobStatus.RUNNING: "green", AttemptStatus.LOST: "red", JobStatus.FAILED: "red",
                JobStatus.PREEMPTED: "yellow", JobStatus.SUCCEEDED: "blue", AttemptStatus.COMPLETED: "blue",
                JobStatus.CANCELLED: "magenta", JobStatus.QUEUED: "cyan", JobStatus.STOPPED_EARLY: "yellow"}


def registry():
    """The registry of $MEDSCALE_REGISTRY_URL (default: SQLite under $MEDSCALE_HOME) for a `with` block; imported
    here, not at the top, so `medscale --help` does not load SQLAlchemy."""
    from medscale.registry import Registry

    return Registry()


# --------------------------------------------------------------------------- rendering

def _name(path: str | None) -> str:
    return Path(path).name if path else ""


def _when(iso: str | None) -> str:
    return iso.replace("T", " ").removesuffix("Z") if iso else ""


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def _status(s: str):
    from rich.text import Text

    return Text(s, style=STATUS_STYLE.get(s, ""))


def console():
    """Rich console; when piped, wide enough that names and paths are not wrapped mid-word."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 400)


def table(title: str | None, columns: list[str], rows: list[list]):
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:  # Text, never markup: a name or path with [brackets] must print as it is
        t.add_row(*[c if isinstance(c, Text) else Text("" if c is None else str(c)) for c in r])
    return t


def render_jobs(rows) -> None:
    out = console()
    if not rows:
        out.print("no jobs in the registry (a run registers itself; `medscale jobs sync` adds the output dirs under "
                  "$MEDSCALE_HOME/runs, `medscale jobs sync DIR` any other)")
        return
    out.print(table(None, ["id", "name", "kind", "status", "attempts", "step", "latest checkpoint", "eval_loss",
                           "loss", "updated (UTC)", "output dir"],
                    [[j.id, j.name, j.kind, _status(j.status), j.attempts, j.step, _name(j.latest_checkpoint),
                      _num(j.latest_metrics.get("eval_loss")), _num(j.latest_metrics.get("loss")), _when(j.updated_at),
                      j.output_dir] for j in rows]))


def render_job(detail) -> None:
    """`jobs show` for people: header, attempts, checkpoints (and any set aside as damaged), latest metrics, and a
    finished run's verdicts (its summary)."""
    from rich.text import Text

    job, out = detail.job, console()
    header = Text()
    for label, value in [("job", f"{job.name} (id {job.id})"), ("kind", job.kind), ("status", None),
                         ("output dir", job.output_dir), ("launcher", job.launcher),
                         ("options", ", ".join(f"{k}={v}" for k, v in job.launcher_options.items()) or "-"),
                         ("fingerprint", job.fingerprint)]:
        header.append(f"{label:12s} ", style="bold")
        if value is None:
            header.append_text(_status(job.status))
            if job.cancel_requested:
                header.append("  (cancel requested)", style="magenta")
        else:
            header.append(str(value))
        header.append("\n")
    out.print(header, end="")
    attempts = job.attempt_list
    id_keys = sorted({k for a in attempts for k in a.launcher_ids})
    out.print(table("attempts", ["#", "status", "launcher", "host", "pid", *id_keys, "world", "started (UTC)",
                                 "ended (UTC)", "step", "resumed from", "exit reason"], [
        [a.number, _status(a.status), a.launcher, a.host, a.pid, *[a.launcher_ids.get(k, "") for k in id_keys],
         a.world_size, _when(a.started_at), _when(a.ended_at), a.step, _name(a.resumed_from),
         "; ".join(x for x in (a.exit_reason, ("recipe changed: " + ", ".join(a.recipe_changes))
                                if a.recipe_changes else "") if x)] for a in attempts]))
    out.print(table("checkpoints", ["step", "verified", "deleted", "attempt", "loss", "eval_loss", "size MB"], [
        [c.step, Text("✓", style="green") if c.verified else Text("✗", style="red"), "deleted" if c.deleted else "",
         c.attempt, _num(c.metrics.get("loss")), _num(c.metrics.get("eval_loss")), f"{c.size_bytes / 2**20:.1f}"]
        for c in job.checkpoints]))
    if detail.results:
        out.print(table("results", ["benchmark", "role", "model", "step", "n", "accuracy", "95% CI", "loss", "mode",
                                    "measured (UTC)"], [
            [r.benchmark, r.role, r.model, "" if r.step is None else r.step, r.n,
             "" if r.accuracy is None else f"{100 * r.accuracy:.1f}%",
             "" if r.ci_low is None else f"{100 * r.ci_low:.1f}-{100 * r.ci_high:.1f}%", _num(r.loss), r.mode,
             _when(r.created_at)] for r in detail.results]))
    if detail.damaged:
        out.print(Text("set aside (did not verify; `medscale jobs gc` deletes them)", style="bold red"))
        for p in detail.damaged:
            out.print(Text(f"  {p}"))
    out.print(Text("latest metrics", style="bold")
              + Text(f" ({_name(job.latest_checkpoint)})" if job.latest_checkpoint else ""))
    if not job.latest_metrics:
        out.print("  (no verified checkpoint yet)")
    for k, v in job.latest_metrics.items():
        out.print(Text(f"  {k:14s} {_num(v) or v}"))
    if detail.summary is not None:  # the held-out loss, each benchmark against the base, the forgetting guard
        out.print(Text("run summary", style="bold") + Text(f" (step {detail.summary.global_step})"))
        for line in [detail.summary.verdict, *detail.summary.lines()]:
            out.print(Text(f"  {line}"))


def render_sync(results: list[dict]) -> None:
    if not results:
        typer.echo("nothing to sync: no jobs in the registry and no output dirs under $MEDSCALE_HOME/runs; give "
                   "output dirs (`medscale jobs sync DIR ...`)")
    for r in results:
        if r["result"] == "synced":
            damaged = f", {len(r['damaged'])} set aside as damaged" if r.get("damaged") else ""
            typer.echo(f"synced {r['job']} from {r['output_dir']}: {r['attempts']} attempt(s), {r['checkpoints']} "
                       f"checkpoint(s) ({r['verified']} verified){damaged}, {r['marked_deleted']} marked deleted")
        else:
            which = f" (id {r['id']})" if r.get("id") else ""
            typer.echo(f"skipped {r['job']}{which}: {r['output_dir']}: {r['reason']}")


def render_gc(results) -> None:
    if not results:
        typer.echo("no jobs in the registry: nothing to delete")
    for r in results:
        head = f"{r.job} (id {r.id})"
        verb = "would delete" if r.dry_run else "deleted"
        for p in r.leftovers:
            typer.echo(f"{head}: {'would remove' if r.dry_run else 'removed'} {p} (left by a killed final save or "
                       f"export)")
        if r.note:
            typer.echo(f"{head}: {r.note}")
            continue
        policy = f"keep last {r.keep_last}" + (" + best eval_loss" if r.keep_best else "") if r.keep_last else \
            "damaged checkpoints only"
        if not r.deleted:
            typer.echo(f"{head}: nothing to delete ({policy}); {r.kept} checkpoint(s) kept")
            continue
        typer.echo(f"{head}: {verb} {len(r.deleted)} checkpoint(s), {_size(r.freed_bytes)} ({policy}); {r.kept} kept")
        for p in r.deleted:
            typer.echo(f"  {verb} {p}")


# --------------------------------------------------------------------------- commands

@jobs_app.command("list")
def jobs_list(status: Optional[str] = typer.Option(None, "--status", help="only jobs in this status ("
                                                   + " ".join(VISIBLE_JOB_STATUSES) + ")"),
              as_json: bool = AS_JSON) -> None:
    """One row per job: kind, status, attempts, step, latest verified checkpoint and its losses."""
    from medscale.jobs import ops

    with registry() as reg:
        rows = ops.list_jobs(reg, status)
    if as_json:
        echo_json([j.to_dict(brief=True) for j in rows])
    else:
        render_jobs(rows)


@jobs_app.command("show")
def jobs_show(job: str = JOB, as_json: bool = AS_JSON) -> None:
    """A job's attempts (hosts, pids, SLURM/Ray ids, exit reasons), checkpoints, latest metrics and, once it
    finished, its verdicts (held-out loss, each benchmark against the base, the forgetting guard)."""
    from medscale.jobs import ops

    with registry() as reg:
        d = ops.show_job(reg, job)
    if as_json:
        echo_json(d.to_dict())
    else:
        render_job(d)


@jobs_app.command("resume")
def jobs_resume(job: str = JOB) -> None:
    """Start a new attempt of a stopped job from its recorded recipe and newest verified checkpoint, with the
    launcher (and its options) that ran it."""
    from launcher import launchers
    from medscale.cli.train import print_summary
    from medscale.jobs import ops
    from medscale.jobs.record import SUMMARY, RunSummary

    setup_logging()
    with registry() as reg:
        d = ops.show_job(reg, job).job
        summary = Path(d.output_dir) / SUMMARY
        before = summary.stat().st_mtime_ns if summary.is_file() else None
        code = ops.resume_job(reg, str(d.id), launchers())
    # a launcher that only submits (SLURM, Ray) returns before training: no new summary to show then
    if code == 0 and summary.is_file() and summary.stat().st_mtime_ns != before:
        print_summary(f"medscale: {d.name} (job {d.id}) finished", RunSummary.load(d.output_dir))
    raise typer.Exit(code)


@jobs_app.command("cancel")
def jobs_cancel(job: str = JOB) -> None:
    """Ask a running job to save a checkpoint and stop; mark a queued or stopped one cancelled. Exit 2 when there
    is nothing to cancel (the job already finished)."""
    from medscale.jobs import ops

    with registry() as reg:
        result = ops.cancel_job(reg, job)
    typer.echo(result.message, err=not result.took_effect)
    raise typer.Exit(0 if result.took_effect else 2)


@jobs_app.command("sync")
def jobs_sync(dirs: Optional[list[str]] = typer.Argument(None, help="output dirs (default: every one the registry "
                                                                    "knows, and every one under $MEDSCALE_HOME/runs)"),
              as_json: bool = AS_JSON) -> None:
    """Rebuild registry rows from output dirs (journal + checkpoint manifests), e.g. after the registry was down."""
    from medscale.jobs import ops

    with registry() as reg:
        results = ops.sync_jobs(reg, dirs or [])
    if as_json:
        echo_json(results)
    else:
        render_sync(results)


@jobs_app.command("gc")
def jobs_gc(job: Optional[str] = typer.Argument(None, help="job id or name (default: every job)"),
            keep_last: Optional[int] = typer.Option(None, "--keep-last", min=1,
                                                    help="keep this many newest verified checkpoints "
                                                         "(default: the job's train.save_total_limit)"),
            dry_run: bool = typer.Option(False, "--dry-run", help="list what would be deleted, delete nothing"),
            as_json: bool = AS_JSON) -> None:
    """Delete old checkpoints by the retention rule (newest N verified + best eval loss + always the newest),
    checkpoints set aside as damaged, and the temporary folders killed final saves and exports left behind."""
    from medscale.jobs import ops

    with registry() as reg:
        results = ops.gc_jobs(reg, job, keep_last, dry_run)
    if as_json:
        echo_json([r.to_dict() for r in results])
    else:
        render_gc(results)
