"""Degeneration signals: cheap, judge-free checks on every generated answer, and whether a fine-tune degenerates
significantly more often than its base on the same questions.

Seed 004's failures (token loops, reasoning that never ends, answers that drift out of the question's language) are
visible in the text itself, so they are counted without a judge. Each answer gets `signals(question, text)`; a model's
answers get `count(...)`; `versus(base, tuned)` pairs two counts question by question (McNemar's exact test, the
same test as the benchmark verdicts) and says DEGENERATE when the fine-tune is significantly worse.
"""
from __future__ import annotations

import re
from typing import Sequence

from pydantic import Field

from medscale.data.chat import THINK_OPEN, split_think
from medscale.eval.result import _Model
from medscale.eval.stats import mcnemar_exact
from medscale.verdicts import KINDS, Counts, DegenerationVerdict

NGRAM = 3  # units (a CJK character, a Latin word, a punctuation mark) per n-gram of the repeated-share check
REPEATED_SHARE = 0.5  # more than half of the 3-grams seen earlier in the same text: it mostly repeats itself (a
# healthy answer of a few hundred characters repeats about a tenth; a sampled loop that stutters, two thirds and more)
MIN_UNITS = 30  # below this many units the repeated share says nothing
MAX_PERIOD = 120  # longest loop (units) looked for at the tail
MIN_TAIL = 24  # a looping tail covers at least this many units and at least three copies of its period
MIN_LETTERS = 6  # fewer CJK characters + Latin letters than this: no language is read
LENGTH_RATIO = 4.0  # longer than 4x or shorter than 1/4 of the base's answer to the same question
MIN_CHARS = 20  # lengths are compared from this many characters up (a 3-character base answer is not a norm)
ALPHA = 0.05

_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]|[A-Za-z0-9]+|\S")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")


class Signals(_Model):
    """What is wrong with one answer (all False: nothing)."""

    looping: bool = Field(description="a periodic tail, or most of its n-grams repeated")
    unclosed_think: bool = Field(description="a think block opened and never closed")
    empty_answer: bool = Field(description="nothing after the closed think block")
    wrong_language: bool = Field(description="answered in English to a Chinese question, or the other way")
    length_off: bool = Field(False, description="blown up or collapsed against the base's answer")
    chars: int = Field(description="characters generated, think block included, whitespace left out")

    @property
    def degenerate(self) -> bool:
        return any(getattr(self, k) for k in KINDS)

    def reasons(self) -> list[str]:
        return [k for k in KINDS if getattr(self, k)]


def units(text: str) -> list[str]:
    return _UNIT.findall(text)


def looping(text: str) -> bool:
    """A tail that repeats one period at least three times, or a text whose n-grams are mostly repeats."""
    u = units(text)
    for p in range(1, min(MAX_PERIOD, len(u) // 3) + 1):
        run = 0
        while run < len(u) - p and u[-1 - run] == u[-1 - run - p]:
            run += 1
        if run >= 2 * p and run + p >= MIN_TAIL:
            return True
    grams = [tuple(u[i:i + NGRAM]) for i in range(len(u) - NGRAM + 1)]
    return len(u) >= MIN_UNITS and 1 - len(set(grams)) / len(grams) > REPEATED_SHARE


def language(text: str) -> str | None:
    """"zh" or "en" by script (a Latin word weighs about three CJK characters' worth of letters), None when the
    text has too few letters to tell."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if cjk + latin < MIN_LETTERS:
        return None
    return "zh" if 3 * cjk >= latin else "en"


def length_off(chars: int, base_chars: int) -> bool:
    """Blown up or collapsed: more than LENGTH_RATIO times the base's length (at least MIN_CHARS), or less than a
    LENGTH_RATIO-th of a base answer of MIN_CHARS or more."""
    return chars > LENGTH_RATIO * max(base_chars, MIN_CHARS) or (base_chars >= MIN_CHARS and
                                                                 chars * LENGTH_RATIO < base_chars)


def signals(question: str, text: str, *, opened: bool = False, base_chars: int | None = None) -> Signals:
    """The signals of one generated `text` (think block included, as generated) answering `question`. `opened`: the
    prompt itself opened the think block (R1-style templates). `base_chars`: the base's length on this question."""
    _, answer = split_think(text, opened)
    chars = len("".join(text.split()))
    asked, said = language(question), language(answer or "")
    return Signals(looping=looping(text), unclosed_think=answer is None, empty_answer=answer == "",
                   wrong_language=asked is not None and said is not None and asked != said,
                   length_off=base_chars is not None and length_off(chars, base_chars),
                   chars=chars)


def count(pairs: Sequence[tuple[str, str]], base_lengths: Sequence[int] | None = None, *,
          opened: bool = False) -> Counts:
    """Counts over (question, text) pairs; `base_lengths` (the base's `Counts.chars` on the same questions, same order)
    adds the length check."""
    each = [signals(q, t, opened=opened) for q, t in pairs]
    counts = Counts(n=len(each), **{k: sum(getattr(s, k) for s in each) for k in KINDS if k != "length_off"},
                    degenerate=sum(s.degenerate for s in each), flags=[s.degenerate for s in each],
                    chars=[s.chars for s in each])
    return counts if base_lengths is None else against(counts, base_lengths)


def against(counts: Counts, base_lengths: Sequence[int]) -> Counts:
    """`counts` with the length check against the base's lengths on the same questions (same order)."""
    if len(base_lengths) != counts.n:
        raise ValueError(f"{len(base_lengths)} base lengths for {counts.n} answers: count the same questions")
    off = [length_off(c, b) for c, b in zip(counts.chars, base_lengths)]
    flags = [f or o for f, o in zip(counts.flags, off)]
    return counts.model_copy(update={"length_off": sum(off), "flags": flags, "degenerate": sum(flags)})


def of_outcomes(questions: dict[str, str], outcomes: Sequence) -> Counts:
    """The counts of generate mode's answers: each outcome's first sample (`output`, think block included), asked
    `questions[id]`. A first sample over the think budget whose text holds no <think> shows that the prompt opened
    the block (R1-style templates), for every answer alike."""
    opened = any(o.samples and o.samples[0].status == "over_budget" and THINK_OPEN not in (o.output or "")
                 for o in outcomes)
    return count([(questions[o.id], o.output or "") for o in outcomes], opened=opened)


def versus(base: Counts, tuned: Counts, alpha: float = ALPHA) -> DegenerationVerdict:
    """DEGENERATE when the fine-tune's degenerate answers outnumber the base's on the same questions and McNemar's
    exact p is below `alpha`. The fine-tune's lengths are checked against the base's here when they were not yet."""
    if len(base.flags) != len(tuned.flags):
        raise ValueError(f"degeneration counts over {len(base.flags)} and {len(tuned.flags)} answers do not pair")
    if tuned.length_off is None and len(base.chars) == len(tuned.chars) == tuned.n:
        tuned = against(tuned, base.chars)
    base_only = sum(b and not t for b, t in zip(base.flags, tuned.flags))
    tuned_only = sum(t and not b for b, t in zip(base.flags, tuned.flags))
    p = mcnemar_exact(base_only, tuned_only)
    flagged = tuned_only > base_only and p < alpha
    line = (f"degenerate answers: base {base.degenerate}/{base.n} -> tuned {tuned.degenerate}/{tuned.n} "
            f"(McNemar p={p:.3g})" + (f": DEGENERATE ({tuned.kinds()})" if flagged else ""))
    return DegenerationVerdict(n=tuned.n, base=base.degenerate, tuned=tuned.degenerate, base_only=base_only,
                               tuned_only=tuned_only, p_mcnemar=p, flagged=flagged, line=line, counts=tuned)
