"""A small OpenAI-compatible server over the in-process engine (`medscale serve` when vLLM is not installed).

It answers /v1/models, /version and /v1/chat/completions with what the job trained with: the tokenizer's chat template
(loaded by the caller through the shared loader), its think handling (the backend's `enable_thinking`, which a
request's `chat_template_kwargs` may override), its system prompt when a request brings none, and its generation
settings for every key a request leaves out. A request's `seed` is its sample key, so a sample served here is the
sample the in-process padded backend draws for the same key; `think_budget` (medscale's own field) splits
`max_tokens` as the in-process engine does; `ignore_eos` (as vLLM takes it) runs a request to `max_tokens`, for
benchmarks.

Concurrent requests are answered in batches: one worker thread takes what is queued, waits until `max_batch` requests
are there or none came for `wait_s` (clients send in bursts: a batch cut at the first request would leave the rest to
a second full-length one), and answers each group of identical settings and think handling with one backend call,
padded batches whose sampling is exact per seed, so an answer does not depend on what it was batched with. No
streaming and no joining a batch mid-way (install vLLM for a throughput server).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from medscale.errors import RunFailed
from medscale.generate.engine import Item
from medscale.generate.settings import SamplingSettings

BATCH_WAIT_S = 0.05  # against a generation of seconds, 50 ms more is nothing
log = logging.getLogger(__name__)


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


class Batcher:
    """The one worker thread that generates: requests queue here with their group (settings, think handling,
    ignore_eos) and each handler waits for its own answer."""

    def __init__(self, server: ThreadingHTTPServer, max_batch: int | None, wait_s: float):
        self.server, self.max_batch, self.wait_s = server, max_batch, wait_s
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.ids = itertools.count()
        threading.Thread(target=self._loop, name="medscale-serve-batcher", daemon=True).start()

    def answer(self, messages: list[dict], seed: int, group: tuple) -> tuple[str, int, str, int]:
        """(text, tokens, finish, batch size) once the worker has generated this request."""
        done: Future = Future()
        self.queue.put((group, Item(f"request-{next(self.ids)}", 0, messages, seed), done))
        return done.result()

    def _gather(self) -> list[tuple]:
        taken = [self.queue.get()]
        cap = self.max_batch or self.server.backend.chunk  # None: the backend plans its padded batches (fit_batch)
        while len(taken) < cap:
            try:
                taken.append(self.queue.get(timeout=self.wait_s))
            except queue.Empty:
                break
        return taken

    def _loop(self) -> None:
        while True:
            groups: dict[tuple, list] = {}
            for group, item, done in self._gather():
                groups.setdefault(group, []).append((item, done))
            for group, members in groups.items():
                self._run(group, members)

    def _run(self, group: tuple, members: list[tuple[Item, Future]]) -> None:
        settings, thinking, ignore_eos = group
        backend, t0 = self.server.backend, time.perf_counter()
        default = backend.enable_thinking, backend.ignore_eos
        backend.enable_thinking = default[0] if thinking is None else thinking
        backend.ignore_eos = ignore_eos
        try:
            answers = {it.id: rest for it, *rest in backend.complete([it for it, _ in members], settings)}
        except Exception as e:  # noqa: BLE001 - a failed batch answers each request with its error; serving goes on
            log.exception("a batch of %d requests failed", len(members))
            for _, done in members:
                done.set_exception(e)
            return
        finally:
            backend.enable_thinking, backend.ignore_eos = default
        tokens = sum(n for _, n, _ in answers.values())
        log.info("served a batch: %d requests, %d tokens in %.1f s", len(members), tokens, time.perf_counter() - t0)
        for it, done in members:
            done.set_result((*answers[it.id], len(members)))


def make_server(served: Served, host: str = "127.0.0.1", port: int = 0, *, max_batch: int | None = None,
                wait_s: float = BATCH_WAIT_S) -> ThreadingHTTPServer:
    """An HTTP server, bound (a port in use fails before any model loads) and not yet serving: set its `backend` (a
    medscale.generate.local.LocalBackend in padded mode), then serve_forever(). `max_batch`: most requests a batch
    takes (None: the backend's chunk, in padded batches it plans)."""
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
                messages, seed = request_messages(req, served.system_prompt), int(req.get("seed") or 0)
                thinking = (req.get("chat_template_kwargs") or {}).get("enable_thinking")  # None: the server's
                if thinking not in (None, True, False):
                    raise ValueError("chat_template_kwargs.enable_thinking must be true or false")
                group = (s, thinking, bool(req.get("ignore_eos")))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                return self._send(400, {"error": {"message": f"bad request: {e}"}})
            try:
                text, tokens, finish, batch = self.server.batcher.answer(messages, seed, group)
            except Exception as e:  # noqa: BLE001 - the batch failed (e.g. out of memory): a retryable server error
                return self._send(500, {"error": {"message": f"generation failed: {type(e).__name__}: {e}"}})
            self._send(200, {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "model": served.name,
                             "choices": [{"index": 0, "finish_reason": finish,
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": {"completion_tokens": tokens}, "medscale": {"batch": batch}})

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024  # a client's burst of concurrent requests must not overflow the listen backlog

    server = Server((host, port), Handler)
    server.backend = None
    server.batcher = Batcher(server, max_batch, wait_s)
    return server


@contextlib.contextmanager
def serving(ref, *extra: str, port: int = 0, env: dict | None = None, log_file: Path | None = None):
    """`medscale serve REF --port PORT` (0: a free one) as its own process of this Python, stopped with Ctrl-C at the
    end: yields (process, URL). Its stderr is a pipe the caller may read, or `log_file` (a long run writes more than
    a pipe holds)."""
    err = open(log_file, "w", encoding="utf-8") if log_file else subprocess.PIPE
    proc = subprocess.Popen([sys.executable, "-m", "medscale.cli", "serve", str(ref), "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, **(env or {})})
    try:
        line = proc.stdout.readline()
        if not line.startswith("serving "):
            if log_file:
                proc.wait()
            said = Path(log_file).read_text(encoding="utf-8") if log_file else proc.stderr.read()
            raise RunFailed(f"medscale serve {ref} did not start (exit {proc.returncode}): {line}{said}")
        yield proc, line.split(" at ")[1].split()[0]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait()
        if log_file:
            err.close()
