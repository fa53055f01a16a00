"""`medscale data inspect | stats`: look at data before spending GPU hours on it."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from medscale.cli.app import App

data_app = App(no_args_is_help=True, help="Look at data before spending GPU hours on it.")

TOKENIZER = typer.Option(None, help="tokenizer or model folder (default: medscale's toy demo tokenizer)")
FILE = typer.Argument(..., help="a data file or folder (JSONL, JSON, CSV or Parquet records)")
FORMAT = typer.Option("auto", "--format", help="record layout (default: detected)")


def _is_demo_data(file: str) -> bool:
    from medscale.data.sources import DataError, expand_sources
    from medscale.recipe import demo_data_dir

    demo = demo_data_dir().resolve()
    try:
        return all(f.resolve().is_relative_to(demo) for f in expand_sources(file))
    except DataError:
        return True  # the read that follows names the problem; no warning about a file that is not there


def _tokenizer(path: Optional[Path], file: str):
    """(tokenizer, how to name it): the given folder, or medscale's toy demo tokenizer (Qwen3-style template) with a
    warning when the data is not the demo data it was trained on: its token counts are not your model's."""
    from medscale.errors import UserError

    if path is None:
        from medscale.model.tiny import train_demo_tokenizer

        if not _is_demo_data(file):
            typer.echo("medscale: warning: no --tokenizer: token counts come from medscale's toy demo tokenizer (a "
                       "small BPE trained on the shipped demo records), not your model's; pass --tokenizer "
                       "MODEL_FOLDER for real counts", err=True)
        tok = train_demo_tokenizer()
        return tok, f"demo (medscale's toy BPE, {len(tok)} tokens; --tokenizer for your model's)"
    from medscale.preflight import tokenizer_dir_problem

    if (why := tokenizer_dir_problem(path)) is not None:
        raise UserError(f"--tokenizer {path}: {why}: give a model or tokenizer folder (tokenizer.json, "
                        f"tokenizer_config.json), or leave --tokenizer out for the toy demo tokenizer")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"--tokenizer {path}: not a tokenizer transformers can load "
                        f"({str(e).strip().splitlines()[0]})") from None
    if not tok.chat_template:
        raise UserError(f"--tokenizer {path}: the tokenizer has no chat_template; medscale renders every record "
                        f"with the model's own template: give the folder of the model you will train")
    return tok, f"{path} ({len(tok)} tokens)"


def _positive(option: str, value: int, example: int) -> None:
    if value < 1:
        from medscale.errors import UserError

        raise UserError(f"{option} must be at least 1, got {value} (e.g. {option} {example})")


def _format_name(counts: dict, forced: str) -> str:
    names = ", ".join(sorted(counts.get("formats", {}))) or "?"
    return f"{names} (detected)" if forced == "auto" else names


@data_app.command("inspect")
def data_inspect(file: str = FILE, tokenizer: Optional[Path] = TOKENIZER, format: str = FORMAT,
                 n: int = typer.Option(3, "--n", help="records to show"),
                 system_prompt: Optional[str] = typer.Option(None, help="system prompt to add")) -> None:
    """Show N records as the model sees them, the loss-carrying tokens marked."""
    from rich.console import Console

    from medscale.data.inspect import render_segments, segments
    from medscale.data.sources import load_conversations

    _positive("--n", n, 3)
    color = sys.stdout.isatty()
    console = Console(highlight=False)
    tok, tok_name = _tokenizer(tokenizer, file)
    counts: dict = {}
    convs = load_conversations(file, format, system_prompt=system_prompt, limit=n, counts=counts)
    typer.echo(f"{file}: format {_format_name(counts, format)}, tokenizer {tok_name}")
    for i, msgs in enumerate(convs):
        text = render_segments(segments(tok, msgs), color)
        header = f"--- record {i + 1} (loss on {'green' if color else '[[...]]'} text) ---"
        if color:
            console.print(f"[bold]{header}[/]")
            console.print(text)
        else:
            typer.echo(header)
            typer.echo(text)


@data_app.command("stats")
def data_stats(file: str = FILE, tokenizer: Optional[Path] = TOKENIZER, *,
               max_len: int = typer.Option(2048, "--max-len", help="tokens per sample (data.max_length)"),
               batch_size: int = typer.Option(4, "--batch-size", help="samples per micro-batch"),
               format: str = FORMAT, skip_bad: bool = typer.Option(False, help="skip bad records"),
               as_json: bool = typer.Option(False, "--json", help="one JSON object")) -> None:
    """Records, token mean/median/p90/max, over-length count, padding waste and packing efficiency."""
    from medscale.data.inspect import data_stats as compute

    _positive("--max-len", max_len, 2048)
    _positive("--batch-size", batch_size, 4)
    tok, tok_name = _tokenizer(tokenizer, file)
    counts: dict = {}
    s = compute(file, tok, max_len, batch_size, format, on_bad_record="skip" if skip_bad else "error",
                max_bad_fraction=1.0, counts=counts)
    s = {"file": s.pop("file"), "format": _format_name(counts, format), "tokenizer": tok_name, **s}
    if as_json:
        typer.echo(json.dumps(s, ensure_ascii=False))
        return
    for k, v in s.items():
        typer.echo(f"{k:20s} {v}")
