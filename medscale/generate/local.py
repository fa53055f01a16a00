"""The in-process backend: padded `generate` batches, as large as the GPU's free memory holds their KV cache, or
continuous batching through transformers' `generate_batch` (paged KV cache, CUDA graphs). It says which one ran.

`mode="auto"` takes continuous batching only where flash attention serves it: without flash, transformers' paged
cache attends through a dense mask over every cached token of the batch, and padded batches of the planned size are
faster (bench/gen_speed.py). Continuous batching that fails falls back to padded batches, said aloud.

Seeded sampling in padded batches is exact per (seed, question, sample): each row's noise is a hash of its sample
key, its step and the token id (Gumbel-max), never a draw from a shared generator, so it does not depend on batch
composition, order or size. Continuous batching samples with its own seeded generator (one seed per run), which
transformers gives no per-request hook for: the backend records that as `sampler`.

Padded batches decode `eager` (a growing cache), `static` (a preallocated cache, the prompt width rounded up to a
multiple of WIDTH_BUCKET so batches share one shape) or `compiled` (static, and the decode step compiled by
transformers' generate with CUDA graphs: decoding is launch-bound, and graphs replay a step's ~400 kernels as one
launch). The default is `eager` until bench/gen_speed.py has measured `compiled` on a GPU (its compiled-* variants;
no GPU could be had when it was written); a compiled batch that fails is redone eagerly, said aloud.

A think budget is enforced in two phases for both: generate up to the budget; a request that hit it without closing
its think block gets </think> appended; every unfinished request then continues for max_new_tokens more.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from medscale.data.chat import render_prompt
from medscale.generate.settings import SamplingSettings

THINK_CLOSE = "</think>"
WIDTH_BUCKET = 256  # static and compiled decoding: prompt widths rounded up to this, so batches reuse one graph
DECODES = ("eager", "static", "compiled")
_MIX = (0xBF58476D1CE4E5B9 - 2 ** 64, 0x94D049BB133111EB - 2 ** 64)  # splitmix64 multipliers as signed int64
log = logging.getLogger(__name__)


@dataclass
class Job:
    """One request: a rendered prompt's ids and its sample key; filled in as it generates."""

    ids: list[int]
    key: int
    out: list[int] = field(default_factory=list)
    done: bool = False  # reached end-of-turn


def uniform_noise(keys: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab] uniforms in (0, 1) from integer hashing of (key, step, token): the same numbers on any device
    and in any batch (int64 arithmetic wraps identically on CPU and CUDA)."""
    tokens = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    x = (keys ^ (steps * 0x632BE59BD9B4E019)).unsqueeze(1) + tokens * 0x9E3779B97F4A7C15
    for mult in _MIX:
        x = (x ^ ((x >> 31) & 0x1FFFFFFFF)) * mult
    x = x ^ ((x >> 31) & 0x1FFFFFFFF)
    return (((x >> 11) & ((1 << 53) - 1)).double() + 0.5) / 2 ** 53


def warp(scores: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """Temperature, top-k, then top-p (HF's order): tokens outside the kept set get -inf."""
    scores = scores.float() / s.temperature
    if s.top_k is not None and s.top_k < scores.shape[-1]:
        kth = torch.topk(scores, s.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop = cum - sorted_scores.softmax(-1) >= s.top_p  # keep tokens until the mass before them reaches top_p
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


class SeededSampler:
    """A logits processor for greedy `generate`: with sampling on it adds each row's Gumbel noise to the warped
    scores, so argmax is a sample from softmax(warped); greedy passes scores through."""

    def __init__(self, s: SamplingSettings, keys: list[int], offsets: list[int], prompt_len: int):
        self.s, self.prompt_len = s, prompt_len
        self.keys, self.offsets = torch.tensor(keys), torch.tensor(offsets)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.s.do_sample:
            return scores
        steps = self.offsets.to(scores.device) + (input_ids.shape[1] - self.prompt_len)
        u = uniform_noise(self.keys.to(scores.device), steps, scores.shape[-1])
        return warp(scores, self.s) - torch.log(-torch.log(u)).float()


class LocalBackend:
    """`run(jobs, settings, limit, on_done)`: extends each job by up to `limit` tokens; `on_done(job)` for each job
    that ends (end-of-turn or limit). `mode`: auto (continuous batching on CUDA, else padded), cb, or padded."""

    def __init__(self, model, tok, *, mode: str = "auto", batch_size: int | None = None, cb_config: dict | None = None,
                 ignore_eos: bool = False, enable_thinking: bool | None = None, chunk: int = 256,
                 decode: str = "eager"):
        """`batch_size`: padded requests per `generate` call; None plans it per call (`fit_batch`). `decode`: how
        padded batches decode (module docstring)."""
        self.model, self.tok, self.batch_size, self.cb_config = model, tok, batch_size, cb_config or {}
        self.enable_thinking = enable_thinking  # the chat template's switch (Qwen3); None: the template's default
        self.chunk = chunk  # continuous batching: requests per call, written to the cache when the call ends
        self.ignore_eos = ignore_eos  # benchmarks: every request runs to its limit
        on_gpu = next(model.parameters()).device.type == "cuda"
        self.mode = mode if mode != "auto" else ("cb" if on_gpu and _flash_attention(model) else "padded")
        if decode not in DECODES:
            raise ValueError(f"decode must be one of {', '.join(DECODES)}, not {decode!r}")
        self.decode = decode
        self.fallback: str | None = None
        self.close_ids = tok.encode(THINK_CLOSE, add_special_tokens=False)

    @property
    def info(self) -> dict:
        sampler = "per-sample seed (exact)" if self.mode == "padded" else "continuous batching's run seed"
        backend = f"in-process padded ({self.decode} decode)" if self.mode == "padded" else "in-process cb"
        return {"backend": backend, "fallback": self.fallback, "sampler": sampler}

    def identity(self) -> str:
        return str(getattr(self.model, "name_or_path", "") or type(self.model).__name__)

    def eos(self) -> list[int] | None:
        return None if self.ignore_eos else [self.tok.eos_token_id]

    def run(self, jobs: list[Job], s: SamplingSettings, limit: int) -> None:
        if self.mode == "cb":
            try:
                return self._run_cb(jobs, s, limit)
            except Exception as e:  # noqa: BLE001 - any failure of the optional fast path falls back, said aloud
                self.mode, self.fallback = "padded", f"continuous batching failed ({type(e).__name__}: {e})"
                log.warning("%s; falling back to padded batches", self.fallback)
        self._run_padded(jobs, s, limit)

    @torch.no_grad()
    def _run_padded(self, jobs: list[Job], s: SamplingSettings, limit: int) -> None:
        device = next(self.model.parameters()).device
        order = sorted(jobs, key=lambda j: -len(j.ids) - len(j.out))  # similar lengths share a batch
        pad = self.tok.pad_token_id
        if not order:
            return
        size = self.batch_size or fit_batch(self.model, len(order[0].ids) + len(order[0].out) + limit)
        for start in range(0, len(order), size):
            batch = order[start:start + size]
            seqs = [j.ids + j.out for j in batch]
            width = max(map(len, seqs))
            if self.decode != "eager":
                width = -(-width // WIDTH_BUCKET) * WIDTH_BUCKET
            ids = torch.tensor([[pad] * (width - len(q)) + q for q in seqs], device=device)
            mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in seqs], device=device)
            sampler = SeededSampler(s, [j.key for j in batch], [len(j.out) for j in batch], width)
            args = dict(input_ids=ids, attention_mask=mask, max_new_tokens=limit, do_sample=False, temperature=None,
                        top_p=None, top_k=None, pad_token_id=pad, eos_token_id=self.eos(), logits_processor=[sampler],
                        min_new_tokens=limit if self.ignore_eos else None)
            gen = self._generate(args)
            for row, j in enumerate(batch):
                self._take(j, gen[row, width:].tolist())

    def _generate(self, args: dict) -> torch.Tensor:
        """One padded batch in the backend's decode; a compiled one that fails is redone eagerly, said aloud."""
        if self.decode == "eager":
            return self.model.generate(**args)
        try:
            return self.model.generate(**args, cache_implementation="static",
                                       disable_compile=self.decode != "compiled")
        except Exception as e:  # noqa: BLE001 - the optional fast path fails over to the plain one, said aloud
            if self.decode != "compiled":
                raise
            self.decode, self.fallback = "eager", f"compiled decoding failed ({type(e).__name__}: {e})"
            log.warning("%s; decoding eagerly", self.fallback)
            return self.model.generate(**args)

    def _take(self, j: Job, new: list[int]) -> None:
        eos = self.tok.eos_token_id
        if not self.ignore_eos and eos in new:
            new, j.done = new[:new.index(eos) + 1], True
        j.out += new

    def _run_cb(self, jobs: list[Job], s: SamplingSettings, limit: int) -> None:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig, GenerationConfig

        sampling = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k} \
            if s.do_sample else {"do_sample": False}
        config = GenerationConfig(max_new_tokens=limit, eos_token_id=self.eos(), pad_token_id=self.tok.pad_token_id,
                                  **sampling)
        cb = ContinuousBatchingConfig(seed=s.seed, **self.cb_config)
        results = self.model.generate_batch([j.ids + j.out for j in jobs], generation_config=config,
                                            continuous_batching_config=cb, progress_bar=False)
        outs = list(results.values())
        if len(outs) != len(jobs) or any(o.error for o in outs):
            bad = next((o.error for o in outs if o.error), "missing results")
            raise RuntimeError(f"{len(jobs) - len(outs)} of {len(jobs)} requests lost; {bad}")
        for j, o in zip(jobs, outs):
            self._take(j, list(o.generated_tokens))

    def complete(self, items: list, s: SamplingSettings):
        """Yield (item, text, tokens, finish) for every item, a batch (padded) or chunk (continuous) at a time."""
        size = (self.batch_size or self.chunk) if self.mode == "padded" else self.chunk
        for start in range(0, len(items), size):
            part = items[start:start + size]
            jobs = [Job(self.tok.encode(render_prompt(self.tok, it.messages, self.enable_thinking),
                                        add_special_tokens=False), it.key) for it in part]
            self.generate_ids(jobs, s)
            for it, j in zip(part, jobs):
                yield it, decode(self.tok, j.out), len(j.out), "stop" if j.done else "length"

    def generate_ids(self, jobs: list[Job], s: SamplingSettings) -> None:
        """Every job to its end: the think budget phase first (when there is one), then the answer."""
        if s.think_budget:
            self.run(jobs, s, s.think_budget)
            close = self.close_ids
            for j in jobs:
                if not j.done and not _contains(j.out, close):
                    j.out += close
        todo = [j for j in jobs if not j.done]
        if todo:
            self.run(todo, s, s.max_new_tokens if s.think_budget else s.max_tokens)


def decode(tok, ids: list[int]) -> str:
    """Text with the think tags kept (a tokenizer may mark them special) and every other special token dropped."""
    text = tok.decode(ids, skip_special_tokens=False)
    for special in tok.all_special_tokens:
        if special not in ("<think>", THINK_CLOSE):
            text = text.replace(special, "")
    return text


def _contains(seq: list[int], sub: list[int]) -> bool:
    n = len(sub)
    return any(seq[i:i + n] == sub for i in range(len(seq) - n + 1))


def fit_batch(model, max_len: int, *, free: int | None = None, cap: int = 256, share: float = 0.6) -> int:
    """Padded requests per batch: as many as a KV cache of `max_len` tokens each fits in `share` of the GPU's `free`
    memory (default: what CUDA reports), at most `cap` (decoding is launch-bound: a step of 256 rows costs little more
    than one of 8); 8 on CPU."""
    param = next(model.parameters())
    if free is None and param.device.type != "cuda":
        return 8
    cfg = model.config.get_text_config()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    per_token = 2 * cfg.num_hidden_layers * (getattr(cfg, "num_key_value_heads", None) or heads) * head_dim
    per_request = per_token * param.element_size() * max_len + cfg.vocab_size * 4  # KV cache + fp32 logits row
    free = torch.cuda.mem_get_info(param.device)[0] if free is None else free
    return max(1, min(cap, int(free * share // per_request)))


def _flash_attention(model) -> bool:
    """Whether continuous batching would attend through flash attention (the model's own or the package's)."""
    from transformers.utils import is_flash_attn_2_available

    return "flash" in str(model.config._attn_implementation) or is_flash_attn_2_available()
