"""Any OpenAI-compatible server as a backend (vLLM, SGLang, `transformers serve`, `medscale serve`, a gateway).

Requests go out `concurrency` at a time, each with a timeout; a connection failure, timeout, 429 or 5xx is retried
with exponential backoff, then the run stops with one line naming the server and the reason (what finished is
cached already). The API key is read from an environment variable and sent only as the Authorization header: no
message, log line or record contains it. The served model's name and the server's version are recorded.

Think handling is the server's (it serves the template the model was trained with) unless the caller decides it
(`enable_thinking`, sent as `chat_template_kwargs`, which vLLM, `transformers serve` and `medscale serve` take). A
think budget is sent as medscale's own `think_budget` field beside `max_tokens` (others ignore it).
"""
from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from medscale.errors import RunFailed
from medscale.generate.settings import SamplingSettings

log = logging.getLogger(__name__)
RETRYABLE = {408, 409, 429, 500, 502, 503, 504}


class EndpointError(RunFailed):
    """The server could not be reached or kept failing after the retries."""


class _Retryable(Exception):
    pass


class EndpointBackend:
    def __init__(self, url: str, model: str | None = None, *, concurrency: int = 8, timeout: float = 600.0,
                 retries: int = 4, backoff: float = 1.0, api_key_env: str = "OPENAI_API_KEY",
                 enable_thinking: bool | None = None, ignore_eos: bool = False):
        self.enable_thinking = enable_thinking
        self.ignore_eos = ignore_eos  # benchmarks: every request runs to max_tokens (vLLM and medscale serve take it)
        self.base = url.rstrip("/").removesuffix("/chat/completions")
        self.base = self.base if self.base.endswith("/v1") else self.base + "/v1"
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self._key = os.environ.get(api_key_env) or None
        self.model = model or self._served_model()
        self.version = self._server_version()

    @property
    def info(self) -> dict:
        return {"backend": "endpoint", "url": self.base, "served_model": self.model, "server_version": self.version,
                "sampler": "server's (seed sent per sample)"}

    def identity(self) -> str:
        """The served model, not the URL: a restarted server on another port still continues the same cache."""
        thinking = "" if self.enable_thinking is None else f":thinking={self.enable_thinking}"
        return f"endpoint:{self.model}{thinking}"

    def _call(self, path: str, body: dict | None = None) -> tuple[dict, dict]:
        """(JSON reply, headers) of one HTTP call; _Retryable for what a retry may fix."""
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read().decode()), dict(r.headers)
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode(errors="replace")
            if e.code in RETRYABLE:
                raise _Retryable(f"HTTP {e.code}: {detail}") from None
            raise EndpointError(f"endpoint {self.base}{path} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            raise _Retryable(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None

    def call(self, path: str, body: dict | None = None) -> tuple[dict, dict]:
        for attempt in range(self.retries + 1):
            try:
                return self._call(path, body)
            except _Retryable as e:
                if attempt == self.retries:
                    raise EndpointError(f"endpoint {self.base} failed {self.retries + 1} times ({e}); generations "
                                        f"that finished are cached: fix the server and rerun to continue") from None
                wait_s = self.backoff * 2 ** attempt
                log.warning("endpoint %s: %s; retry %d/%d in %.1fs", self.base, e, attempt + 1, self.retries, wait_s)
                time.sleep(wait_s)
        raise AssertionError("unreachable")

    def _served_model(self) -> str:
        models = self.call("/models")[0].get("data") or []
        if not models:
            raise EndpointError(f"endpoint {self.base}/models lists no model: pass the model name")
        adapters = [m for m in models if m.get("parent")]  # vLLM lists a LoRA module after its base, with its parent
        return (adapters or models)[0]["id"]

    def _server_version(self) -> str:
        """vLLM and medscale serve answer /version; otherwise the Server header, if any."""
        root = self.base.removesuffix("/v1")
        for url in (root + "/version", self.base + "/version"):
            try:
                with urllib.request.urlopen(url, timeout=min(self.timeout, 10)) as r:
                    return str(json.loads(r.read().decode()).get("version")) or r.headers.get("Server", "unknown")
            except (OSError, ValueError):
                continue
        return "unknown"

    def body(self, item, s: SamplingSettings) -> dict:
        body = {"model": self.model, "messages": item.messages, "max_tokens": s.max_tokens,
                "seed": item.key}
        if s.do_sample:
            body |= {"temperature": s.temperature, "top_p": s.top_p} | ({"top_k": s.top_k} if s.top_k else {})
        else:
            body["temperature"] = 0.0
        if s.think_budget:
            body["think_budget"] = s.think_budget
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.enable_thinking is not None:
            body["chat_template_kwargs"] = {"enable_thinking": self.enable_thinking}
        return body

    def one(self, item, s: SamplingSettings):
        reply, _ = self.call("/chat/completions", self.body(item, s))
        choice = reply["choices"][0]
        msg = choice.get("message") or {}
        text = msg.get("content") or ""
        reasoning = msg.get("reasoning_content") or msg.get("reasoning")
        if reasoning:  # servers with a reasoning parser (vLLM) split the think block off: put it back
            text = f"{reasoning}</think>{text}"
        tokens = (reply.get("usage") or {}).get("completion_tokens") or 0
        return item, text, tokens, "stop" if choice.get("finish_reason") == "stop" else "length"

    def complete(self, items: list, s: SamplingSettings):
        """Yield each item as its reply arrives; at most `concurrency` in flight."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            pending, queue = set(), iter(items)
            for it in queue:
                pending.add(pool.submit(self.one, it, s))
                if len(pending) >= self.concurrency:
                    break
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        yield f.result()
                        nxt = next(queue, None)
                        if nxt is not None:
                            pending.add(pool.submit(self.one, nxt, s))
            finally:
                for f in pending:
                    f.cancel()
