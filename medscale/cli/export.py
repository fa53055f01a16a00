"""`medscale export JOB`."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from medscale.cli.app import AS_JSON, App, echo_json, setup_logging
from medscale.errors import UserError

app = App()
SHARD_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*[KMGT]B\s*", re.IGNORECASE)


def check_shard_size(value: str) -> None:
    """What huggingface_hub's parse_size_to_int reads (decimal units): it reads --shard-size only when the merged
    weights are written, minutes after the model loaded."""
    size = SHARD_SIZE.fullmatch(value)
    if not size or not float(size.group(1)):
        raise UserError(f"--shard-size {value}: expected a size above zero with its unit, e.g. 5GB or 500MB (KB, MB, "
                        f"GB, TB)")


@app.command("export")
def export(job: str = typer.Argument(..., help="a job (id, name or output dir), a checkpoint folder or an adapter"),
           *, checkpoint: Optional[int] = typer.Option(None, "--checkpoint", help="export checkpoint-N (default: the "
                                                                               "final adapter)"),
           merge: bool = typer.Option(False, "--merge", help="fold the adapter into the base weights (a "
                                                             "transformers/vLLM folder)"),
           adapter_only: bool = typer.Option(False, "--adapter-only", help="the adapter alone, with tokenizer and "
                                                                           "generation config"),
           out: Optional[Path] = typer.Option(None, "--out", help="destination folder (must not exist; default: "
                                                                  "<output dir>/exports/<final|checkpoint-N>-...)"),
           prompts: int = typer.Option(8, "--prompts", min=1, max=10, help="prompts of the parity check (from the "
                                                                            "ten medical questions medscale ships)"),
           new_tokens: int = typer.Option(16, "--new-tokens", min=1, help="greedy tokens generated per prompt"),
           tolerance: Optional[float] = typer.Option(None, "--tolerance", help="top-2 logit margin above which a "
                                                                               "greedy choice must survive the export "
                                                                               "(default: the dtype's rounding allowance)"),
           shard_size: str = typer.Option("5GB", "--shard-size", help="largest safetensors shard, e.g. 5GB or "
                                                                                "500MB"),
           as_json: bool = AS_JSON) -> None:
    """Export a job for serving; a parity check (logits and greedy choices, fp32 on CPU) against base + adapter must
    pass before the folder appears."""
    from medscale.export.merge import ExportError, export as run_export

    if merge == adapter_only:
        raise ExportError("say what to export: --merge (one model folder) or --adapter-only")
    check_shard_size(shard_size)
    setup_logging()
    result = run_export(job, merge=merge, checkpoint=checkpoint, out=out, prompts=prompts, new_tokens=new_tokens,
                        tolerance=tolerance, shard_size=shard_size)
    if as_json:
        echo_json(result.to_dict())
        return
    p = result.parity
    typer.echo(f"medscale: exported {result.source} ({result.mode}, {result.dtype}) to {result.out}\n"
               f"  {p.line()}")
    if p.nf4:
        typer.echo(f"  NF4 (what the QLoRA job trained on) vs this bf16 export: {p.nf4}")
    typer.echo(f"  files: {', '.join(result.files)} ({result.size_bytes / 2**20:.1f} MB)")
