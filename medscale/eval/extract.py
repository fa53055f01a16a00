"""The chosen option(s) of a generated answer, the way R1-style reasoning models write them.

Only the text after the last </think> is read: a letter weighed while reasoning is not a choice. Two outcomes are
kept apart because they mean different things: `over_budget` (the model never closed its think block: it ran out
of tokens, a budget question) and `no_answer` (it answered, but names no option: an instruction-following
question). Text is NFKC-normalised first, so full-width letters and colons (Ａ, ：) read as their ASCII forms.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Literal

from medscale.data.chat import split_think

Status = Literal["ok", "over_budget", "no_answer"]

# Option letters: capitals (one, or run together: ACD), or one lower case only where it cannot be an English word ("answer is a bit ...").
_L = r"(?:[A-J]{1,10}(?![A-Za-z])|[a-j](?=\s*(?:$|[.。,，;；)\]）:：*、和]|\s*(?:and|or)\s+[a-jA-J]\b)))"
_LETTERS = rf"{_L}(?:\s*(?:[、,，/&和及与]|and)?\s*{_L})*"
_WRAP = r"[\s*:：(（\[【]*"  # markdown bold, colon, opening bracket between a marker and its letters

# Ordered by how explicit the conclusion is; within the answer the last match of the first pattern that matches wins.
_PATTERNS = [
    re.compile(rf"\\boxed\{{\s*(?:\\text\{{)?\s*({_LETTERS})"),
    re.compile(rf"(?:正确答案|最终答案|答案)\s*(?:应该?|就)?\s*(?:是|为|选|选择)?{_WRAP}(?:选项)?{_WRAP}({_LETTERS})"),
    re.compile(rf"(?:故|所以|因此|因而|综上所述?[,，]?|应|本题)\s*(?:应)?\s*选(?:择)?{_WRAP}(?:选项)?{_WRAP}({_LETTERS})"),
    re.compile(rf"(?:正确|最终|最佳)?选项\s*(?:应该?)?\s*(?:是|为)?{_WRAP}({_LETTERS})"),
    re.compile(rf"(?i:(?:correct|final|best)\s+(?:answer|option|choice)|answer|option)\s*(?i:is|would be|should be)?"
               rf"{_WRAP}(?i:option\s*)?({_LETTERS})"),
]
_LAST_LINE = re.compile(rf"^[\s*#>(（\[【]*({_LETTERS})[\s*)）\]】.。:：]*(?:$|[.。:：、]\s*\S.*$)")


@dataclass(frozen=True)
class Extraction:
    status: Status
    letters: list[str] | None  # sorted, upper case; None unless status == "ok"
    answer: str  # the text the letters were read from (after </think>)


def _letters(found: str) -> list[str]:
    return sorted({c.upper() for c in re.findall(r"[A-Ja-j]", re.sub(r"and", "", found))})


def extract_choice(text: str, options: Iterable[str], thinking: bool = False) -> Extraction:
    """The option letters the answer concludes with. `thinking`: the prompt opened a think block (R1-Distill's
    template does), so a text without </think> never left it."""
    _, answer = split_think(unicodedata.normalize("NFKC", text), opened=thinking)
    if answer is None:
        return Extraction("over_budget", None, "")
    valid = set(options)
    for pattern in _PATTERNS:
        found = pattern.findall(answer)
        if found:
            return _checked(_letters(found[-1]), valid, answer)
    lines = [line for line in answer.splitlines() if line.strip()]
    m = _LAST_LINE.match(lines[-1]) if lines else None
    if m:
        return _checked(_letters(m.group(1)), valid, answer)
    return Extraction("no_answer", None, answer)


def _checked(letters: list[str], valid: set[str], answer: str) -> Extraction:
    """A conclusion naming a letter that is not an option (E of four) is no answer, not a wrong one."""
    if letters and set(letters) <= valid:
        return Extraction("ok", letters, answer)
    return Extraction("no_answer", None, answer)
