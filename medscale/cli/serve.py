"""`medscale serve MODEL_OR_JOB`: an OpenAI-compatible server for a job's model (base + adapter, through the shared
loader) or a model folder, with the chat template, think handling, system prompt and generation settings the job
trained with. vLLM when it is installed; otherwise medscale's own server (medscale.generate.serve), because
`transformers serve` loads with its own from_pretrained (not training's 4-bit config), takes sampling defaults only from
a generation_config.json, cannot add the job's system prompt, and needs its serving extras (fastapi, uvicorn)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from medscale.cli.app import App
from medscale.cli.eval import ADAPTER, CHECKPOINT, MODEL
from medscale.generate.serve import BATCH_WAIT_S

app = App()


def served_meta(ref, thinking: bool | None) -> dict:
    """What /v1/models says of the served model: enough to tell which job, checkpoint and think handling it is."""
    return {"base": str(ref.base), "adapter": str(ref.adapter) if ref.adapter else None, "job": ref.job_name,
            "checkpoint": str(ref.checkpoint) if ref.checkpoint else None, "enable_thinking": thinking,
            "system_prompt": bool(ref.system_prompt)}


def vllm_command(ref, folder: Path, name: str, host: str, port: int, *, thinking: bool | None) -> list[str]:
    """`vllm serve` of the job: the base with the adapter as the LoRA named `name`, the job's tokenizer and generation
    config from `folder`, its think handling as the server's default chat-template kwargs."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(ref.base), "--host", host,
           "--port", str(port), "--tokenizer", str(folder), "--generation-config", str(folder)]
    if ref.adapter is not None:
        rank = json.loads((Path(ref.adapter) / "adapter_config.json").read_text(encoding="utf-8")).get("r", 16)
        cmd += ["--served-model-name", f"{name}-base", "--enable-lora", "--lora-modules", f"{name}={ref.adapter}",
                "--max-lora-rank", str(rank)]
    else:
        cmd += ["--served-model-name", name]
    if ref.load_in_4bit:
        cmd += ["--quantization", "bitsandbytes"]
    if ref.trust_remote_code:
        cmd.append("--trust-remote-code")
    if thinking is not None:
        cmd += ["--default-chat-template-kwargs", json.dumps({"enable_thinking": thinking})]
    return cmd


@app.command("serve")
def serve_cmd(model: str = MODEL, *, adapter: Optional[str] = ADAPTER, checkpoint: Optional[int] = CHECKPOINT,
              port: int = typer.Option(8000, "--port", min=0, max=65535, help="0 picks a free port"),
              host: str = typer.Option("127.0.0.1", "--host", help="0.0.0.0 listens on every interface"),
              name: Optional[str] = typer.Option(None, "--name", help="the model name clients see (default: the job's "
                                                 "or folder's name)"),
              dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float16 "
                                        "| float32"),
              max_batch: Optional[int] = typer.Option(None, "--max-batch", min=1, help="medscale's own server: most "
                                                      "concurrent requests generated together (default: up to 256, in "
                                                      "padded batches as large as free GPU memory holds; 8 at a time "
                                                      "on CPU)"),
              batch_wait_ms: float = typer.Option(BATCH_WAIT_S * 1000, "--batch-wait-ms", min=0,
                                                  help="a batch starts once --max-batch requests wait or none came "
                                                  "for this long")) -> None:
    """Serve a model the way it was trained, OpenAI-compatible: point `medscale eval --endpoint`, `compare` and `chat`
    at it, or check it with `medscale eval JOB --parity URL`. Without vLLM, concurrent requests are answered in
    batches (each answer the same as alone: sampling is seeded per request). Ctrl-C stops it."""
    import medscale
    from medscale.errors import StopRequested, UserError
    from medscale.eval.asking import job_thinking, local_backend, sampling
    from medscale.generate.serve import Served, make_server
    from medscale.jobs.resolve import resolve

    medscale.setup_logging()  # the line each batch logs
    ref = resolve(model, checkpoint=checkpoint, adapter=adapter)
    served_name, thinking = name or ref.label, job_thinking(ref)
    if importlib.util.find_spec("vllm") is not None:
        from medscale.export.merge import _write_tokenizer_and_generation

        folder = Path(tempfile.mkdtemp(prefix="medscale-serve-"))
        if ref.adapter is not None:
            _write_tokenizer_and_generation(ref, folder)
        cmd = vllm_command(ref, folder if ref.adapter is not None else ref.base, served_name, host, port,
                           thinking=thinking)
        typer.echo(f"serving {ref.label} with vLLM at http://{host}:{port}/v1 (Ctrl-C stops)")
        os.execv(cmd[0], cmd)
    served = Served(served_name, f"medscale-serve {medscale.__version__}", sampling({}, ref=ref).settings,
                    ref.system_prompt, served_meta(ref, thinking))
    try:
        server = make_server(served, host, port, max_batch=max_batch, wait_s=batch_wait_ms / 1000)
    except OSError as e:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror}): pick another port, or "
                        f"--port 0 for a free one") from None
    server.backend = local_backend(ref, dtype=dtype, batch_size=max_batch, mode="padded")
    typer.echo(f"serving {ref.label} at http://{host}:{server.server_address[1]}/v1 (Ctrl-C stops)")
    try:
        server.serve_forever()
    except StopRequested as e:  # Ctrl-C or SIGTERM: the server's ordinary end, exit 0
        typer.echo(f"stopped: {e.args[0].split(':')[0]}", err=True)
    finally:
        server.server_close()
