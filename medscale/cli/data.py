"""`medscale data inspect | stats`: look at data before spending GPU hours on it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from medscale.cli.app import App

data_app = App(no_args_is_help=True, help="Look at data before spending GPU hours on it.")


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

    from medscale.data.sources import load_conversations
    from medscale.data.inspect import render_segments, segments

    color = sys.stdout.isatty()
    console = Console(highlight=False)
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

    s = compute(file, _tokenizer(tokenizer), max_len, batch_size, format,
                on_bad_record="skip" if skip_bad else "error", max_bad_fraction=1.0)
    if as_json:
        typer.echo(json.dumps(s, ensure_ascii=False))
        return
    for k, v in s.items():
        typer.echo(f"{k:20s} {v}")
