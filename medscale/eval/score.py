"""Scoring multiple-choice questions: answer-letter log-likelihood, option-text log-likelihood, or
generate-then-extract. Batched and padding-aware on whatever device the model is on; data-parallel when
torch.distributed is initialised (each process scores a shard, rank 0 and every other rank get all outcomes).
"""
from __future__ import annotations

import re
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch

from medscale.eval.bench import Benchmark, Question
from medscale.eval.generate import generate, progress
from medscale.eval.prompt import mcq_messages, mcq_prompt
from medscale.eval.result import Outcome
from medscale.recipe import GenerationSection

if TYPE_CHECKING:
    from medscale.eval.scores import ScoreLog

MODES = ("letter", "option", "generate")


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


def _outcome(q: Question, chosen: list[str] | None, scores: dict[str, float], output: str | None = None) -> Outcome:
    return Outcome(id=q.id, subject=q.subject, chosen=chosen, correct=list(q.answer),
                   ok=chosen is not None and chosen == sorted(q.answer),
                   scores={k: round(v, 4) for k, v in scores.items()}, output=output)


def _batches(order: list[int], size: int):
    for start in range(0, len(order), size):
        yield order[start:start + size]


def _letter_ids(tok, letters: str) -> dict[str, int]:
    ids = {letter: tok.encode(letter, add_special_tokens=False)[0] for letter in letters}
    if len(set(ids.values())) != len(ids):
        raise ValueError("the tokenizer gives two option letters the same first token")
    return ids


def _score_letter(model, tok, bench: Benchmark, qs: list[Question], shots: int, batch_size: int,
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


def _score_option(model, tok, bench: Benchmark, qs: list[Question], shots: int, batch_size: int,
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


_FINAL = [re.compile(r"答案\s*(?:是|为|应为|应选|选)?\s*[:：]?\s*\**\s*([A-J](?:\s*[、,，和及/]?\s*[A-J])*)(?![A-Za-z])"),
          re.compile(r"(?i:answer)\s*(?i:is)?\s*[:：]?\s*\**\s*\(?([A-J](?:\s*(?:,|/|&|and)?\s*[A-J])*)\)?(?![A-Za-z])")]
_LEADING = re.compile(r"^\W*([A-J](?:\s*[、,，]?\s*[A-J])*)(?![A-Za-z])")


def extract_letters(answer: str, valid: set[str]) -> list[str] | None:
    """The letters of a generated answer: the last "答案：X" / "Answer: X", else letters it starts with; None when
    there are none or they name no option."""
    for pattern in _FINAL:
        found = pattern.findall(answer)
        if found:
            letters = sorted(set(re.findall(r"[A-J]", found[-1])))
            return letters if letters and set(letters) <= valid else None
    m = _LEADING.match(answer)
    if m:
        letters = sorted(set(re.findall(r"[A-J]", m.group(1))))
        return letters if set(letters) <= valid else None
    return None


def _score_generate(model, tok, bench: Benchmark, qs: list[Question], shots: int, batch_size: int,
                    system_prompt: str | None, generation: GenerationSection, seed: int) -> list[Outcome]:
    convs = [mcq_messages(q, bench.language, "generate", bench.shots_for(q, shots), system_prompt) for q in qs]
    gens = generate(model, tok, convs, generation, greedy=True, batch_size=batch_size, seed=seed,
                    desc=f"{bench.name} (generate)")
    return [_outcome(q, extract_letters(g.answer, set(q.options)), {}, g.answer) for q, g in zip(qs, gens)]


def score(model, tok, bench: Benchmark, mode: str = "letter", shots: int = 0, batch_size: int = 8,
          system_prompt: str | None = None, generation: GenerationSection | None = None,
          seed: int = 0, log: "ScoreLog | None" = None) -> tuple[list[Outcome], float]:
    """(outcomes in the benchmark's order, seconds). Under torch.distributed every process scores every world-th
    question and all of them return the gathered outcomes. Generate mode decodes greedily (reproducible) with
    the generation section's think budget and token limits. With `log` (an evaluation job's ScoreLog), questions
    go in batches of `batch_size` in the benchmark's order, each batch kept as it finishes and skipped when an
    earlier attempt kept all of it (the same batches, so the same result as an uninterrupted run)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    rank, world = process_group_rank()
    mine = bench.questions[rank::world]
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()

    def run(qs: list[Question], bar) -> list[Outcome]:
        if mode == "generate":
            return _score_generate(model, tok, bench, qs, shots, batch_size, system_prompt,
                                   generation or GenerationSection(), seed)
        return (_score_letter if mode == "letter" else _score_option)(model, tok, bench, qs, shots, batch_size,
                                                                      system_prompt, bar)

    try:
        with progress(len(mine), f"{bench.name} ({mode})") if mode != "generate" else nullcontext() as bar:
            if log is None:
                part = run(mine, bar)
            else:
                part = []
                for start in range(0, len(mine), batch_size):
                    qs = mine[start:start + batch_size]
                    if all(q.id in log.done for q in qs):
                        part += [log.done[q.id] for q in qs]
                        if bar is not None:  # generate mode's own progress bar counts what it generates
                            bar.update(len(qs))
                        continue
                    outs = run(qs, bar)
                    log.add(outs)
                    part += outs
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    gathered = gather_all([(rank + world * k, o) for k, o in enumerate(part)], world)
    return [o for _, o in sorted(gathered, key=lambda x: x[0])], seconds
