"""`medscale compare | chat`: thin wrappers over medscale.eval.compare and medscale.eval.chat. Both generate through
the engine with eval's sampling flags, in-process (a model reference: medscale.jobs.resolve) or through --endpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medscale.cli.app import AS_JSON, App, echo_json
from medscale.cli.eval import _G, ADAPTER, CHECKPOINT, RECIPE_OPT
from medscale.cli.judge import JUDGE, JUDGE_ENDPOINT, JUDGE_MAX_NEW_TOKENS, judge_compared

app = App()

GREEDY = typer.Option(False, "--greedy", help="greedy decoding: reproducible comparisons")
SEED = typer.Option(None, "--seed", help="with each question id, fixes each sampled answer (default 0)")


def _sampling_flags(temperature, top_p, top_k, seed, max_new_tokens, *, think_budget) -> dict:
    return {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed,
            "max_new_tokens": max_new_tokens, "think_budget": think_budget}


def _model_spec(spec: str):
    """[LABEL=]MODEL[+ADAPTER] -> (label, ModelRef)."""
    from medscale.jobs.resolve import resolve

    label, _, rest = spec.rpartition("=") if "=" in spec else ("", "", spec)
    ref, _, adapter = rest.partition("+")
    found = resolve(ref, adapter=adapter or None)
    return label or found.label, found


@app.command("compare")
def compare_cmd(models: Optional[list[str]] = typer.Argument(None, help="models to compare, each "
                                                             "[LABEL=]MODEL[+ADAPTER]: a model folder, a LoRA run's "
                                                             "output dir, or a base + an adapter"),
                *, endpoint: Optional[list[str]] = typer.Option(None, "--endpoint", help="an OpenAI-compatible server "
                                                             "(vLLM, `medscale serve`, a gateway) as one more model, "
                                                             "named by the model it serves; repeatable; the API key "
                                                             "from $OPENAI_API_KEY"),
                questions: Optional[str] = typer.Option(None, "--questions", help="question file (.jsonl/.json/.csv/"
                                                        ".txt; default: the ten medical questions medscale ships)"),
                limit: Optional[int] = typer.Option(None, "--limit", min=1, help="only the first N questions"),
                greedy: bool = GREEDY, seed: Optional[int] = SEED,
                batch_size: int | None = typer.Option(
                    None, "--batch-size", min=1,
                    help="questions answered together (default: as many as free GPU memory holds, 8 on CPU)"),
                system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="a system prompt before "
                                                            "every question (default: none)"),
                recipe: Optional[str] = RECIPE_OPT, as_json: bool = AS_JSON,
                out: Path = typer.Option(Path("compare-out"), "--out", help="writes compare.md, compare.html, "
                                         "compare.json here"),
                temperature: Optional[float] = _G["temperature"], top_p: Optional[float] = _G["top_p"],
                top_k: Optional[int] = _G["top_k"], max_new_tokens: Optional[int] = _G["max_new_tokens"],
                think: Optional[bool] = _G["think"], think_budget: Optional[int] = _G["think_budget"],
                judge: Optional[str] = JUDGE, judge_endpoint: Optional[str] = JUDGE_ENDPOINT,
                judge_max_new_tokens: int = JUDGE_MAX_NEW_TOKENS) -> None:
    """Models side by side: each answers the same questions; time, tokens, tokens/s and the answers, in a table and
    a page; with --judge, the second model judged against the first (medscale judge's protocol)."""
    from medscale.errors import UserError
    from medscale.eval.asking import sampling
    from medscale.eval.bench import load_questions
    from medscale.eval.compare import compare, output_paths, write_compare

    if not models and not endpoint:
        raise UserError("compare needs models: give MODEL arguments, --endpoint URL, or both")
    output_paths(out)  # a file in the way of --out: one line now, before any model loads
    qs = load_questions(questions)[:limit]
    specs = [_model_spec(m) for m in models or []]
    settings = sampling(_sampling_flags(temperature, top_p, top_k, seed, max_new_tokens, think_budget=think_budget),
                        recipe_file=recipe, greedy=greedy)
    result = compare(specs, qs, settings, endpoints=endpoint or [], enable_thinking=think, batch_size=batch_size,
                     system_prompt=system_prompt)
    paths = write_compare(result, out)
    judged = judge_compared(result, qs, judge=judge, judge_endpoint=judge_endpoint,
                            max_new_tokens=judge_max_new_tokens, out=out, greedy=greedy)
    if as_json:
        echo_json({**result.model_dump(mode="json"), "files": {k: str(v) for k, v in paths.items()},
                   **({"judgement": judged.model_dump(mode="json")} if judged else {})})
        return
    typer.echo(result.summary_markdown())
    typer.echo(f"\nanswers side by side: {paths['markdown']}\n                      {paths['html']}")
    if judged:
        typer.echo(f"\n{judged.verdict}\njudgement: {out / 'judge.md'}\n           {out / 'judge.html'}")


@app.command("chat")
def chat_cmd(model: Optional[str] = typer.Argument(None, help="a job name or id, an output dir, a checkpoint-N "
                                                   "folder, a LoRA adapter or a model folder (or --endpoint)"),
             *, endpoint: Optional[str] = typer.Option(None, "--endpoint", help="talk to an OpenAI-compatible server "
                                                    "instead (the API key from $OPENAI_API_KEY)"),
             adapter: Optional[str] = ADAPTER, checkpoint: Optional[int] = CHECKPOINT,
             prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="answer this one question and exit"),
             system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="default: the run's "
                                                         "data.system_prompt, if MODEL is a medscale run"),
             greedy: bool = GREEDY, seed: Optional[int] = SEED, recipe: Optional[str] = RECIPE_OPT,
             temperature: Optional[float] = _G["temperature"], top_p: Optional[float] = _G["top_p"],
             top_k: Optional[int] = _G["top_k"], max_new_tokens: Optional[int] = _G["max_new_tokens"],
             think: Optional[bool] = _G["think"], think_budget: Optional[int] = _G["think_budget"]) -> None:
    """Talk to a model (its adapter applied, its generation settings and think handling): one question with
    --prompt, else interactive."""
    from medscale.errors import UserError
    from medscale.eval.asking import local_backend, sampling
    from medscale.eval.chat import ChatSession, format_reply, interactive

    if (model is None) == (endpoint is None):
        raise UserError("chat needs one model: give MODEL or --endpoint URL")
    flags = _sampling_flags(temperature, top_p, top_k, seed, max_new_tokens, think_budget=think_budget)
    if endpoint is not None:
        from medscale.generate.endpoint import EndpointBackend

        ref, backend = None, EndpointBackend(endpoint, concurrency=1, enable_thinking=think)
    else:
        from medscale.jobs.resolve import resolve

        ref = resolve(model, checkpoint=checkpoint, adapter=adapter)
        backend = local_backend(ref, enable_thinking=think, batch_size=1)
    settings = sampling(flags, recipe_file=recipe, ref=ref, greedy=greedy).settings
    prompt_of_run = ref.system_prompt if ref is not None else None
    session = ChatSession(backend, settings, system_prompt if system_prompt is not None else prompt_of_run)
    if prompt is not None:
        typer.echo(format_reply(session.ask(prompt)))
    else:
        interactive(session, read=input, write=typer.echo)
