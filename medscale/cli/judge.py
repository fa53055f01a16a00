"""`medscale judge A B --questions FILE_OR_NAME`: a judge model compares two sides' open answers (both orders, the
rubric of medscale.judge.rubric), or scores each side (`--mode score`), or is itself checked on labelled pairs
(`--calibrate`). The judgement is a job (kind judge): a rerun of the same one continues from what it generated."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medscale.benchmarks import OPEN_SETS
from medscale.cli.app import App
from medscale.cli.eval import _G

app = App()
JUDGE = typer.Option(None, "--judge", help="the judge: a job or a model folder")
JUDGE_ENDPOINT = typer.Option(None, "--judge-endpoint", help="the judge: an OpenAI-compatible server (its key from "
                                                             "$OPENAI_API_KEY, or judge's --api-key-env)")
JUDGE_MAX_NEW_TOKENS = typer.Option(512, "--judge-max-new-tokens", min=1, help="the longest verdict the judge may "
                                                                              "write, in tokens")


def judge_ref(judge: Optional[str], judge_endpoint: Optional[str], no_judge: bool) -> Optional[str]:
    """The one judge asked for (a model or job, or an endpoint), None with --no-judge; anything else is one line."""
    from medscale.errors import UserError

    given = [x for x in (judge, judge_endpoint) if x]
    if len(given) > 1 or (given and no_judge):
        raise UserError("pass one of --judge MODEL_OR_JOB, --judge-endpoint URL or --no-judge")
    if not given and not no_judge:
        raise UserError("no judge: pass --judge MODEL_OR_JOB or --judge-endpoint URL (its key from --api-key-env), "
                        "or --no-judge for the degeneration signals alone")
    if judge_endpoint and not judge_endpoint.startswith(("http://", "https://")):
        raise UserError(f"--judge-endpoint {judge_endpoint}: an http(s) URL of an OpenAI-compatible server")
    return given[0] if given else None


@app.command("judge")
def judge_cmd(models: Optional[list[str]] = typer.Argument(None, help="A B: jobs, model folders, endpoints "
                                                           "(http...) or answer files (JSONL: id, question, answer, "
                                                           "optional reference); --mode score takes one or more"),
              *, questions: Optional[str] = typer.Option(None, "--questions", help="a question file, or a built-in "
                                                      f"open set ({', '.join(OPEN_SETS)}); default: the answer "
                                                      "file's questions"),
              judge: Optional[str] = JUDGE, judge_endpoint: Optional[str] = JUDGE_ENDPOINT,
              no_judge: bool = typer.Option(False, "--no-judge", help="only what needs no judge: the "
                                            "degeneration signals"),
              mode: str = typer.Option("pairwise", "--mode", help="pairwise (A against B, both orders) | score "
                                       "(1-10 per criterion, each side alone)"),
              calibrate: bool = typer.Option(False, "--calibrate", help="check the judge on labelled pairs: its "
                                             "agreement with the labels and its position consistency"),
              labels: Optional[str] = typer.Option(None, "--labels", help="--calibrate's pairs (JSONL: question, "
                                                   "response_chosen, response_rejected; default: MedicalGPT's 100 "
                                                   "medical pairs, shipped)"),
              rubric_language: str = typer.Option("auto", "--rubric-language", help="auto (the question's) | zh | en"),
              limit: Optional[int] = typer.Option(None, "--limit", min=1, help="only the first N questions"),
              data_dir: Optional[str] = typer.Option(None, "--data-dir", help="where cmb-clin and huatuo100 live "
                                                     "(default: the eval data dir)"),
              api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="the environment variable "
                                              "holding the endpoints' key"),
              judge_max_new_tokens: int = JUDGE_MAX_NEW_TOKENS,
              judge_think_budget: Optional[int] = typer.Option(None, "--judge-think-budget", min=1, help="force "
                                                             "the judge's </think> after this many tokens"),
              greedy: bool = typer.Option(False, "--greedy", help="greedy decoding for the sides and the judge"),
              seed: int = typer.Option(0, "--seed", help="with each question id, fixes each sampled answer"),
              batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="requests per padded "
                                                       "batch (default: planned from free GPU memory; 8 on CPU)"),
              system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="a system prompt before "
                                                          "every question (default: none)"),
              as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
              out: Optional[Path] = typer.Option(None, "--out", help="the judge job's folder: its record, the "
                                                 "generations, judge.json / .md / .html (default: "
                                                 "$MEDSCALE_HOME/runs/<job name>)"),
              temperature: Optional[float] = _G["temperature"], top_p: Optional[float] = _G["top_p"],
              top_k: Optional[int] = _G["top_k"], max_new_tokens: Optional[int] = _G["max_new_tokens"],
              think: Optional[bool] = _G["think"], think_budget: Optional[int] = _G["think_budget"]) -> None:
    """Judge open answers: B against A (win / tie / loss, per criterion, with a paired bootstrap interval and the
    verdict), scores per side, or the judge's own calibration."""
    from medscale.cli.eval import launch_eval
    from medscale.errors import UserError
    from medscale.judge.spec import new_judge_spec, read_judgement

    ref = judge_ref(judge, judge_endpoint, no_judge)
    models = list(models or [])
    if calibrate and (models or ref is None):
        raise UserError("--calibrate checks one judge on labelled pairs: pass --judge or --judge-endpoint, no A B")
    if not calibrate and mode == "pairwise" and len(models) != 2:
        raise UserError(f"pairwise judging takes two sides, A and B (got {len(models)}); --mode score takes more")
    if not calibrate and not models:
        raise UserError("nothing to judge: pass the sides (jobs, model folders, endpoints or answer files)")
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "max_new_tokens": max_new_tokens,
                "think_budget": think_budget, "seed": seed}
    spec = new_judge_spec(dict(
        models=models, questions=questions, mode=mode, judge=ref, calibrate=calibrate, labels=labels, limit=limit,
        data_dir=data_dir, rubric_language=rubric_language, greedy=greedy, enable_thinking=think,
        batch_size=batch_size, system_prompt=system_prompt, api_key_env=api_key_env,
        sampling={k: v for k, v in sampling.items() if v is not None},
        judge_sampling={"max_new_tokens": judge_max_new_tokens, "seed": seed} |
                       ({"think_budget": judge_think_budget} if judge_think_budget else {})), out)
    code = launch_eval(spec, "local", {}, dry_run=False)
    if code:
        raise typer.Exit(code)
    folder = Path(spec.train.output_dir)
    result = read_judgement(folder)
    if as_json:
        typer.echo(result.to_json())
        return
    typer.echo(result.to_markdown())
    typer.echo(f"judgement: {folder / 'judge.md'}\n           {folder / 'judge.html'}")


def judge_compared(result, questions, *, judge: Optional[str], judge_endpoint: Optional[str], max_new_tokens: int,
                   out: Path, greedy: bool):
    """`compare --judge`: its second model judged against its first (None without a judge); judge.json / .md /
    .html beside compare's files."""
    from medscale.judge.run import judge_compared as judged
    from medscale.judge.sources import Asking
    from medscale.judge.spec import write_judgement

    if not (judge or judge_endpoint):
        return None
    ref = judge_ref(judge, judge_endpoint, no_judge=False)
    judgement = judged(result, questions, judge=ref, judge_asking=Asking(cli={"max_new_tokens": max_new_tokens},
                                                                          greedy=greedy), cache_dir=out)
    write_judgement(judgement, out)
    return judgement
