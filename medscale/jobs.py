"""Job operations behind `medscale jobs ...`: list, show, resume, cancel, sync, gc (the CLI only prints).

Everything here goes through the registry store API and the on-disk record (journal + checkpoint
manifests), so it works the same whichever launcher ran the job. `medscale` never imports `launcher`
at module level: the launcher that resumes a job is imported when it is needed.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Callable

import yaml

from medscale import medscale_home
from medscale.registry import Registry, RegistryError, heartbeat_interval
from medscale.registry.models import JOB_STATUSES

# Statuses a person can filter on: the job statuses plus `lost` (computed: a running attempt gone silent).
STATUSES = (*JOB_STATUSES, "lost")
STATUS_STYLE = {"running": "green", "lost": "red", "failed": "red", "preempted": "yellow", "succeeded": "blue",
                "completed": "blue", "cancelled": "magenta", "queued": "cyan"}

# recorded launcher -> module whose `launch(recipe, recipe_ref, overrides) -> int` resumes the job
# (SLURM and Ray resubmit and return once submitted).
RESUME_LAUNCHERS: dict[str, str] = {"local": "launcher.local", "python": "launcher.local",
                                           "accelerate": "launcher.local", "slurm": "launcher.slurm",
                                           "ray": "launcher.ray"}
RESUME_OVERRIDES = ["train.resume=auto"]

LaunchFn = Callable[..., int]


# --------------------------------------------------------------------------- list / show

def list_jobs(reg: Registry, status: str | None = None) -> list[dict]:
    """Every job (one row each), optionally only those a person would see with `status` (lost included)."""
    if status is not None and status not in STATUSES:
        raise RegistryError(f"unknown status '{status}' (one of: {', '.join(STATUSES)})")
    return reg.jobs(status)


def show_job(reg: Registry, ref: str) -> dict:
    """One job with its attempts, checkpoints and recorded recipe, found by id or (unambiguous) name."""
    return reg.job(reg.find(ref))


def _name(path: str | None) -> str:
    return Path(path).name if path else ""


def _when(iso: str | None) -> str:
    return iso.replace("T", " ").removesuffix("Z") if iso else ""


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""


def _status(s: str):
    from rich.text import Text

    return Text(s, style=STATUS_STYLE.get(s, ""))


def _console():
    """Rich console; when piped, wide enough that names and paths are not wrapped mid-word."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 400)


def _table(title: str | None, columns: list[str], rows: list[list]):
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:  # Text, never markup: a name or path with [brackets] must print as it is
        t.add_row(*[c if isinstance(c, Text) else Text("" if c is None else str(c)) for c in r])
    return t


def render_jobs_table(rows: list[dict]) -> None:
    """The `jobs list` table for people."""
    console = _console()
    if not rows:
        console.print("no jobs in the registry (a run registers itself; `medscale jobs sync DIR` adds one from disk)")
        return
    console.print(_table(None, ["id", "name", "status", "attempts", "step", "latest checkpoint", "eval_loss", "loss",
                                "updated (UTC)", "output dir"],
                         [[j["id"], j["name"], _status(j["status"]), j["attempts"], j["step"],
                           _name(j["latest_checkpoint"]), _num(j["latest_metrics"].get("eval_loss")),
                           _num(j["latest_metrics"].get("loss")), _when(j["updated_at"]), j["output_dir"]]
                          for j in rows]))


def render_job(job: dict) -> None:
    """The `jobs show` view for people: header, attempts, checkpoints, latest metrics."""
    from rich.text import Text

    console = _console()
    header = Text()
    for label, value in [("job", f"{job['name']} (id {job['id']})"), ("status", None),
                         ("output dir", job["output_dir"]), ("launcher", job["launcher"]),
                         ("fingerprint", job["fingerprint"])]:
        header.append(f"{label:12s} ", style="bold")
        if value is None:
            header.append_text(_status(job["status"]))
            if job.get("cancel_requested"):
                header.append("  (cancel requested)", style="magenta")
        else:
            header.append(str(value))
        header.append("\n")
    console.print(header, end="")

    attempts = job["attempt_list"]
    extra = [(key, label) for key, label in (("slurm_job_id", "SLURM job"), ("ray_job_id", "Ray job"))
             if any(a.get(key) for a in attempts)]
    cols = ["#", "status", "launcher", "host", "pid", *[label for _, label in extra], "world", "started (UTC)",
            "ended (UTC)", "step", "resumed from", "exit reason"]
    console.print(_table("attempts", cols, [
        [a["number"], _status(a["status"]), a["launcher"], a["host"], a["pid"], *[a.get(k) or "" for k, _ in extra],
         a["world_size"], _when(a["started_at"]), _when(a["ended_at"]), a["step"], _name(a["resumed_from"]),
         a["exit_reason"] or ""] for a in attempts]))

    console.print(_table("checkpoints", ["step", "verified", "deleted", "attempt", "loss", "eval_loss", "size MB"], [
        [c["step"], Text("✓", style="green") if c["verified"] else Text("✗", style="red"),
         "deleted" if c["deleted"] else "", c["attempt"], _num(c["metrics"].get("loss")),
         _num(c["metrics"].get("eval_loss")), f"{c['size_bytes'] / 2**20:.1f}"] for c in job["checkpoints"]]))

    metrics = job["latest_metrics"]
    console.print(Text("latest metrics", style="bold")
                  + Text(f" ({_name(job['latest_checkpoint'])})" if job["latest_checkpoint"] else ""))
    if not metrics:
        console.print("  (no verified checkpoint yet)")
    for k, v in metrics.items():
        console.print(Text(f"  {k:14s} {_num(v) or v}"))


# --------------------------------------------------------------------------- resume / cancel

def _running_attempt(job: dict) -> dict | None:
    """The job's last attempt if it is alive (status `running`, not `lost`), else None."""
    last = job["attempt_list"][-1] if job["attempt_list"] else None
    return last if last and last["status"] == "running" else None


def _resume_launcher(launcher: str) -> str:
    """The module whose `launch` resumes a job started by `launcher`, or a RegistryError saying why none can."""
    if launcher not in RESUME_LAUNCHERS:
        raise RegistryError(f"job was started by launcher '{launcher}', which this medscale does not know "
                            f"(known: {', '.join(RESUME_LAUNCHERS)})")
    return RESUME_LAUNCHERS[launcher]


def resume_job(reg: Registry, ref: str, launch_fn: LaunchFn | None = None) -> int:
    """Start a new attempt of a stopped job from its recorded recipe, so a resume never depends on the recipe
    file (or built-in) still saying what it said; it continues from the newest verified checkpoint."""
    from medscale.recipe import load_recipe
    from medscale.train.checkpoint import write_text_atomic

    job = reg.job(reg.find(ref))
    if live := _running_attempt(job):
        raise RegistryError(f"job {job['name']} (id {job['id']}) is running (attempt {live['number']} on host "
                            f"{live['host']}, pid {live['pid']}); cancel it first (`medscale jobs cancel {job['id']}`)")
    module = _resume_launcher(job["launcher"])
    launch = launch_fn or importlib.import_module(module).launch
    recipe_yaml = job["recipe_yaml"]
    if not recipe_yaml:
        raise RegistryError(f"job {job['name']} (id {job['id']}) has no recorded recipe (its output dir had no "
                            f"recipe file when it was synced): run `medscale train RECIPE` with "
                            f"train.output_dir={job['output_dir']} instead")
    path = medscale_home() / "jobs" / str(job["id"]) / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, recipe_yaml)
    overrides = list(RESUME_OVERRIDES)
    recorded_out = (yaml.safe_load(recipe_yaml).get("train") or {}).get("output_dir")
    if recorded_out != job["output_dir"]:  # a relative output_dir recorded from another cwd: keep the job's dir
        overrides.append(f"train.output_dir={job['output_dir']}")
    return launch(load_recipe(str(path), overrides), str(path), overrides)


def _seconds(x: float) -> str:
    return f"{x:.0f}" if x >= 10 or x == int(x) else f"{x:.1f}"


def cancel_job(reg: Registry, ref: str) -> str:
    """Ask a running job to save and stop (its heartbeat sees the request), or mark a stopped one cancelled;
    returns the sentence to show."""
    job_id = reg.find(ref)
    job = reg.job(job_id)
    reg.request_cancel(job_id)
    last = job["attempt_list"][-1] if job["attempt_list"] else None
    if live := _running_attempt(job):
        return (f"cancel requested: attempt {live['number']} on host {live['host']} will save a checkpoint and stop "
                f"within ~{_seconds(4 * heartbeat_interval())} s")
    if job["status"] == "lost" and last:
        return (f"job {job['name']}: attempt {last['number']} on host {last['host']} is lost (no heartbeat, or its "
                f"process is gone); cancel recorded: if it is still alive it stops at its next heartbeat")
    return f"job {job['name']} (id {job_id}) marked cancelled"


# --------------------------------------------------------------------------- sync / gc

def sync_jobs(reg: Registry, dirs: list[str] | None = None) -> list[dict]:
    """Rebuild the registry from output dirs (the source of truth): the given ones, else every dir the registry
    knows that still exists; dirs that are gone are reported, their rows kept."""
    from medscale.recipe import RecipeError
    from medscale.train.lifecycle import JOURNAL, read_journal, sync_output_dir

    if dirs:
        bad = [d for d in dirs if read_journal(d) is None]
        if bad:  # check all before writing anything: a typo should not leave half a sync behind
            raise RecipeError("not a medscale output dir (no " + JOURNAL + "): " + ", ".join(bad))
        return [{**sync_output_dir(reg, d), "result": "synced"} for d in dirs]
    out, seen = [], set()
    for j in reg.jobs():
        d = j["output_dir"]
        if d in seen:
            continue
        seen.add(d)
        if not Path(d).is_dir():
            out.append({"job": j["name"], "id": j["id"], "output_dir": d, "result": "missing",
                        "reason": "output dir is gone; its registry rows are kept"})
        elif read_journal(d) is None:
            out.append({"job": j["name"], "id": j["id"], "output_dir": d, "result": "missing",
                        "reason": f"no {JOURNAL} in the output dir"})
        else:
            out.append({**sync_output_dir(reg, d), "result": "synced"})
    return out


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _retention(recipe_yaml: str) -> tuple[int | None, bool]:
    """(train.save_total_limit, train.keep_best_checkpoint) of a recorded recipe."""
    train = ((yaml.safe_load(recipe_yaml) if recipe_yaml else None) or {}).get("train") or {}
    return train.get("save_total_limit"), bool(train.get("keep_best_checkpoint", True))


def gc_jobs(reg: Registry, ref: str | None = None, keep_last: int | None = None,
            dry_run: bool = False) -> list[dict]:
    """Apply checkpoint retention after the fact (newest N verified + best eval loss + always the newest), for
    one job or all, with each job's own recipe policy unless --keep-last overrides it."""
    from medscale.train.checkpoint import checkpoint_dirs, delete_checkpoint, retention_plan

    ids = [reg.find(ref)] if ref is not None else [j["id"] for j in reg.jobs()]
    results = []
    for job_id in ids:
        spec = reg.job_spec(job_id)
        limit, keep_best = _retention(spec.recipe_yaml)
        k = keep_last if keep_last is not None else limit
        r = {"job": spec.name, "id": job_id, "output_dir": spec.output_dir, "keep_last": k, "keep_best": keep_best,
             "dry_run": dry_run, "deleted": [], "kept": 0, "freed_bytes": 0, "note": None}
        results.append(r)
        if not Path(spec.output_dir).is_dir():
            r["note"] = "output dir is gone: nothing to delete"
            continue
        on_disk = checkpoint_dirs(spec.output_dir)
        r["kept"] = len(on_disk)
        if k is None:
            r["note"] = "no retention policy (train.save_total_limit is null): nothing deleted; pass --keep-last N"
            continue
        doomed = retention_plan(spec.output_dir, k, keep_best)
        r["freed_bytes"] = sum(_dir_bytes(p) for p in doomed)
        r["deleted"] = [str(p) for p in doomed]
        r["kept"] = len(on_disk) - len(doomed)
        if dry_run:
            continue
        for p in doomed:
            delete_checkpoint(p)
        reg.mark_deleted(spec, r["deleted"])
    return results


def render_sync(results: list[dict]) -> None:
    """One line per output dir for people."""
    if not results:
        print("nothing to sync: the registry knows no jobs; give output dirs (`medscale jobs sync DIR ...`)")
    for r in results:
        if r["result"] == "synced":
            print(f"synced {r['job']} from {r['output_dir']}: {r['attempts']} attempt(s), {r['checkpoints']} "
                  f"checkpoint(s) ({r['verified']} verified), {r['marked_deleted']} marked deleted")
        else:
            print(f"skipped {r['job']} (id {r['id']}): {r['output_dir']}: {r['reason']}")


def render_gc(results: list[dict]) -> None:
    """Per job: what was (or would be) deleted and what stays, for people."""
    if not results:
        print("no jobs in the registry: nothing to delete")
    for r in results:
        head = f"{r['job']} (id {r['id']})"
        if r["note"]:
            print(f"{head}: {r['note']}")
            continue
        verb = "would delete" if r["dry_run"] else "deleted"
        policy = f"keep last {r['keep_last']}" + (" + best eval_loss" if r["keep_best"] else "")
        if not r["deleted"]:
            print(f"{head}: nothing to delete ({policy}); {r['kept']} checkpoint(s) kept")
            continue
        print(f"{head}: {verb} {len(r['deleted'])} checkpoint(s), {_size(r['freed_bytes'])} ({policy}); "
              f"{r['kept']} kept")
        for p in r["deleted"]:
            print(f"  {verb} {p}")
