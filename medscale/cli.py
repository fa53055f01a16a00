"""The `medscale` command: thin wrappers over library functions."""
from __future__ import annotations

import contextlib
import json
import logging
import os
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


# ---- evaluation ----------------------------------------------------------------------------------------------
# eval, compare and chat: thin wrappers over medscale.eval. MODEL is resolved by medscale.eval.resolve.resolve_model
# (a model folder, or a LoRA run's output dir / checkpoint-N folder).

MODEL = typer.Argument(..., help="a model folder, or the output dir / checkpoint-N folder of a LoRA run")
ADAPTER = typer.Option(None, "--adapter", help="a LoRA adapter folder to apply on MODEL")
CHECKPOINT = typer.Option(None, "--checkpoint", help="use checkpoint-N of the run in MODEL")
RECIPE_OPT = typer.Option(None, "--recipe", help="take generation.* and eval.* defaults from this recipe")


def _generation(recipe: Optional[str], temperature, top_p, top_k, max_new_tokens, think: Optional[bool],
                think_budget):
    """The recipe's generation section (or the defaults) with the command-line values on top, re-validated."""
    from medscale.recipe import GenerationSection, RecipeError, load_recipe

    base = load_recipe(recipe).generation if recipe else GenerationSection()
    given = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "max_new_tokens": max_new_tokens,
             "enable_thinking": think, "think_budget": think_budget}
    try:
        return GenerationSection.model_validate({**base.model_dump(), **{k: v for k, v in given.items()
                                                                         if v is not None}})
    except ValueError as e:
        raise RecipeError(f"generation options: {e}") from None


def _gen_options():
    return dict(
        temperature=typer.Option(None, "--temperature", help="default: the recipe's generation.temperature (0.7)"),
        top_p=typer.Option(None, "--top-p"), top_k=typer.Option(None, "--top-k"),
        max_new_tokens=typer.Option(None, "--max-new-tokens"),
        think=typer.Option(None, "--think/--no-think", help="Qwen3 thinking on/off (default: the template's)"),
        think_budget=typer.Option(None, "--think-budget", help="force </think> after this many tokens"))


_G = _gen_options()


@app.command("eval")
def eval_cmd(model: str = MODEL,
             bench: Optional[list[str]] = typer.Option(None, "--bench", help="benchmark name (cmmlu-med, ceval-med, "
                                                       "medqa-zh, cmexam, medqa-en, mmlu-med) or a file/folder; "
                                                       "repeatable (default: the four Chinese medical ones)"),
             adapter: Optional[str] = ADAPTER, checkpoint: Optional[int] = CHECKPOINT,
             against: Optional[str] = typer.Option(None, "--against", help="another model folder (e.g. the base): "
                                                   "score it on the same questions and give the paired verdict"),
             shots: int = typer.Option(0, "--shots", min=0, max=10, help="worked examples from the dev split"),
             mode: str = typer.Option("letter", "--mode", help="letter | option | generate"),
             limit: Optional[int] = typer.Option(None, "--limit", min=1, help="a fixed random subset of N questions "
                                                 "per benchmark"),
             seed: int = typer.Option(0, "--seed", help="seed of the --limit subset"),
             batch_size: int = typer.Option(8, "--batch-size", min=1),
             data_dir: Optional[str] = typer.Option(None, "--data-dir", help="where built-in benchmarks live "
                                                    "(default: $MEDSCALE_EVAL_DATA, else ${MEDSCALE_DATA:-~/data}/eval)"),
             question_field: Optional[str] = typer.Option(None, "--question-field", help="field with the question"),
             options_field: Optional[str] = typer.Option(None, "--options-field", help="field with the options (dict "
                                                         "or list), or the option fields comma-separated"),
             answer_field: Optional[str] = typer.Option(None, "--answer-field", help="field with the answer"),
             skip_bad: Optional[bool] = typer.Option(None, "--skip-bad/--strict", help="count malformed questions as "
                                                     "skipped / stop at the first (default: skip in built-in sets, "
                                                     "stop in your files)"),
             system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="default: the run's "
                                                         "data.system_prompt, if MODEL is a medscale run"),
             train_data: Optional[list[str]] = typer.Option(None, "--train-data", help="training data for the "
                                                            "contamination check beside a 'better' verdict (default: "
                                                            "the sources in MODEL's recipe.resolved.yaml)"),
             recipe: Optional[str] = RECIPE_OPT,
             as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
             out: Optional[Path] = typer.Option(None, "--out", help="also write eval.json and eval.md here"),
             temperature: Optional[float] = _G["temperature"], top_p: Optional[float] = _G["top_p"],
             top_k: Optional[int] = _G["top_k"], max_new_tokens: Optional[int] = _G["max_new_tokens"],
             think: Optional[bool] = _G["think"], think_budget: Optional[int] = _G["think_budget"]) -> None:
    """Multiple-choice benchmarks: accuracy with 95% intervals, per subject; with --against, the paired verdict."""
    from medscale.eval.bench import MEDICAL_ZH, BenchmarkError
    from medscale.eval.run import run_eval
    from medscale.recipe import BenchmarkSource

    with user_errors():
        if mode not in ("letter", "option", "generate"):
            raise BenchmarkError(f"--mode {mode}: use letter, option or generate")
        fields = {"question_field": question_field, "options_field": options_field, "answer_field": answer_field}
        refs = [BenchmarkSource(path=b, **fields) if any(fields.values()) else b for b in (bench or MEDICAL_ZH)]
        gen = _generation(recipe, temperature, top_p, top_k, max_new_tokens, think, think_budget)
        report = run_eval(model, refs, adapter, checkpoint, against, mode, shots, limit, seed, data_dir, batch_size,
                          gen, skip_bad, system_prompt, train_data=train_data)
    if int(os.environ.get("RANK", "0")) != 0:  # launched with several processes: every one has the whole report
        return
    if out is not None:
        from medscale.train.checkpoint import write_text_atomic

        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "eval.json", report.to_json(indent=1))
        write_text_atomic(out / "eval.md", report.to_markdown())
    typer.echo(report.to_json() if as_json else report.to_markdown())


def _model_spec(spec: str):
    """[LABEL=]MODEL[+ADAPTER] -> (label, base, adapter, meta)."""
    from medscale.eval.resolve import resolve_model

    label, _, rest = spec.rpartition("=") if "=" in spec else ("", "", spec)
    ref, _, adapter = rest.partition("+")
    base, adapter_path, meta = resolve_model(ref, adapter or None)
    return label or meta["label"], base, adapter_path, meta


@app.command("compare")
def compare_cmd(models: list[str] = typer.Argument(..., help="models to compare, each [LABEL=]MODEL[+ADAPTER]: a "
                                                   "model folder, a LoRA run's output dir, or a base + an adapter"),
                questions: Optional[str] = typer.Option(None, "--questions", help="question file (.jsonl/.json/.csv/"
                                                        ".txt; default: seed 003's ten questions)"),
                limit: Optional[int] = typer.Option(None, "--limit", min=1, help="only the first N questions"),
                greedy: bool = typer.Option(False, "--greedy", help="greedy decoding: reproducible comparisons"),
                batch_size: int = typer.Option(8, "--batch-size", min=1),
                seed: int = typer.Option(0, "--seed"),
                system_prompt: Optional[str] = typer.Option(None, "--system-prompt"),
                recipe: Optional[str] = RECIPE_OPT,
                out: Path = typer.Option(Path("compare-out"), "--out", help="writes compare.md, compare.html, "
                                         "compare.json here"),
                temperature: Optional[float] = _G["temperature"], top_p: Optional[float] = _G["top_p"],
                top_k: Optional[int] = _G["top_k"], max_new_tokens: Optional[int] = _G["max_new_tokens"],
                think: Optional[bool] = _G["think"], think_budget: Optional[int] = _G["think_budget"]) -> None:
    """Seed 003's table: each model answers the same questions; time, tokens, tokens/s, answers side by side."""
    from medscale.eval.bench import load_questions
    from medscale.eval.compare import compare, write_compare

    with user_errors():
        qs = load_questions(questions)[:limit]
        specs = [_model_spec(m) for m in models]
        gen = _generation(recipe, temperature, top_p, top_k, max_new_tokens, think, think_budget)
        result = compare(specs, qs, gen, greedy, batch_size, seed, system_prompt=system_prompt)
    paths = write_compare(result, out)
    typer.echo(result.summary_markdown())
    typer.echo(f"\nanswers side by side: {paths['markdown']}\n                      {paths['html']}")


@app.command("chat")
def chat_cmd(model: str = MODEL, adapter: Optional[str] = ADAPTER, checkpoint: Optional[int] = CHECKPOINT,
             prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="answer this one question and exit"),
             system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="default: the run's "
                                                         "data.system_prompt, if MODEL is a medscale run"),
             greedy: bool = typer.Option(False, "--greedy"), seed: int = typer.Option(0, "--seed"),
             recipe: Optional[str] = RECIPE_OPT,
             temperature: Optional[float] = _G["temperature"], top_p: Optional[float] = _G["top_p"],
             top_k: Optional[int] = _G["top_k"], max_new_tokens: Optional[int] = _G["max_new_tokens"],
             think: Optional[bool] = _G["think"], think_budget: Optional[int] = _G["think_budget"]) -> None:
    """Talk to a model (its adapter applied): one question with --prompt, else interactive."""
    from medscale.eval.chat import ChatSession, format_reply, interactive
    from medscale.eval.resolve import resolve_model
    from medscale.model.infer import load_for_inference

    with user_errors():
        gen = _generation(recipe, temperature, top_p, top_k, max_new_tokens, think, think_budget)
        base, adapter_path, meta = resolve_model(model, adapter, checkpoint)
        llm, tok = load_for_inference(base, adapter_path, trust_remote_code=meta["trust_remote_code"])
    session = ChatSession(llm, tok, gen, system_prompt if system_prompt is not None else meta["system_prompt"],
                          greedy, seed)
    if prompt is not None:
        typer.echo(format_reply(session.ask(prompt)))
    else:
        interactive(session, read=input, write=typer.echo)

# ---- end of evaluation ---------------------------------------------------------------------------------------


def main() -> None:
    app()


if __name__ == "__main__":
    main()
