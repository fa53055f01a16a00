"""Scoring multiple-choice questions: answer-letter log-likelihood, option-text log-likelihood, or
generate-then-extract through the generation engine (medscale.generate: k sampled answers a question, kept as they
finish). Batched and padding-aware on whatever device the model is on; data-parallel when torch.distributed is
initialised (each process scores a shard, rank 0 and every other rank get all outcomes).
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from medscale.data.chat import THINK_OPEN, render_prompt
from medscale.dist import DistContext
from medscale.eval.bench import Benchmark, Question
from medscale.eval.extract import extract_choice
from medscale.eval.prompt import mcq_messages, mcq_prompt
from medscale.eval.result import Outcome, Sample
from medscale.eval.sampled import question_score
from medscale.generate.engine import Request, Run, generate
from medscale.generate.settings import SamplingSettings

if TYPE_CHECKING:
    from medscale.eval.scores import ScoreLog

MODES = ("letter", "option", "generate")


def progress(total: int, desc: str):
    """A progress bar with ETA on the first process, on a terminal (silent in logs and tests, and without `desc`)."""
    from tqdm.auto import tqdm

    main = DistContext.from_env().is_main
    return tqdm(total=total, desc=desc, unit="q", disable=True if not main or not desc else None, dynamic_ncols=True)


@contextmanager
def inference(model):
    """The model in eval mode for the block (dropout off), as it was after: a training run's model goes on training."""
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def process_group_rank():
    """(rank, world size) of an initialised process group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_all(part: list, world: int) -> list:
    if world == 1:
        return part
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, part)
    return [x for p in parts for x in p]


@torch.no_grad()
def _last_logprobs(model, seqs: list[list[int]], keep: int, pad_id: int) -> torch.Tensor:
    """Log-probabilities at the last `keep` positions of each sequence: [batch, keep, vocab]. Sequences are padded
    on the left so they all end at the same column, and only `keep` columns of logits are ever computed (the
    full-vocabulary logits of a whole batch would not fit for a 150k vocabulary)."""
    device = next(model.parameters()).device
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = torch.tensor(s)
        mask[row, width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   logits_to_keep=keep, use_cache=False).logits
    return torch.log_softmax(logits[:, -keep:].float(), dim=-1)


def _choose(scores: dict[str, float], q: Question) -> list[str]:
    """The most likely letter; for a several-answer question the k most likely, k = its number of answers."""
    return sorted(sorted(scores, key=lambda letter: -scores[letter])[:len(q.answer)])


def _outcome(q: Question, chosen: list[str], scores: dict[str, float]) -> Outcome:
    return Outcome(id=q.id, subject=q.subject, chosen=chosen, correct=list(q.answer), ok=chosen == sorted(q.answer),
                   scores={k: round(v, 4) for k, v in scores.items()})


def _batches(order: list[int], size: int):
    for start in range(0, len(order), size):
        yield order[start:start + size]


def _letter_ids(tok, letters: str) -> dict[str, int]:
    ids = {letter: tok.encode(letter, add_special_tokens=False)[0] for letter in letters}
    if len(set(ids.values())) != len(ids):
        raise ValueError("the tokenizer gives two option letters the same first token")
    return ids


def _score_letter(model, tok, bench: Benchmark, qs: list[Question], shots: int, *, batch_size: int,
                  system_prompt: str | None, bar) -> list[Outcome]:
    prompts = [mcq_prompt(tok, bench, q, "letter", shots, system_prompt=system_prompt) for q in qs]
    seqs = tok(prompts, add_special_tokens=False)["input_ids"]
    letter_id = _letter_ids(tok, "ABCDEFGHIJ")
    out: list[Outcome | None] = [None] * len(qs)
    for idx in _batches(sorted(range(len(qs)), key=lambda i: -len(seqs[i])), batch_size):
        logp = _last_logprobs(model, [seqs[i] for i in idx], 1, tok.pad_token_id)[:, -1]
        for row, i in enumerate(idx):
            scores = {letter: logp[row, letter_id[letter]].item() for letter in qs[i].options}
            out[i] = _outcome(qs[i], _choose(scores, qs[i]), scores)
        bar.update(len(idx))
    return out  # type: ignore[return-value]


def _score_option(model, tok, bench: Benchmark, qs: list[Question], shots: int, *, batch_size: int,
                  system_prompt: str | None, bar) -> list[Outcome]:
    """Mean log-likelihood per token of each option's text as the answer (length-normalised, so long options are
    not penalised for their length)."""
    prompts = tok([mcq_prompt(tok, bench, q, "option", shots, system_prompt=system_prompt) for q in qs],
                  add_special_tokens=False)["input_ids"]
    pairs = [(i, letter) for i, q in enumerate(qs) for letter in q.options]
    conts = tok([qs[i].options[letter] for i, letter in pairs], add_special_tokens=False)["input_ids"]
    seqs = [prompts[i] + c for (i, _), c in zip(pairs, conts)]
    scores: list[dict[str, float]] = [{} for _ in qs]
    remaining = [len(q.options) for q in qs]
    for idx in _batches(sorted(range(len(pairs)), key=lambda j: -len(seqs[j])), batch_size):
        keep = max(len(conts[j]) for j in idx) + 1
        logp = _last_logprobs(model, [seqs[j] for j in idx], keep, tok.pad_token_id)
        for row, j in enumerate(idx):
            c = conts[j]
            pred = logp[row, keep - len(c) - 1:keep - 1]  # the positions that predict each continuation token
            total = pred.gather(-1, torch.tensor(c, device=pred.device).unsqueeze(-1)).sum().item()
            i, letter = pairs[j]
            scores[i][letter] = total / max(1, len(c))
            remaining[i] -= 1
            bar.update(1 if remaining[i] == 0 else 0)
    return [_outcome(q, _choose(s, q), s) for q, s in zip(qs, scores)]


def score(model, tok, bench: Benchmark, mode: str = "letter", shots: int = 0, *, batch_size: int = 8,
          system_prompt: str | None = None, log: "ScoreLog | None" = None) -> tuple[list[Outcome], float]:
    """(outcomes in the benchmark's order, seconds) of letter or option mode (generate mode: score_generated).
    Under torch.distributed every process scores every world-th question and all of them return the gathered
    outcomes. With `log` (an evaluation job's ScoreLog), questions go in batches of `batch_size` in the benchmark's
    order, each batch kept as it finishes and skipped when an earlier attempt kept all of it (the same batches, so
    the same result as an uninterrupted run)."""
    if mode not in ("letter", "option"):
        raise ValueError(f"score() scores letter or option mode, not {mode!r}")
    rank, world = process_group_rank()
    mine = bench.questions[rank::world]
    t0 = time.perf_counter()
    run = _score_letter if mode == "letter" else _score_option
    with inference(model), progress(len(mine), f"{bench.name} ({mode})") as bar:
        if log is None:
            part = run(model, tok, bench, mine, shots, batch_size=batch_size, system_prompt=system_prompt, bar=bar)
        else:
            part = []
            for start in range(0, len(mine), batch_size):
                qs = mine[start:start + batch_size]
                if all(q.id in log.done for q in qs):
                    part += [log.done[q.id] for q in qs]
                    bar.update(len(qs))
                    continue
                outs = run(model, tok, bench, qs, shots, batch_size=batch_size, system_prompt=system_prompt, bar=bar)
                log.add(outs)
                part += outs
    seconds = time.perf_counter() - t0
    return _gathered(part, rank, world), seconds


def _gathered(part: list, rank: int, world: int) -> list:
    """Every process's part, back in the benchmark's order (process r held questions r, r + world, ...)."""
    gathered = gather_all([(rank + world * k, o) for k, o in enumerate(part)], world)
    return [o for _, o in sorted(gathered, key=lambda x: x[0])]


def generate_messages(bench: Benchmark, q: Question, shots: int, system_prompt: str | None,
                      reasoning: bool) -> list[dict]:
    """Generate mode's conversation. A reasoning model (its chat template thinks) is asked with no system turn, as
    DeepSeek advises for R1: everything in the user turn, so a system prompt opens the question's turn instead."""
    msgs = mcq_messages(q, bench.language, "generate", bench.shots_for(q, shots), None if reasoning else system_prompt)
    if reasoning and system_prompt:
        msgs[-1] = {"role": "user", "content": f"{system_prompt}\n\n{msgs[-1]['content']}"}
    return msgs


class _Counted:
    """A generation backend whose every answer moves the progress bar; after each one the engine has kept, the
    crash tests' failpoint (MEDSCALE_FAILPOINT=eval_generated@N)."""

    def __init__(self, backend, bar):
        self.backend, self.bar = backend, bar

    @property
    def info(self) -> dict:
        return self.backend.info

    def identity(self) -> str:
        return self.backend.identity()

    def complete(self, items: list, s: SamplingSettings):
        from medscale.jobs.checkpoint import failpoint

        for n, answer in enumerate(self.backend.complete(items, s), 1):
            yield answer
            self.bar.update(1)
            failpoint("eval_generated", n)


def score_generated(tok, bench: Benchmark, *, backend, settings: SamplingSettings, shots: int = 0,
                    system_prompt: str | None = None, enable_thinking: bool | None = None,
                    cache: Path | None = None) -> tuple[list[Outcome], float, Run]:
    """Generate-then-extract: each question asked `settings.n_samples` times through the generation engine, every
    answer appended to `cache` as it finishes (a rerun generates only what it lacks: process r of a sharded run
    keeps its own `.rank<r>` file), the choice read after </think> (medscale.eval.extract). Returns the outcomes
    (the majority vote and each sample), the seconds, and the engine's Run with this process's counts."""
    rank, world = process_group_rank()
    mine = bench.questions[rank::world]
    reasoning = THINK_OPEN in str(getattr(tok, "chat_template", None) or "")
    requests = [Request(q.id, generate_messages(bench, q, shots, system_prompt, reasoning)) for q in mine]
    # an R1-style template opens the think block itself: then an answer without </think> never left it
    opened = bool(requests) and render_prompt(tok, requests[0].messages, enable_thinking).rstrip().endswith(THINK_OPEN)
    if cache is not None and rank:
        cache = cache.with_suffix(f".rank{rank}.jsonl")
    t0 = time.perf_counter()
    with progress(len(requests) * settings.n_samples, f"{bench.name} (generate)") as bar:
        run = generate(requests, settings, _Counted(backend, bar), cache=cache)
    seconds = time.perf_counter() - t0
    answers = defaultdict(list)
    for g in run.generations:
        answers[g.id].append(g)
    part = [_sampled_outcome(q, answers[q.id], opened) for q in mine]
    return _gathered(part, rank, world), seconds, run


def _sampled_outcome(q: Question, answers: list, opened: bool) -> Outcome:
    samples = []
    for g in answers:
        found = extract_choice(g.text, q.options, thinking=opened)
        samples.append(Sample(id=q.id, sample=g.sample, status=found.status, chosen=found.letters,
                              correct=sorted(q.answer)))
    vote = question_score(q.id, samples)
    return Outcome(id=q.id, subject=q.subject, chosen=vote.majority, correct=list(q.answer), ok=vote.majority_ok,
                   output=answers[0].text, samples=samples)
