"""One multiple-choice file read as questions: its layout, its answer convention, and what makes a question unusable.

Answers may be letters ("B", "ACE", "A,C", a list), the option's text, the option's field name (MedMCQA-style
"opc"), or option numbers. Numbers are read in one convention per file, said in a note: counting from 0 (the HF
hub's), or from 1 for MedMCQA's `cop` where the file shows it; a number outside the options, or a file that mixes
numbers with letters or 0-based with 1-based numbers, is an error. A question is malformed when its answer is
missing or empty, names an empty option, or has the same text as another option (a right choice could not be told
from a wrong one). A file that holds C-Eval's val rows then its test rows gives only the val rows: the test labels
are unpublished. `medscale.eval.bench` decides which files make a benchmark and what becomes of a malformed or
repeated question.
"""
from __future__ import annotations

import re
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

from medscale.data.sources import DataError, read_records
from medscale.errors import UserError
from medscale.recipe import BenchmarkSource

LETTERS = "ABCDEFGHIJ"


class BenchmarkError(UserError):
    """A benchmark or question file medscale cannot read, with the file, line and what to change."""


@dataclass
class Question:
    """One multiple-choice question. `answer` holds the correct letter(s); several letters are scored as a set."""

    id: str  # "<file stem>:<line>": stable across runs of the same file, so two results pair by id
    subject: str
    question: str
    options: dict[str, str]
    answer: tuple[str, ...]
    _: KW_ONLY
    source: str  # file:line
    record_id: str | None = None  # the record's own id field, where it has one

    @property
    def multi(self) -> bool:
        return len(self.answer) > 1


_QUESTION_KEYS = ("question", "Question", "problem_text", "problem", "stem", "题目", "问题")
_ANSWER_KEYS = ("answer_idx", "answer", "Answer", "cop", "answerKey", "label", "correct_answer", "答案")
_OPTION_CONTAINERS = ("options", "option", "choices", "Options", "选项")
_MEDMCQA = ("opa", "opb", "opc", "opd", "ope")
_SUBJECT_KEYS = ("subject", "subject_name", "Subject")
_ID_KEYS = ("id", "problem_id", "qid", "question_id")
FIX = ("map the fields with --question-field, --options-field (a field holding a dict or list, or the option "
       "fields comma-separated, e.g. opa,opb,opc,opd) and --answer-field; in a recipe: eval.benchmarks: "
       "[{path: FILE, question_field: ..., options_field: ..., answer_field: ...}]")


def recipe_entry(path: str, **keys: str) -> str:
    """How a recipe says what a command-line flag says, for messages that either may have caused."""
    return f"in a recipe: eval.benchmarks: [{{path: {path}, {', '.join(f'{k}: {v}' for k, v in keys.items())}}}]"


@dataclass
class _Layout:
    question: str
    options: str | list[str]  # a container field, or the per-option fields in order
    answer: str
    index_base: int = 0  # what option number A has, where answers are numbers (decided per file)

    def describe(self) -> str:
        opts = self.options if isinstance(self.options, str) else ",".join(self.options)
        return f"question={self.question} options={opts} answer={self.answer}"


def _detect_layout(rec: dict, src: BenchmarkSource) -> _Layout | None:
    question = src.question_field or next((k for k in _QUESTION_KEYS if k in rec), None)
    if src.options_field:
        names = [n.strip() for n in src.options_field.split(",") if n.strip()]
        options: str | list[str] | None = names if len(names) > 1 else names[0]
    elif container := next((k for k in _OPTION_CONTAINERS if isinstance(rec.get(k), (dict, list))), None):
        options = container
    elif len(cols := [c for c in LETTERS if c in rec]) >= 2:
        options = cols
    elif len(cols := [c for c in _MEDMCQA if c in rec]) >= 2:
        options = cols
    else:
        options = None
    answer = src.answer_field or next((k for k in _ANSWER_KEYS if k in rec), None)
    if question is None or options is None or answer is None:
        return None
    return _Layout(question, options, answer)


def _options(rec: dict, layout: _Layout) -> list[str]:
    """The options in their published order, empty ones kept as "" (dropped later, after the answer is mapped)."""
    if isinstance(layout.options, list):
        return ["" if rec.get(k) is None else str(rec.get(k)).strip() for k in layout.options]
    value = rec.get(layout.options)
    if isinstance(value, dict):
        keys = [str(k).strip().upper() for k in value]
        if keys != list(LETTERS[: len(keys)]):
            raise ValueError(f"options keys {list(value)} are not the letters A, B, C, ...")
        return ["" if v is None else str(v).strip() for v in value.values()]
    if isinstance(value, list):
        return ["" if v is None else str(v).strip() for v in value]
    raise ValueError(f"field {layout.options!r} is {type(value).__name__}, not a dict or list of options")


def _empty(value: Any) -> bool:
    return value is None or value == [] or (isinstance(value, str) and not value.strip())


def _is_number(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and
                                                                        value.strip().isdigit())


_SEPARATED = re.compile(r"^[A-Za-z](\s*[,，、;/和及\s]\s*[A-Za-z])*$")


def _answer_letters(value: Any, options: list[str], layout: _Layout) -> list[str]:
    """Answer letters from a letter string ("B", "ACE", "A,C"), a list of letters, an option number, the option's
    field name ("opc") or the option's text."""
    n = len(options)
    fields = [f.lower() for f in layout.options] if isinstance(layout.options, list) else []
    if isinstance(value, list):
        out = [x for v in value for x in _answer_letters(v, options, layout)]
    elif isinstance(value, bool) or value is None:
        raise ValueError(f"answer {value!r} is not a letter, number or option text")
    elif _is_number(value):
        i = int(value) - layout.index_base
        if not 0 <= i < n:
            raise ValueError(f"answer {int(value)} is outside {layout.index_base}..{n - 1 + layout.index_base}: "
                             f"option numbers in this file count from {layout.index_base} ({layout.index_base} = A)")
        out = [LETTERS[i]]
    else:
        text = str(value).strip()
        if len(text) > 1 and text.lower() in fields:  # the option's field name: MedMCQA-style "opc"
            out = [LETTERS[fields.index(text.lower())]]
        elif text in options and not (len(text) == 1 and text.upper() in LETTERS[:n] and text.isupper()):
            out = [LETTERS[options.index(text)]]
        elif text.isascii() and (_SEPARATED.match(text) or text.isalpha()):
            out = [c.upper() for c in text if c.isalpha()]
        else:
            raise ValueError(f"answer {text!r} is not a letter, number, option field or the text of an option")
    for letter in out:
        if letter not in LETTERS[:n]:
            raise ValueError(f"answer letter {letter!r} is not among the options {LETTERS[0]}-{LETTERS[n - 1]}")
    return sorted(set(out))


def _question(rec: dict, layout: _Layout, subject: str, qid: str, where: str) -> Question:
    text = rec.get(layout.question)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty or missing question field {layout.question!r}")
    options = _options(rec, layout)
    if layout.answer not in rec:
        raise ValueError(f"missing answer: no field {layout.answer!r}")
    if _empty(rec[layout.answer]):
        raise ValueError(f"missing answer: field {layout.answer!r} is empty")
    answer = _answer_letters(rec[layout.answer], options, layout)
    kept = [(LETTERS[i], o) for i, o in enumerate(options) if o]
    empty_answer = [a for a in answer if not options[LETTERS.index(a)]]
    if empty_answer:
        raise ValueError(f"answer {','.join(empty_answer)} is an empty option")
    if len(kept) < 2:
        raise ValueError(f"fewer than two non-empty options ({len(kept)})")
    for a in answer:
        same = [letter for letter, o in kept if o == options[LETTERS.index(a)]]
        if len(same) > 1:
            raise ValueError(f"options {' and '.join(same)} are identical ({options[LETTERS.index(a)][:40]!r}) and "
                             f"the answer is one of them: a right choice cannot be told from a wrong one")
    relabel = {old: LETTERS[i] for i, (old, _) in enumerate(kept)}  # empty options dropped: letters close up
    for key in _SUBJECT_KEYS:
        if isinstance(rec.get(key), str) and rec[key].strip():
            subject = rec[key].strip()
            break
    record_id = next((str(rec[k]).strip() for k in _ID_KEYS if not _empty(rec.get(k))), None)
    return Question(qid, subject, text.strip(), {relabel[o]: t for o, t in kept},
                    tuple(relabel[a] for a in answer), source=where, record_id=record_id)


def _width(rec: dict, layout: _Layout) -> int | None:
    try:
        return len(_options(rec, layout))
    except (ValueError, TypeError, AttributeError):
        return None  # a malformed row: reported with its line when it is read


def _index_base(rows: list[tuple[int, dict]], layout: _Layout, path: Path) -> int | None:
    """What option number A has where the answers are numbers (None: they are not), one convention per file:
    0 (the HF hub's), or 1 for MedMCQA's `cop` where the file answers n of n options and never 0 (its original
    release). A file whose numbers show both conventions, or that mixes numbers with letters, is an error."""
    numbered: list[tuple[int, list[int], int | None]] = []
    other = None
    for n, r in rows:
        value = r.get(layout.answer)
        values = value if isinstance(value, list) else [value]
        if _empty(value):
            continue
        if all(_is_number(v) for v in values):
            numbered.append((n, [int(v) for v in values], _width(r, layout)))
        elif other is None:
            other = (n, value)
    if not numbered:
        return None
    if other is not None:
        raise BenchmarkError(f"{path}: the answers mix conventions: line {numbered[0][0]} gives an option number "
                             f"({numbered[0][1][0]}), line {other[0]} a letter or text ({other[1]!r}); write every "
                             f"answer the same way (letters are unambiguous)")
    zero = next((n for n, vs, _ in numbered if 0 in vs), None)
    top = next(((n, w) for n, vs, w in numbered if w in vs), None)
    if zero is not None and top is not None:
        raise BenchmarkError(f"{path}: the answers mix conventions: line {zero} answers 0 (counting options from "
                             f"0) and line {top[0]} answers {top[1]} of {top[1]} options (counting from 1); write "
                             f"every answer the same way (letters are unambiguous)")
    if layout.answer != "cop" or zero is not None:
        return 0
    if top is None:
        seen = sorted({v for _, vs, _ in numbered for v in vs})
        raise BenchmarkError(f"{path}: cannot tell whether 'cop' counts options from 0 or from 1 (values seen: "
                             f"{seen}); write the answers as letters, or {FIX}")
    return 1


def _val_rows_first(rows: list[tuple[int, dict]]) -> int:
    """Rows before this index are C-Eval's val split, the rest its test split: its export holds val rows then test
    rows, each part numbered 0, 1, 2, ... with an integer `id`, so the ids read 0..k-1 then 0..m-1 (k, m >= 2). 0
    otherwise."""
    try:
        ids = [int(r.get("id")) for _, r in rows]
    except (TypeError, ValueError):
        return 0
    k = next((i for i in range(1, len(ids)) if ids[i] == 0), 0)
    m = len(ids) - k
    return k if k >= 2 and m >= 2 and ids == list(range(k)) + list(range(m)) else 0


def load_file(path: Path, src: BenchmarkSource, skip_bad: bool, skipped: list[str],
              notes: list[str]) -> tuple[list[Question], int]:
    """(questions, test rows set aside) of one file. A file that holds C-Eval's val rows then its test rows gives
    its val rows: C-Eval publishes no test labels, so a copy's test answers are unofficial (lm-evaluation-harness
    and OpenCompass score val too). A malformed question raises, or with skip_bad goes to `skipped` as
    "id (file:line): reason"; the convention applied to numbered answers goes to `notes`."""
    try:
        rows = list(read_records(path))
    except DataError as e:
        raise BenchmarkError(str(e)) from None
    if not rows:
        raise BenchmarkError(f"{path}: empty file, no questions")
    bad_rows = [(n, r) for n, r in rows if not isinstance(r, dict)]
    if bad_rows:
        raise BenchmarkError(f"{path}:{bad_rows[0][0]}: expected an object with question, options and answer, got "
                             f"{type(bad_rows[0][1]).__name__}")
    val = _val_rows_first(rows)
    held_out, rows = (len(rows) - val, rows[:val]) if val else (0, rows)
    line, first = rows[0]
    layout = _detect_layout(first, src)
    if layout is None:
        raise BenchmarkError(f"{path}:{line}: unknown multiple-choice layout; fields found: "
                             f"{sorted(map(str, first))}; known: C-Eval/CMMLU (question, A..E, answer), MedQA "
                             f"(question, options{{A:..}}, answer_idx), medLLM (problem_text, choices[], answer), "
                             f"MedMCQA (question, opa..opd, cop), CMB (question, option{{A:..}}, answer); {FIX}")
    base = _index_base(rows, layout, path)
    if base is not None:
        layout.index_base = base
        notes.append(f"{path}: answers are option numbers, read counting from {base} ({base} = A, {base + 1} = B)")
    questions: list[Question] = []
    for n, rec in rows:
        qid = f"{path.stem}:{n}"
        try:
            q = _question(rec, layout, path.stem, qid, f"{path}:{n}")
        except (ValueError, TypeError, AttributeError) as e:
            if not skip_bad:
                raise BenchmarkError(f"{path}:{n} (question {qid}): {e} (layout {layout.describe()}; fields found: "
                                     f"{sorted(map(str, rec))}); fix the record, or pass --skip-bad to score the "
                                     f"usable questions (--max-bad FRACTION: how many may be left out; "
                                     f"{recipe_entry(src.path, skip_bad='true', max_bad='FRACTION')}); if the "
                                     f"fields are mapped wrongly, {FIX}") from None
            skipped.append(f"{qid} ({path}:{n}): {e}")
            continue
        questions.append(q)
    return questions, held_out
