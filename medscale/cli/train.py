"""`medscale recipes | recipe show | recipe schema | train | demo | check | tiny-model`."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from medscale.cli.app import AS_JSON, OVERRIDES, App, echo_json, setup_logging
from medscale.dist import DistContext

app = App()
recipe_app = App(no_args_is_help=True, help="Inspect recipes.")
RECIPE = typer.Argument(..., help="built-in recipe name or a YAML path")


@app.command("recipes")
def recipes(as_json: bool = AS_JSON) -> None:
    """List the built-in recipes, one line each."""
    from medscale.recipe import builtin_names, load_recipe

    described = {name: load_recipe(name).description for name in builtin_names()}
    if as_json:
        echo_json([{"name": name, "description": d} for name, d in described.items()])
        return
    for name, description in described.items():
        typer.echo(f"{name:32s} {description}")


@recipe_app.command("show")
def recipe_show(name: str = RECIPE, overrides: Optional[list[str]] = OVERRIDES,
                as_json: bool = typer.Option(False, "--json", help="one JSON object: the fingerprint and the "
                                                                "resolved recipe")) -> None:
    """Print the resolved recipe (built-in name or YAML path, plus overrides) as YAML."""
    from medscale.recipe import load_recipe

    r = load_recipe(name, overrides or [])
    if as_json:
        echo_json({"fingerprint": r.fingerprint(), "recipe": r.model_dump(mode="json")})
        return
    typer.echo(f"# fingerprint: {r.fingerprint()}")
    typer.echo(r.to_yaml(), nl=False)


@recipe_app.command("schema")
def recipe_schema(as_json: bool = typer.Option(False, "--json", help="the JSON Schema instead of the table")) -> None:
    """Every recipe key: section, key, type, default and what it does (a table; the JSON Schema with --json)."""
    from medscale.recipe import recipe_keys
    from medscale.recipe import recipe_schema as schema

    if as_json:
        typer.echo(json.dumps(schema(), indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(header_style="bold")
    table.add_column("section", no_wrap=True)
    table.add_column("key", no_wrap=True)
    table.add_column("type", overflow="fold", max_width=30)
    table.add_column("default", overflow="fold", max_width=24)
    table.add_column("description", overflow="fold", min_width=40)
    for row in recipe_keys():
        style = "bold" if not row.key else None  # a section's own row
        table.add_row(row.section, row.key, row.type, row.default, row.description or "", style=style)
    Console(highlight=False, width=None if sys.stdout.isatty() else 180).print(table)  # piped: wide, for less/grep


def print_summary(title: str, s) -> None:
    """The end-of-run lines a person reads: did the loss fall, was it better than the base, what happened to the
    data, where is it."""
    from medscale.data.pipeline import truncation_note

    p = s.paths
    loss = (f"{s.loss_first:.3f} -> {s.loss_last:.3f}" if s.loss_first is not None and s.loss_last is not None
            else "(not logged)")
    lines = ["", title,
             f"  loss          {loss} over {s.global_step} steps on {s.world_size} process(es)",
             f"  verdict       {s.verdict}"]
    lines += [f"  benchmark     {b.said}" for b in s.benchmarks.values()]
    if s.control is not None:
        lines.append(f"  forgetting    {s.control.line}")
    for split, stats in s.data.splits():  # records data.max_length / data.truncation dropped or cut: said, not hidden
        if (note := truncation_note(stats.model_dump())) is not None:
            lines.append(f"  data          {split}: {note}")
    if s.tokens_per_s is not None:
        lines.append(f"  throughput    {s.tokens_per_s:.0f} tokens/s, {s.samples_per_s or 0:.1f} samples/s")
    if s.finished_from_checkpoint:
        lines.append(f"  finished from {s.finished_from_checkpoint} (the run was stopped after its last save)")
    lines += [f"  adapter       {p.adapter}/adapter_model.safetensors",
              f"  loss curve    {p.loss_plot}",
              f"  logs          {p.trainer_state}" + (f"  and SwanLab (offline) {p.swanlab}" if p.swanlab else ""),
              f"  run record    {p.adapter}/run_summary.json"]
    typer.echo("\n".join(lines))


def launch_here(recipe_ref: str, overrides: list[str], entry_kind: str = "train"):
    """Validate, pre-flight and run a recipe with the local launcher: (the exit code of its attempt, the recipe)."""
    from launcher.local import LocalLauncher
    from medscale.jobs.launch import LaunchRequest, entry_for
    from medscale.recipe import load_recipe

    launcher = LocalLauncher()
    recipe = load_recipe(recipe_ref, overrides)
    request = LaunchRequest(recipe, recipe_ref, overrides, entry_for(entry_kind))
    return launcher.wait(launcher.submit(launcher.prepare(request))), recipe


RESTART = typer.Option(False, "--restart", help="start over from step 0 (train.resume=never) where no checkpoint of "
                       "the job verifies any more; those set aside stay for `medscale jobs gc`")
CHECKPOINT = typer.Option(None, "--checkpoint", metavar="N", help="resume from checkpoint-N of the output dir (a "
                          "verified step), setting the newer verified ones aside, e.g. when the newest holds NaN "
                          "weights")


def _start_point(recipe_ref: str, overrides: list[str], restart: bool, checkpoint: int | None) -> list[str]:
    """--restart / --checkpoint N as the train.resume override they stand for (checked before anything starts)."""
    if restart and checkpoint is not None:
        from medscale.errors import UserError

        raise UserError("--restart starts from step 0 and --checkpoint N from step N: give one of them")
    if restart:
        return [*overrides, "train.resume=never"]
    if checkpoint is None:
        return overrides
    from medscale.jobs.resume import roll_back
    from medscale.recipe import load_recipe

    return [*overrides, roll_back(load_recipe(recipe_ref, overrides), checkpoint)]


def _run_and_report(recipe_ref: str, overrides: list[str], title: str | None = None, restart: bool = False,
                    checkpoint: int | None = None) -> None:
    from medscale.jobs.record import RunSummary

    setup_logging()
    code, recipe = launch_here(recipe_ref, _start_point(recipe_ref, overrides, restart, checkpoint))
    summary = RunSummary.load(recipe.train.output_dir) if code == 0 else None
    if summary is not None:
        print_summary(title or f"medscale: {summary.recipe} finished", summary)
    raise typer.Exit(code)


@app.command("train")
def train(recipe: str = RECIPE,
          overrides: Optional[list[str]] = OVERRIDES, restart: bool = RESTART,
          checkpoint: Optional[int] = CHECKPOINT) -> None:
    """Train a recipe here: in this process for one process, else through `accelerate launch`. A rerun continues
    from the newest verified checkpoint."""
    _run_and_report(recipe, overrides or [], restart=restart, checkpoint=checkpoint)


@app.command("demo")
def demo(overrides: Optional[list[str]] = OVERRIDES, restart: bool = RESTART,
         checkpoint: Optional[int] = CHECKPOINT) -> None:
    """CPU demo: build a tiny Qwen3, fine-tune it on the shipped medical data, report where everything is."""
    _run_and_report("tiny-demo", overrides or [], "medscale demo finished", restart, checkpoint)


@app.command("check")
def check(recipe: str = RECIPE, overrides: Optional[list[str]] = OVERRIDES,
          as_json: bool = typer.Option(False, "--json", help="one JSON object: ok and every finding (level, topic, "
                                                          "message)")) -> None:
    """Pre-flight alone: every problem with the recipe, model folder, data, devices, output dir and registry at
    once, without starting anything (exit 0: it can run here; 2: it cannot)."""
    from launcher.local import accelerate_config
    from medscale.preflight import check as run_check
    from medscale.recipe import RecipeError, load_recipe

    r = load_recipe(recipe, overrides or [])
    report = run_check(r, devices=True, tokenize=True)
    world = DistContext.planned(r.dist).world_size
    if world > 1:  # what the local launcher would start
        try:
            report.info("dist", f"{world} processes through accelerate "
                                f"({accelerate_config(r)})")
        except RecipeError as e:
            report.error("dist", str(e))
    if as_json:
        echo_json({"recipe": recipe, "ok": not report.errors,
                   "findings": [{"level": f.level, "topic": f.topic, "message": f.message} for f in report.findings]})
        raise typer.Exit(2 if report.errors else 0)
    marks = {"error": "✗", "warning": "!", "info": "·"}
    for f in report.findings:
        typer.echo(f"{marks[f.level]} {f.topic:9s} {f.message}", err=f.level != "info")
    verdict = f"{len(report.errors)} problem(s): fix them and run `medscale check` again" if report.errors else "ok"
    typer.echo(f"medscale check {recipe}: {verdict}")
    raise typer.Exit(2 if report.errors else 0)


@app.command("tiny-model")
def tiny_model(out: Path = typer.Argument(..., help="folder to write the model into"), layers: int = typer.Option(2, help="decoder layers"),
               hidden: int = typer.Option(64, help="hidden size"),
               tokenizer: Optional[Path] = typer.Option(None, help="copy this tokenizer (e.g. a real Qwen3 one)")) -> None:
    """Write a tiny random Qwen3 checkpoint (safetensors) + tokenizer for demos and tests."""
    from medscale.model.tiny import build_tiny_model

    path = build_tiny_model(out, layers=layers, hidden=hidden, tokenizer=str(tokenizer) if tokenizer else None)
    typer.echo(f"tiny Qwen3 written to {path}")


@app.command("plan")
def plan_cmd(recipe: str = RECIPE,
             overrides: Optional[list[str]] = OVERRIDES,
             gpu_mem: Optional[float] = typer.Option(None, "--gpu-mem", help="GiB per GPU (default: this GPU)"),
             gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs sharing the work (default: "
                                                "dist.num_processes x dist.num_machines)"),
             as_json: bool = typer.Option(False, "--json", help="one JSON object")) -> None:
    """Memory per GPU, component by component, and the token budget the recipe can afford; exit 2 if it cannot fit."""
    from medscale.errors import UserError
    from medscale.plan import CONTEXT_GIB, FRAGMENTATION, device_memory_gb, plan
    from medscale.recipe import load_recipe

    r = load_recipe(recipe, overrides or [])
    mem = gpu_mem if gpu_mem is not None else device_memory_gb()
    if mem is None:
        raise UserError("plan: no GPU here; give the card's memory, e.g. --gpu-mem 16")
    p = plan(r, mem, gpus or DistContext.planned(r.dist).world_size)
    if as_json:
        echo_json(p.to_dict())
    else:
        s = p.shape
        typer.echo(f"{r.name}: {s.model_type} {s.total_params() / 1e9:.2f}B ({s.layers} layers, hidden {s.hidden}), "
                   f"{p.gpus} x {p.gpu_mem_gb:g} GiB, batching={p.batching}, "
                   f"recompute {p.recompute_layers}/{s.layers} layers")
        typer.echo(f"  shapes from {p.shape_source}")
        for c in p.components:
            typer.echo(f"  {c.name:44s} {c.gib:7.2f} GiB  {c.note}")
        typer.echo(f"  {'total allocated':44s} {p.allocated_gib:7.2f} GiB  "
                   f"(reserved ~{p.reserved_gib:.2f} = x{FRAGMENTATION}; + ~{CONTEXT_GIB} GiB CUDA context)")
        typer.echo(f"  activations per token: {p.per_token_kib['recompute']:.0f} KiB with recompute, "
                   f"{p.per_token_kib['no_recompute']:.0f} KiB without "
                   f"({'recompute needed' if p.recompute_needed else 'recompute not needed at these tokens'})")
        typer.echo(f"  micro-batch: {p.tokens} tokens" +
                   (f" (packed row budget {p.token_budget})" if p.token_budget else ""))
        typer.echo(f"  {p.batch_note}")
        for prob in p.problems:
            typer.echo(f"error: {prob}", err=True)
    if p.problems:
        raise typer.Exit(2)
