"""Batched generation for compare, chat and generate-then-extract eval: the think block kept apart from the answer,
a think budget, tokens and time per answer."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from medscale.data.chat import THINK_CLOSE, THINK_OPEN, render_prompt, split_think
from medscale.dist import DistContext
from medscale.recipe import GenerationSection


def progress(total: int, desc: str):
    """A progress bar with ETA on the first process, on a terminal (silent in logs and tests, and without `desc`)."""
    from tqdm.auto import tqdm

    main = DistContext.from_env().is_main
    return tqdm(total=total, desc=desc, unit="q", disable=True if not main or not desc else None, dynamic_ncols=True)


@dataclass
class Generation:
    think: str | None  # the reasoning inside <think>...</think>; None when the model wrote none
    answer: str
    tokens: int  # generated tokens, think block included, up to and including end-of-turn
    seconds: float  # wall time of the batch it was generated in
    batch: int  # which batch: answers of one batch share its time


class ThinkBudget:
    """A logits processor that forces </think> once a row has generated `budget` tokens without closing its think
    block (budget forcing), so a reasoning model always reaches an answer inside max_new_tokens."""

    def __init__(self, close_id: int, prompt_len: int, budget: int):
        self.close_id, self.prompt_len, self.budget = close_id, prompt_len, budget

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len:]
        if generated.shape[1] < self.budget:
            return scores
        force = ~(generated == self.close_id).any(dim=1)
        if force.any():
            scores[force] = torch.finfo(scores.dtype).min
            scores[force, self.close_id] = 0.0
        return scores


def single_token_id(tok, text: str) -> int | None:
    ids = tok.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def sampling_kwargs(gen: GenerationSection, greedy: bool) -> dict:
    if greedy or gen.temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": gen.temperature, "top_p": gen.top_p, "top_k": gen.top_k}


@torch.no_grad()
def generate(model, tok, conversations: list[list[dict]], gen: GenerationSection, greedy: bool = False,
             batch_size: int = 8, seed: int = 0, desc: str = "generating") -> list[Generation]:
    """One Generation per conversation (each ending with a user turn). Sampling is seeded, greedy is exact."""
    prompts = [render_prompt(tok, c, gen.enable_thinking) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
    close_id = single_token_id(tok, THINK_CLOSE)
    budget = gen.think_budget if gen.enable_thinking is not False else None
    device = next(model.parameters()).device
    out: list[Generation | None] = [None] * len(prompts)
    torch.manual_seed(seed)
    with progress(len(prompts), desc) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False).to(device)
            plen = enc["input_ids"].shape[1]
            processors = [ThinkBudget(close_id, plen, budget)] if budget and close_id is not None else []
            t0 = time.perf_counter()
            seqs = model.generate(**enc, max_new_tokens=gen.max_new_tokens + (budget or 0),
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                  logits_processor=processors, **sampling_kwargs(gen, greedy))
            seconds = time.perf_counter() - t0
            for row, i in enumerate(idx):
                new = seqs[row, plen:].tolist()
                if tok.eos_token_id in new:
                    new = new[:new.index(tok.eos_token_id) + 1]
                while new and new[-1] == tok.pad_token_id and tok.pad_token_id != tok.eos_token_id:
                    new.pop()
                text = _decode(tok, new)
                think, answer = split_think(text)  # no answer (out of think budget) reads as an empty one
                out[i] = Generation(think, answer or "", len(new), seconds, start // batch_size)
            bar.update(len(idx))
    return out  # type: ignore[return-value]


def _decode(tok, ids: list[int]) -> str:
    """Text with the think tags kept (a tokenizer may mark them special) and every other special token dropped."""
    text = tok.decode(ids, skip_special_tokens=False)
    for special in tok.all_special_tokens:
        if special not in (THINK_OPEN, THINK_CLOSE):
            text = text.replace(special, "")
    return text
