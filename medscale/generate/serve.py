"""A small OpenAI-compatible server over the in-process engine (`medscale serve` when vLLM is not installed).

It answers /v1/models, /version and /v1/chat/completions with what the job trained with: the tokenizer's chat template
(loaded by the caller through the shared loader), its think handling (the backend's `enable_thinking`, which a
request's `chat_template_kwargs` may override), its system prompt when a request brings none, and its generation
settings for every key a request leaves out. A request's `seed` is its sample key, so a sample served here is the
sample the in-process padded backend draws for the same key; `think_budget` (medscale's own field) splits
`max_tokens` as the in-process engine does. Requests are answered one at a time: this is for parity checks, tests
and small teams, not a throughput server (install vLLM for that).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from medscale.generate.engine import Item
from medscale.generate.settings import SamplingSettings


@dataclass(frozen=True)
class Served:
    """What the server serves besides the weights: the name clients see, its version, the default settings and the
    system prompt the job trained with, and a description for /v1/models (base, adapter, think handling)."""

    name: str
    version: str
    defaults: SamplingSettings
    system_prompt: str | None = None
    meta: dict | None = None


def request_settings(req: dict, defaults: SamplingSettings) -> SamplingSettings:
    """The request's sampling keys over the served defaults; temperature 0 (or none, with greedy defaults) is greedy."""
    temperature = float(req.get("temperature", defaults.temperature if defaults.do_sample else 0.0))
    budget = req.get("think_budget", None if "max_tokens" in req else defaults.think_budget)
    total = int(req["max_tokens"]) if req.get("max_tokens") else None
    new = defaults.max_new_tokens if total is None else total - (int(budget) if budget else 0)
    return SamplingSettings(do_sample=temperature > 0, temperature=temperature or defaults.temperature,
                            top_p=float(req.get("top_p", defaults.top_p)), top_k=req.get("top_k", defaults.top_k),
                            max_new_tokens=new, think_budget=int(budget) if budget else None)


def request_messages(req: dict, system_prompt: str | None) -> list[dict]:
    messages = req["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    if system_prompt and not any(m.get("role") == "system" for m in messages):
        return [{"role": "system", "content": system_prompt}] + messages
    return messages


def make_server(served: Served, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server, bound (a port in use fails before any model loads) and not yet serving: set its `backend` (a
    medscale.generate.local.LocalBackend), then serve_forever()."""
    lock = threading.Lock()
    listing = {"object": "list", "data": [{"id": served.name, "object": "model", "owned_by": "medscale",
                                           "medscale": served.meta or {}}]}

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
                return self._send(200, listing)
            if self.path.rstrip("/") in ("/version", "/v1/version"):
                return self._send(200, {"version": served.version})
            self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                if req.get("stream"):
                    raise ValueError("stream is not supported by medscale serve: send stream=false")
                s = request_settings(req, served.defaults)
                item = Item("request", 0, request_messages(req, served.system_prompt), int(req.get("seed") or 0))
                backend = self.server.backend
                thinking = (req.get("chat_template_kwargs") or {}).get("enable_thinking", backend.enable_thinking)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                return self._send(400, {"error": {"message": f"bad request: {e}"}})
            with lock:
                default_thinking, backend.enable_thinking = backend.enable_thinking, thinking
                try:
                    _, text, tokens, finish = next(backend.complete([item], s))
                finally:
                    backend.enable_thinking = default_thinking
            self._send(200, {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "model": served.name,
                             "choices": [{"index": 0, "finish_reason": finish,
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": {"completion_tokens": tokens}})

    server = ThreadingHTTPServer((host, port), Handler)
    server.backend = None
    return server
