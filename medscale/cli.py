"""The `medscale` command: thin wrappers over library functions."""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Optional

import typer

from medscale.errors import user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fine-tune medical LLMs from one recipe, on a laptop, SLURM or Ray.")
recipe_app = typer.Typer(no_args_is_help=True, help="Inspect recipes.")
app.add_typer(recipe_app, name="recipe")
data_app = typer.Typer(no_args_is_help=True, help="Look at data before spending GPU hours on it.")
app.add_typer(data_app, name="data")
jobs_app = typer.Typer(no_args_is_help=True, help="Jobs in the registry: list, show, resume, cancel, sync, gc.")
app.add_typer(jobs_app, name="jobs")
submit_app = typer.Typer(no_args_is_help=True, help="Submit a recipe to a cluster: SLURM (sbatch) or Ray (ray job submit).")
app.add_typer(submit_app, name="submit")

OVERRIDES = typer.Argument(None, help="key=value overrides, e.g. train.learning_rate=5e-6 adapter.r=8")


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


@app.command("recipes")
def recipes() -> None:
    """List the built-in recipes, one line each."""
    from medscale.recipe import builtin_names, load_recipe

    with user_errors():
        for name in builtin_names():
            typer.echo(f"{name:32s} {load_recipe(name).description}")


@recipe_app.command("show")
def recipe_show(name: str, overrides: Optional[list[str]] = OVERRIDES) -> None:
    """Print the resolved recipe (built-in name or YAML path, plus overrides) as YAML."""
    from medscale.recipe import load_recipe

    with user_errors():
        r = load_recipe(name, overrides or [])
        typer.echo(f"# fingerprint: {r.fingerprint()}")
        typer.echo(r.to_yaml(), nl=False)


@recipe_app.command("schema")
def recipe_schema() -> None:
    """Print the recipe JSON schema (every key, type, default and description)."""
    from medscale.recipe import recipe_schema as schema

    typer.echo(json.dumps(schema(), indent=2, ensure_ascii=False))


@app.command("train", context_settings={"allow_extra_args": False})
def train(recipe: str = typer.Argument(..., help="built-in recipe name or a YAML path"),
          overrides: Optional[list[str]] = OVERRIDES) -> None:
    """Train a recipe: in this process for one process, else through `accelerate launch`."""
    from launcher.local import launch
    from medscale.recipe import load_recipe

    _logging()
    with user_errors():
        r = load_recipe(recipe, overrides or [])
        code = launch(r, recipe, overrides or [])
    summary = Path(r.train.output_dir) / "run_summary.json"
    if code == 0 and summary.is_file():
        _report(f"medscale: {r.name} finished", json.loads(summary.read_text(encoding="utf-8")))
    raise typer.Exit(code)


@app.command("tiny-model")
def tiny_model(out: Path, layers: int = typer.Option(2, help="decoder layers"),
               hidden: int = typer.Option(64, help="hidden size"),
               tokenizer: Optional[Path] = typer.Option(None, help="copy this tokenizer (e.g. a real Qwen3 one)")) -> None:
    """Write a tiny random Qwen3 checkpoint (safetensors) + tokenizer for demos and tests."""
    from medscale.model.tiny import build_tiny_model

    path = build_tiny_model(out, layers=layers, hidden=hidden, tokenizer=str(tokenizer) if tokenizer else None)
    typer.echo(f"tiny Qwen3 written to {path}")


@app.command("demo")
def demo(overrides: Optional[list[str]] = OVERRIDES) -> None:
    """CPU demo: build a tiny Qwen3, fine-tune it on the shipped medical data, report where everything is."""
    from medscale.recipe import load_recipe
    from medscale.train.run import run

    _logging()
    with user_errors():
        summary = run(load_recipe("tiny-demo", overrides or []))
    _report("medscale demo finished", summary)


def _report(title: str, s: dict) -> None:
    """The end-of-run lines a person reads: did the loss fall, was it better than the base, where is it."""
    p = s["paths"]
    typer.echo("\n".join([
        "", title,
        f"  loss          {s['loss_first']:.3f} -> {s['loss_last']:.3f} over {s['global_step']} steps "
        f"on {s['world_size']} process(es)",
        f"  verdict       {s['verdict']}",
        f"  throughput    {s.get('tokens_per_s', 0):.0f} tokens/s, {s.get('samples_per_s', 0):.1f} samples/s",
        f"  adapter       {p['adapter']}/adapter_model.safetensors",
        f"  loss curve    {p['loss_plot']}",
        f"  logs          {p['trainer_state']}" + (f"  and SwanLab (offline) {p['swanlab']}" if p["swanlab"] else ""),
        f"  run record    {p['adapter']}/run_summary.json",
    ]))


def _tokenizer(path: Optional[Path]):
    """The given tokenizer folder, or medscale's small demo tokenizer (Qwen3-style template)."""
    if path is None:
        from medscale.model.tiny import train_demo_tokenizer

        return train_demo_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@data_app.command("inspect")
def data_inspect(file: str, tokenizer: Optional[Path] = typer.Option(None, help="tokenizer folder (default: demo)"),
                 format: str = typer.Option("auto", "--format", help="record layout (default: detected)"),
                 n: int = typer.Option(3, "--n", help="records to show"),
                 system_prompt: Optional[str] = typer.Option(None, help="system prompt to add")) -> None:
    """Show N records as the model sees them, the loss-carrying tokens marked."""
    import sys

    from rich.console import Console

    from medscale.data.formats import load_conversations
    from medscale.data.inspect import render_segments, segments

    color = sys.stdout.isatty()
    console = Console(highlight=False)
    with user_errors():
        tok = _tokenizer(tokenizer)
        for i, msgs in enumerate(load_conversations(file, format, system_prompt=system_prompt, limit=n)):
            text = render_segments(segments(tok, msgs), color)
            header = f"--- record {i + 1} (loss on {'green' if color else '[[...]]'} text) ---"
            if color:
                console.print(f"[bold]{header}[/]")
                console.print(text)
            else:
                typer.echo(header)
                typer.echo(text)


@data_app.command("stats")
def data_stats(file: str, tokenizer: Optional[Path] = typer.Option(None, help="tokenizer folder (default: demo)"),
               max_len: int = typer.Option(2048, "--max-len"), batch_size: int = typer.Option(4, "--batch-size"),
               format: str = typer.Option("auto", "--format"), skip_bad: bool = typer.Option(False, help="skip bad records"),
               as_json: bool = typer.Option(False, "--json", help="one JSON object")) -> None:
    """Records, token mean/median/p90/max, over-length count, padding waste and packing efficiency."""
    from medscale.data.inspect import data_stats as compute

    with user_errors():
        s = compute(file, _tokenizer(tokenizer), max_len, batch_size, format,
                    on_bad_record="skip" if skip_bad else "error", max_bad_fraction=1.0)
    if as_json:
        typer.echo(json.dumps(s, ensure_ascii=False))
        return
    for k, v in s.items():
        typer.echo(f"{k:20s} {v}")


# --------------------------------------------------------------------------- jobs

JOB = typer.Argument(..., help="job id, name or output dir (a name used by several output dirs needs one of the others)")
AS_JSON = typer.Option(False, "--json", help="one JSON document instead of a table")


def _json(obj) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False))


@contextlib.contextmanager
def _registry():
    """The registry of $MEDSCALE_REGISTRY_URL (default: SQLite under $MEDSCALE_HOME), closed afterwards."""
    from medscale.registry import Registry

    reg = Registry()
    try:
        yield reg
    finally:
        reg.close()


@jobs_app.command("list")
def jobs_list(status: Optional[str] = typer.Option(None, "--status", help="only jobs in this status "
                                                   "(queued running lost succeeded failed preempted cancelled)"),
              as_json: bool = AS_JSON) -> None:
    """One row per job: status, attempts, step, latest verified checkpoint and its losses."""
    from medscale import jobs

    with user_errors(), _registry() as reg:
        rows = jobs.list_jobs(reg, status)
    if as_json:
        _json(rows)
    else:
        jobs.render_jobs_table(rows)


@jobs_app.command("show")
def jobs_show(job: str = JOB, as_json: bool = AS_JSON) -> None:
    """A job's attempts (hosts, pids, SLURM/Ray ids, exit reasons), checkpoints and latest metrics."""
    from medscale import jobs

    with user_errors(), _registry() as reg:
        d = jobs.show_job(reg, job)
    if as_json:
        _json(d)
    else:
        jobs.render_job(d)


@jobs_app.command("resume")
def jobs_resume(job: str = JOB) -> None:
    """Start a new attempt of a stopped job from its recorded recipe and newest verified checkpoint."""
    from medscale import jobs

    _logging()
    with user_errors(), _registry() as reg:
        d = jobs.show_job(reg, job)
        summary = Path(d["output_dir"]) / "run_summary.json"
        before = summary.stat().st_mtime_ns if summary.is_file() else None
        code = jobs.resume_job(reg, str(d["id"]))
    # a launcher that only submits (SLURM, Ray) returns before training: no new summary to show then
    if code == 0 and summary.is_file() and summary.stat().st_mtime_ns != before:
        _report(f"medscale: {d['name']} (job {d['id']}) finished", json.loads(summary.read_text(encoding="utf-8")))
    raise typer.Exit(code)


@jobs_app.command("cancel")
def jobs_cancel(job: str = JOB) -> None:
    """Ask a running job to save a checkpoint and stop; mark a stopped one cancelled."""
    from medscale import jobs

    with user_errors(), _registry() as reg:
        typer.echo(jobs.cancel_job(reg, job))


@jobs_app.command("sync")
def jobs_sync(dirs: Optional[list[str]] = typer.Argument(None, help="output dirs (default: every one the registry "
                                                                    "knows that still exists)"),
              as_json: bool = AS_JSON) -> None:
    """Rebuild registry rows from output dirs (journal + checkpoint manifests), e.g. after the registry was down."""
    from medscale import jobs

    with user_errors(), _registry() as reg:
        results = jobs.sync_jobs(reg, dirs or [])
    if as_json:
        _json(results)
    else:
        jobs.render_sync(results)


@jobs_app.command("gc")
def jobs_gc(job: Optional[str] = typer.Argument(None, help="job id or name (default: every job)"),
            keep_last: Optional[int] = typer.Option(None, "--keep-last", min=1,
                                                    help="keep this many newest verified checkpoints "
                                                         "(default: the job's train.save_total_limit)"),
            dry_run: bool = typer.Option(False, "--dry-run", help="list what would be deleted, delete nothing"),
            as_json: bool = AS_JSON) -> None:
    """Delete old checkpoints by the retention rule: newest N verified + best eval loss + always the newest."""
    from medscale import jobs

    with user_errors(), _registry() as reg:
        results = jobs.gc_jobs(reg, job, keep_last, dry_run)
    if as_json:
        _json(results)
    else:
        jobs.render_gc(results)


# --------------------------------------------------------------------------- submit: slurm

@submit_app.command("slurm")
def submit_slurm(recipe: str = typer.Argument(..., help="built-in recipe name or a YAML path"),
                 overrides: Optional[list[str]] = OVERRIDES,
                 nodes: Optional[int] = typer.Option(None, "--nodes", min=1, help="nodes (default: the recipe's "
                                                     "dist.num_machines)"),
                 gpus_per_node: Optional[str] = typer.Option(None, "--gpus-per-node", help="GPUs per node, N or "
                                                             "TYPE:N (default: processes per node); 0: CPU only"),
                 procs_per_node: Optional[int] = typer.Option(None, "--procs-per-node", min=1,
                                                              help="training processes per node (default: the GPU "
                                                                   "count, else the recipe's dist.num_processes)"),
                 cpus_per_node: Optional[int] = typer.Option(None, "--cpus-per-node", min=1,
                                                             help="CPUs per node (default: 8 per GPU, else 1 per "
                                                                  "process)"),
                 partition: Optional[str] = typer.Option(None, "--partition", "-p"),
                 time: Optional[str] = typer.Option(None, "--time", "-t", help="time limit, e.g. 24:00:00"),
                 account: Optional[str] = typer.Option(None, "--account", "-A"),
                 output: Optional[str] = typer.Option(None, "--output", "-o", help="job log (default: "
                                                      "$MEDSCALE_HOME/slurm/%x-%j.out)"),
                 sbatch_arg: Optional[list[str]] = typer.Option(None, "--sbatch-arg", help="one more sbatch flag, "
                                                                "e.g. --sbatch-arg=--qos=high (repeatable)"),
                 dry_run: bool = typer.Option(False, "--dry-run", help="print the batch script, submit nothing"),
                 ) -> None:
    """Submit a recipe with sbatch: one accelerate launcher per node (slurm/common.sh), a checkpoint and a requeue
    when SLURM warns of the time limit; prints the SLURM job id."""
    from launcher.slurm import SlurmOptions, log_path, submit

    opts = SlurmOptions(nodes=nodes, gpus_per_node=gpus_per_node, procs_per_node=procs_per_node,
                        cpus_per_node=cpus_per_node, partition=partition, time=time, account=account, output=output,
                        sbatch_args=list(sbatch_arg or []))
    with user_errors():
        sub = submit(recipe, overrides or [], opts, dry_run=dry_run)
    if dry_run:
        typer.echo(sub.script, nl=False)
        return
    o = sub.options
    typer.echo(f"Submitted SLURM job {sub.job_id}: {recipe} on {o.nodes} node(s) x {o.procs_per_node} process(es)\n"
               f"  log    {log_path(o, sub.job_id)}\n"
               f"  watch  squeue -j {sub.job_id}; once it runs: medscale jobs show {o.job_name}")


# --------------------------------------------------------------------------- submit: ray

@submit_app.command("ray")
def submit_ray(recipe: str = typer.Argument(..., help="built-in recipe name or a YAML path"),
               overrides: Optional[list[str]] = OVERRIDES,
               address: Optional[str] = typer.Option(None, "--address", help="the cluster's dashboard (job server) "
                                                     "address (default: $RAY_ADDRESS, else http://127.0.0.1:8265)"),
               dry_run: bool = typer.Option(False, "--dry-run", help="print the equivalent `ray job submit` "
                                            "command (registry password redacted); submit nothing"),
               env: Optional[list[str]] = typer.Option(None, "--env", help="KEY=VALUE for the job's runtime env "
                                                       "(repeatable); MEDSCALE_HOME, MEDSCALE_REGISTRY_URL, "
                                                       "MEDSCALE_MODELS, MEDSCALE_DATA travel with the job when set"),
               max_failures: int = typer.Option(3, "--max-failures", min=0,
                                                help="worker-group restarts (from the newest verified checkpoint) "
                                                     "before Ray gives up"),
               storage_path: Optional[str] = typer.Option(None, "--storage-path", help="shared storage for Ray's "
                                                          "run dir (default: the recipe's train.output_dir)"),
               gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="one GPU per worker, or CPU workers "
                                                  "(default: GPUs when the cluster has any)"),
               cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", min=0),
               working_dir: Optional[Path] = typer.Option(None, "--working-dir", help="project to upload (default: "
                                                          "this directory if it holds launcher/ray_job.py)"),
               runtime_env: Optional[Path] = typer.Option(None, "--runtime-env", help="base runtime env YAML "
                                                          "(default: cluster/ray/runtime_env.yaml)"),
               wait: bool = typer.Option(False, "--wait", help="wait for the job, print its logs, exit with its "
                                         "driver's code")) -> None:
    """Submit a recipe as a Ray job: Ray Train workers (dist.num_processes x dist.num_machines) each run it."""
    from launcher import ray as ray_launcher
    from medscale.recipe import load_recipe

    with user_errors():
        r = load_recipe(recipe, overrides or [])
        opts = ray_launcher.RayOptions(max_failures=max_failures, storage_path=storage_path, use_gpu=gpu,
                                       cpus_per_worker=cpus_per_worker)
        sub = ray_launcher.prepare_submission(r, recipe, overrides or [], address=address, env=env or [],
                                              working_dir=working_dir, runtime_env_file=runtime_env, opts=opts)
    if dry_run:
        typer.echo(sub.command())
        return
    job_id = ray_launcher.submit(sub)
    typer.echo(f"submitted {r.name} to Ray at {sub.address}: job {job_id}")
    typer.echo(f"  follow it: ray job logs --address {sub.address} -f {job_id}")
    typer.echo(f"  the registry lists its attempts under Ray job {job_id}: medscale jobs show {r.name}")
    if wait:
        raise typer.Exit(ray_launcher.wait(sub.address, job_id))


# ---- plan ----

@app.command("plan", context_settings={"allow_extra_args": False})
def plan_cmd(recipe: str = typer.Argument(..., help="built-in recipe name or a YAML path"),
             overrides: Optional[list[str]] = OVERRIDES,
             gpu_mem: Optional[float] = typer.Option(None, "--gpu-mem", help="GiB per GPU (default: this GPU)"),
             gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs sharing the work (default: "
                                                "dist.num_processes x dist.num_machines)"),
             as_json: bool = typer.Option(False, "--json", help="one JSON object")) -> None:
    """Memory per GPU, component by component, and the token budget the recipe can afford; exit 2 if it cannot fit."""
    from medscale.errors import UserError
    from medscale.plan import CONTEXT_GIB, FRAGMENTATION, device_memory_gb, plan
    from medscale.recipe import load_recipe

    with user_errors():
        r = load_recipe(recipe, overrides or [])
        mem = gpu_mem if gpu_mem is not None else device_memory_gb()
        if mem is None:
            raise UserError("plan: no GPU here; give the card's memory, e.g. --gpu-mem 16")
        p = plan(r, mem, gpus or r.dist.num_processes * r.dist.num_machines)
    if as_json:
        _json(p.to_dict())
    else:
        s = p.shape
        typer.echo(f"{r.name}: {s.model_type} {s.total_params() / 1e9:.2f}B ({s.layers} layers, hidden {s.hidden}), "
                   f"{p.gpus} x {p.gpu_mem_gb:g} GiB, batching={p.batching}, "
                   f"recompute={'on' if p.recompute else 'off'}")
        for c in p.components:
            typer.echo(f"  {c.name:44s} {c.gib:7.2f} GiB  {c.note}")
        typer.echo(f"  {'total allocated':44s} {p.allocated_gib:7.2f} GiB  "
                   f"(reserved ~{p.reserved_gib:.2f} = x{FRAGMENTATION}; + ~{CONTEXT_GIB} GiB CUDA context)")
        typer.echo(f"  activations per token: {p.per_token_kib['recompute']:.0f} KiB with recompute, "
                   f"{p.per_token_kib['no_recompute']:.0f} KiB without "
                   f"({'recompute needed' if p.recompute_needed else 'recompute not needed at these tokens'})")
        typer.echo(f"  micro-batch: {p.tokens} tokens" +
                   (f" (packed row budget {p.token_budget})" if p.token_budget else ""))
        for prob in p.problems:
            typer.echo(f"error: {prob}", err=True)
    if p.problems:
        raise typer.Exit(2)

# ---- end plan ----


def main() -> None:
    app()


if __name__ == "__main__":
    main()
