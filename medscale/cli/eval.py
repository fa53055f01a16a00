"""`medscale eval`: a thin wrapper over medscale.eval (compare and chat: medscale.cli.compare). MODEL is anything
medscale.jobs.resolve understands: a job name or id, an output dir, a checkpoint, an adapter or a model folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medscale.benchmarks import BUILTINS, MEDICAL_ZH
from medscale.cli.app import App
from medscale.dist import DistContext

app = App()

MODEL = typer.Argument(..., help="a job name or id, an output dir, a checkpoint-N folder, a LoRA adapter or a model "
                                  "folder")
ADAPTER = typer.Option(None, "--adapter", help="a LoRA adapter folder to apply on MODEL")
CHECKPOINT = typer.Option(None, "--checkpoint", help="use checkpoint-N of the run in MODEL")
RECIPE_OPT = typer.Option(None, "--recipe", help="take generation.* and eval.* defaults from this recipe")


def _gen_options():
    return dict(
        temperature=typer.Option(None, "--temperature", help="default: the recipe's generation.temperature (0.7)"),
        top_p=typer.Option(None, "--top-p", help="sample from the most likely tokens that together hold this share "
                                                  "of the probability (default: the recipe's generation.top_p)"),
        top_k=typer.Option(None, "--top-k", help="sample from this many most likely tokens (default: the recipe's "
                                                  "generation.top_k)"),
        max_new_tokens=typer.Option(None, "--max-new-tokens", help="the longest answer, in tokens (default: the "
                                                                    "recipe's generation.max_new_tokens)"),
        think=typer.Option(None, "--think/--no-think", help="Qwen3 thinking on/off (default: the template's)"),
        think_budget=typer.Option(None, "--think-budget", help="force </think> after this many tokens"))


_G = _gen_options()


@app.command("eval")
def eval_cmd(model: str = MODEL, *,
             bench: Optional[list[str]] = typer.Option(None, "--bench", help="benchmark name "
                                                       f"({', '.join(BUILTINS)}) or a file/folder; repeatable "
                                                       f"(default: the Chinese medical ones, {', '.join(MEDICAL_ZH)})"),
             adapter: Optional[str] = ADAPTER, checkpoint: Optional[int] = CHECKPOINT,
             against: Optional[str] = typer.Option(None, "--against", help="`base` (the model MODEL was tuned from) "
                                                   "or another model: score it on the same questions and give the "
                                                   "paired verdict"),
             shots: int = typer.Option(0, "--shots", min=0, max=10, help="worked examples from the dev split (a "
                                       "benchmark without one gives up N seeded questions to be the examples: they "
                                       "are not scored, and the result names them)"),
             mode: str = typer.Option("letter", "--mode", help="letter | option | generate"),
             limit: Optional[int] = typer.Option(None, "--limit", min=1, help="a fixed random subset of N questions "
                                                 "per benchmark"),
             seed: Optional[int] = typer.Option(None, "--seed", help="seed of the --limit subset and the shot "
                                                "examples (default 0) and, in generate mode, of the sampled answers "
                                                "(default: the recipe's, else 0)"),
             batch_size: int | None = typer.Option(
                 None, "--batch-size", min=1, help="questions scored together (default 8); generate mode: answers "
                                                   "generated together (default: as many as free GPU memory holds, "
                                                   "8 on CPU)"),
             data_dir: Optional[str] = typer.Option(None, "--data-dir", help="where built-in benchmarks live "
                                                    "(default: $MEDSCALE_EVAL_DATA, else ${MEDSCALE_DATA:-~/data}/eval)"),
             question_field: Optional[str] = typer.Option(None, "--question-field", help="field with the question"),
             options_field: Optional[str] = typer.Option(None, "--options-field", help="field with the options (dict "
                                                         "or list), or the option fields comma-separated"),
             answer_field: Optional[str] = typer.Option(None, "--answer-field", help="field with the answer"),
             skip_bad: Optional[bool] = typer.Option(None, "--skip-bad/--strict", help="score the usable questions, "
                                                     "each malformed one named with its reason / stop at the first "
                                                     "(default: skip in built-in sets, stop in your files)"),
             max_bad: Optional[float] = typer.Option(None, "--max-bad", min=0.0, max=1.0, help="the share of "
                                                     "malformed questions --skip-bad tolerates (default 0.01; "
                                                     "implies --skip-bad; a recipe's eval.benchmarks[].max_bad)"),
             dedupe: bool = typer.Option(False, "--dedupe", help="score a repeated question once (the first): "
                                         "without it, a repeat in your file is an error naming both places "
                                         "(a recipe's eval.benchmarks[].dedupe)"),
             system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="default: the run's "
                                                         "data.system_prompt, if MODEL is a medscale run"),
             train_data: Optional[list[str]] = typer.Option(None, "--train-data", help="training data for the "
                                                            "contamination check beside a 'better' verdict (default: "
                                                            "the sources in MODEL's recipe.resolved.yaml)"),
             recipe: Optional[str] = RECIPE_OPT,
             as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
             out: Optional[Path] = typer.Option(None, "--out", help="the evaluation job's folder: its record, the "
                                                "scores it keeps as they finish, eval.json and eval.md (default: "
                                                "$MEDSCALE_HOME/runs/<job name>)"),
             launcher: str = typer.Option("local", "--launcher", help="local (here; several processes with "
                                          "--processes) | slurm (sbatch) | ray (ray job submit)"),
             processes: int = typer.Option(1, "--processes", min=1, help="processes that score shards of the "
                                           "questions (per node)"),
             launch_opt: Optional[list[str]] = typer.Option(None, "--launch-opt", help="KEY=VALUE for the launcher, "
                                                            "as `medscale submit` takes it, e.g. partition=gpu, "
                                                            "time=4:00:00, address=http://head:8265 (repeatable)"),
             dry_run: bool = typer.Option(False, "--dry-run", help="print what would be submitted (the batch script "
                                          "for slurm, the `ray job submit` command for ray), run nothing"),
             parity: Optional[str] = typer.Option(None, "--parity", help="URL of a server of MODEL (`medscale serve`, "
                                                  "vLLM): ask the questions greedily in-process and through it, "
                                                  "report identical answers and choices, exit 1 above "
                                                  "--parity-threshold"),
             parity_threshold: float = typer.Option(0.02, "--parity-threshold", min=0.0, max=1.0, help="the largest "
                                                    "share of questions whose extracted choice may differ"),
             temperature: Optional[float] = _G["temperature"], top_p: Optional[float] = _G["top_p"],
             top_k: Optional[int] = _G["top_k"], max_new_tokens: Optional[int] = _G["max_new_tokens"],
             think: Optional[bool] = _G["think"], think_budget: Optional[int] = _G["think_budget"],
             n_samples: Optional[int] = typer.Option(None, "--n-samples", min=1, help="generate mode: answers per "
                                                     "question; the score is pass@1, their mean, with majority vote "
                                                     "and agreement beside it (default 1)"),
             greedy: bool = typer.Option(False, "--greedy", help="generate mode: greedy decoding, whatever the "
                                         "recipe or the model's generation_config.json say"),
             endpoint: Optional[str] = typer.Option(None, "--endpoint", help="generate mode: generate through this "
                                                    "OpenAI-compatible server (vLLM, SGLang, transformers serve, "
                                                    "medscale serve; URL of its /v1) instead of in-process"),
             api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="the environment variable "
                                             "holding the endpoint's API key (never a flag; not logged or stored)"),
             served_model: Optional[str] = typer.Option(None, "--served-model", help="the endpoint's model name "
                                                        "(default: the first it lists)"),
             concurrency: int = typer.Option(8, "--concurrency", min=1, help="endpoint requests in flight"),
             timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="seconds an endpoint request may take "
                                           "before it is retried (with backoff)"),
             retries: int = typer.Option(4, "--retries", min=0, help="retries of a failed endpoint request, "
                                         "waiting 1, 2, 4... s between them, before the evaluation stops (what "
                                         "finished is kept)")) -> None:
    """Multiple-choice benchmarks: accuracy with 95% intervals, per subject; with --against, the paired verdict. The
    evaluation is a job (kind eval): each run is an attempt in `medscale jobs show`, and the same evaluation asked
    again continues a stopped or killed one from the questions it had scored (generate mode: the answers it had
    generated). Generate mode samples as the flags say, then the --recipe's generation section, then the model's
    generation_config.json (R1-Distill: temperature 0.6, top-p 0.95); the result says where each value came from."""
    from medscale.errors import UserError
    from medscale.benchmarks import MEDICAL_ZH
    from medscale.eval.bench import BenchmarkError
    from medscale.eval.spec import new_eval_spec
    from medscale.paths import folder_problem
    from medscale.recipe import BenchmarkSource, GenerationSection, load_recipe

    if mode not in ("letter", "option", "generate"):
        raise BenchmarkError(f"--mode {mode}: use letter, option or generate")
    if out is not None and (problem := folder_problem(out)):
        raise UserError(f"--out {out}: {problem}")
    fields = {"question_field": question_field, "options_field": options_field, "answer_field": answer_field}
    refs = [BenchmarkSource(path=b, **fields) if any(fields.values()) else b for b in (bench or MEDICAL_ZH)]
    if parity is not None:  # served equals trained: no evaluation job, a comparison of two ways of asking
        from medscale.eval.parity import run_parity

        report = run_parity(model, refs, parity, adapter=adapter, checkpoint=checkpoint, mode=mode, shots=shots,
                            limit=limit, seed=seed or 0, data_dir=data_dir, skip_bad=skip_bad, max_bad=max_bad,
                            dedupe=dedupe, system_prompt=system_prompt, recipe_file=recipe,
                            max_new_tokens=max_new_tokens, think_budget=think_budget, enable_thinking=think,
                            batch_size=batch_size, threshold=parity_threshold)
        typer.echo(report.to_json() if as_json else report.to_markdown())
        return report.raise_if_failed()
    gen = load_recipe(recipe).generation if recipe else GenerationSection()
    if think is not None:
        gen = gen.model_copy(update={"enable_thinking": think})
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "n_samples": n_samples,
                "seed": seed if mode == "generate" else None, "max_new_tokens": max_new_tokens,
                "think_budget": think_budget}
    served = {"url": endpoint, "api_key_env": api_key_env, "served_model": served_model,
              "concurrency": concurrency, "timeout": timeout, "retries": retries} if endpoint else None
    spec = new_eval_spec(dict(
        model=model, adapter=adapter, checkpoint=checkpoint, against=against, benchmarks=refs, mode=mode, shots=shots,
        limit=limit, seed=seed or 0, data_dir=data_dir, batch_size=batch_size, skip_bad=skip_bad, max_bad=max_bad,
        dedupe=dedupe, system_prompt=system_prompt, train_data=train_data, generation=gen, sampling=sampling,
        greedy=greedy, endpoint=served, dist={"num_processes": processes}), out)
    if mode == "generate":  # the settings before any model loads, each with its source (kept in the result too)
        from medscale.jobs.resolve import resolve

        typer.echo(spec.sampling_settings(resolve(model, checkpoint=checkpoint, adapter=adapter).base).line(),
                   err=True)
    code = launch_eval(spec, launcher, _launch_options(launcher, launch_opt or []), dry_run)
    if code or dry_run or launcher != "local" or not DistContext.from_env().is_main:
        raise typer.Exit(code)  # several local processes: every one has the whole report, the first prints it
    from medscale.eval.result import EvalReport

    report = EvalReport.model_validate_json((Path(spec.train.output_dir) / "eval.json").read_text(encoding="utf-8"))
    typer.echo(report.to_json() if as_json else report.to_markdown())


def _launch_options(launcher_name: str, items: list[str]) -> dict:
    """--launch-opt KEY=VALUE as the launcher's options (medscale submit's flags, by their option names): counts
    as numbers, true/false as booleans, sbatch_args collected; a key the launcher does not take is one line."""
    from dataclasses import fields

    from medscale.errors import UserError

    if launcher_name == "slurm":
        from launcher.slurm import SlurmOptions

        known = {f.name for f in fields(SlurmOptions)} - {"job_name"}
    elif launcher_name == "ray":
        from launcher.ray import RayOptions

        known = {f.name for f in fields(RayOptions)}
    else:
        known = set()
    opts: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in known:
            raise UserError(f"--launch-opt {item!r}: expected KEY=VALUE with a key of the {launcher_name} launcher "
                            f"({', '.join(sorted(known)) or 'it takes none'})")
        typed = int(value) if value.isdigit() else {"true": True, "false": False}.get(value.lower(), value)
        if key == "sbatch_args":
            opts.setdefault(key, []).append(value)
        else:
            opts[key] = typed
    return opts


def launch_eval(spec, launcher_name: str, options: dict, dry_run: bool) -> int:
    """An evaluation job through the launcher protocol (prepare -> submit -> wait): the local one runs it here (in
    this process, or `accelerate launch` for several), SLURM and Ray queue it (their ids are its attempts')."""
    from launcher import launchers
    from medscale.errors import UserError
    from medscale.jobs.launch import LaunchRequest, entry_for

    if launcher_name not in ("local", "slurm", "ray"):
        raise UserError(f"--launcher {launcher_name}: use local, slurm or ray")
    backend, entry = launchers()[launcher_name], entry_for(spec.kind)
    if not dry_run:  # bad input is one line before anything is written (the launcher checks again where it runs)
        entry.check(spec, devices=False, paths_must_exist=launcher_name == "local").raise_if_failed()
    ref = str(spec.write())  # the job file every process reads
    plan = backend.prepare(LaunchRequest(spec, ref, [], entry, options))
    if dry_run:
        for f in plan.report.findings:
            if f.level != "info":
                typer.echo(f"medscale: pre-flight {f.level}: {f.message}", err=True)
        typer.echo(_what_would_run(launcher_name, plan), nl=False)
        return 0
    handle = backend.submit(plan)
    if launcher_name == "local":
        return backend.wait(handle)
    ids = getattr(handle, "job_id", None) or getattr(handle, "submission_id", "")
    typer.echo(f"Submitted {spec.name} to {launcher_name} ({ids}): its attempts in `medscale jobs show {spec.name}`; "
               f"the report lands in {spec.train.output_dir}/eval.md")
    return 0


def _what_would_run(launcher_name: str, plan) -> str:
    import shlex
    import sys

    if launcher_name == "slurm":
        return plan.script
    if launcher_name == "ray":
        return plan.submission.command() + "\n"
    cmd = plan.command or [sys.executable, "-m", "medscale.jobs", "eval", plan.request.ref]
    return shlex.join(cmd) + "\n"

