"""A small OpenAI-compatible server over the in-process engine: `python -m medscale.generate.serve MODEL [--port N]`.

It serves the model folder's own chat template (the tokenizer's) and answers /v1/models, /version and
/v1/chat/completions. A request's `seed` is used as its sample key, so a sample served here is the sample the
in-process padded backend draws for the same key. Requests are answered one at a time: this is for parity checks,
tests and small teams, not a throughput server (point --endpoint at vLLM for that).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from medscale.generate.engine import Item
from medscale.generate.local import LocalBackend
from medscale.generate.settings import SamplingSettings

VERSION = "medscale-serve 1"


def make_server(backend: LocalBackend, name: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body, ensure_ascii=False).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # one line per request would drown the caller's output
            pass

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                return self._send(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            if self.path.rstrip("/") in ("/version", "/v1/version"):
                return self._send(200, {"version": VERSION})
            self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                temperature = float(req.get("temperature", 1.0))
                s = SamplingSettings(do_sample=temperature > 0, temperature=temperature or 1.0,
                                     top_p=float(req.get("top_p", 1.0)), top_k=req.get("top_k"),
                                     max_new_tokens=int(req.get("max_tokens") or 512))
                item = Item("request", 0, req["messages"], int(req.get("seed") or 0))
            except (ValueError, KeyError, TypeError) as e:
                return self._send(400, {"error": {"message": f"bad request: {e}"}})
            with lock:
                _, text, tokens, finish = next(backend.complete([item], s))
            self._send(200, {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "model": name,
                             "choices": [{"index": 0, "finish_reason": finish,
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": {"completion_tokens": tokens}})

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="medscale serve", description=__doc__.splitlines()[0])
    p.add_argument("model", help="a model folder (weights, tokenizer with its chat template)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default=None, help="the served model name (default: the folder's name)")
    a = p.parse_args(argv)
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model).eval()
    server = make_server(LocalBackend(model, tok, mode="padded"), a.name or Path(a.model).name, a.host, a.port)
    print(f"serving {a.model} at http://{a.host}:{server.server_address[1]}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
