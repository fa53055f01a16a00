"""What a model is asked: multiple-choice benchmarks and open-ended question files.

Every common multiple-choice layout loads as it is published, with no conversion script:
C-Eval/CMMLU columns (`question`/`Question`, `A`..`E`, `answer`/`Answer`), MedQA (`options` dict + `answer_idx`),
medLLM_QA_benchmark (`problem_text`, `choices` list, `answer` letter list), MedMCQA (`opa`..`opd` + `cop`),
CMB (`option` dict + an answer string such as "ACE"); json, jsonl or csv; a file, or a folder of subject files
(CMMLU's `test/` + `dev/`). How one file's records become questions is `medscale.eval.mcq`; here, which files
make a benchmark and what becomes of its questions.

Nothing is miscounted in silence: a question asked twice (the same record id, or the same text and options)
narrows the interval of every verdict, so it is an error naming both places unless `dedupe` drops it; malformed
questions stop the load unless `skip_bad` leaves them out, named, up to `max_bad`; k-shot examples never come from
the scored questions; every result says which file, split and count it measured.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import random
from dataclasses import KW_ONLY, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from medscale import settings
from medscale.data.formats import detect, to_messages
from medscale.data.sources import DataError, read_records
from medscale.benchmarks import BUILTINS
from medscale.eval.mcq import FIX, BenchmarkError, Question, load_file, recipe_entry
from medscale.recipe import BenchmarkSource

DATA_SUFFIXES = (".jsonl", ".json", ".csv")
MAX_BAD_FRACTION = 0.01  # even with skip_bad, more malformed questions than this means a wrong layout or file


@dataclass
class Benchmark:
    name: str
    language: str  # "zh" | "en": picks the instruction language
    questions: list[Question]
    dev: list[Question] = field(default_factory=list)  # the few-shot pool (a dev/ folder), never scored
    skipped: list[str] = field(default_factory=list)  # "id (file:line): reason" of malformed questions left out
    _: KW_ONLY
    files: list[str] = field(default_factory=list)
    source: str = ""  # the file or folder it was read from
    split: str = "every row"  # which part of it is scored
    total: int = 0  # questions in that part, before a --limit subset
    notes: list[str] = field(default_factory=list)  # conventions applied and questions dropped, for every result

    def fingerprint(self) -> str:
        """Hash of the scored questions (ids, text, options, answers): two results pair only on equal sets."""
        h = hashlib.sha256()
        for q in self.questions:
            h.update(json.dumps([q.id, q.question, q.options, q.answer], ensure_ascii=False).encode())
        return h.hexdigest()[:16]

    def subset(self, limit: int | None, seed: int = 0) -> "Benchmark":
        """A fixed random subset (same seed, same questions: evaluations at every step stay paired)."""
        if limit is None or limit >= len(self.questions):
            return self
        keep = sorted(random.Random(f"{seed}:{self.name}").sample(range(len(self.questions)), limit))
        return replace(self, questions=[self.questions[i] for i in keep])

    def for_shots(self, k: int, seed: int = 0) -> "Benchmark":
        """The benchmark ready for k-shot prompts. Without a dev split, k seeded questions become the examples and
        leave the scored set (an example's answer, shown, must not be scored), and a note names them."""
        if k <= 0 or self.dev:
            return self
        if len(self.questions) <= k:
            raise BenchmarkError(f"{self.source}: --shots {k} needs a dev split or more than {k} questions to take "
                                 f"the examples from (it has {len(self.questions)} and no dev split)")
        picked = set(random.Random(f"{seed}:{self.name}:shots").sample(range(len(self.questions)), k))
        dev = [q for i, q in enumerate(self.questions) if i in picked]
        note = (f"{self.name} has no dev split: the {k} examples before every question are "
                f"{', '.join(q.id for q in dev)}, taken out of scoring")
        return replace(self, questions=[q for i, q in enumerate(self.questions) if i not in picked], dev=dev,
                       split=f"{self.split} less {k} examples", total=self.total - k, notes=[*self.notes, note])

    def shots_for(self, q: Question, k: int) -> list[Question]:
        """k worked examples for q from the dev split, q's subject first (for_shots makes one where there is none)."""
        if k <= 0:
            return []
        if not self.dev:
            raise ValueError(f"{self.name}: {k}-shot prompts without a dev split; take one with for_shots")
        same = [d for d in self.dev if d.subject == q.subject]
        return (same + [d for d in self.dev if d.subject != q.subject])[:k]


# --------------------------------------------------------------------------- built-in benchmarks


def eval_data_dir(override: str | Path | None = None) -> Path:
    """Where built-in benchmarks live: the given dir, else $MEDSCALE_EVAL_DATA, else ${MEDSCALE_DATA:-~/data}/eval."""
    if override:
        return Path(override).expanduser()
    return settings.EVAL_DATA.get() or settings.DATA.get() / "eval"


def load_benchmark(ref: str | BenchmarkSource, data_dir: str | Path | None = None, skip_bad: bool | None = None,
                   max_bad: float | None = None, dedupe: bool = False) -> Benchmark:
    """A built-in name (under the eval data dir) or a file/folder path, as a Benchmark.

    Published built-in sets are read as they are: a malformed question there is skipped and listed in the result,
    and a repeated one is kept and counted in a note (you cannot fix upstream data without changing the benchmark).
    In your own files either stops with the file and line, unless `skip_bad` (implied by `max_bad`) says to score
    the usable questions, up to `max_bad` of them malformed (default 1%), and `dedupe` to keep the first of each
    repeated question. Each defaults to the source's own key (a recipe's eval.benchmarks entry), so pre-flight,
    eval steps and the end-of-run verdict read a benchmark as `medscale eval` does."""
    src = ref if isinstance(ref, BenchmarkSource) else BenchmarkSource(path=str(ref))
    max_bad = src.max_bad if max_bad is None else max_bad
    dedupe = dedupe or src.dedupe
    builtin = BUILTINS.get(src.path)
    if builtin is not None:
        root = eval_data_dir(data_dir)
        path = root / builtin.path
        if not path.exists():
            raise BenchmarkError(
                f"benchmark {src.path}: {path} does not exist; put {builtin.origin} there, or point the eval data "
                f"dir elsewhere (--data-dir, eval.data_dir or $MEDSCALE_EVAL_DATA; now {root})")
        name, language, skip = src.path, builtin.language, True if skip_bad is None else skip_bad
    else:
        path = Path(src.path).expanduser()
        if not path.exists():
            close = difflib.get_close_matches(src.path, list(BUILTINS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise BenchmarkError(f"benchmark {src.path}: no such file or folder{hint} (built-in: "
                                 f"{', '.join(BUILTINS)})")
        name, language, skip = path.stem, None, src.skip_bad if skip_bad is None else skip_bad
    if max_bad is not None:
        if skip is False and skip_bad is False:
            raise BenchmarkError(f"--max-bad {max_bad} tolerates malformed questions and --strict stops at the "
                                 f"first: pass one of them")
        skip = True
    test_files, dev_files = _split_files(path)
    bench = Benchmark(name, "", [], files=[str(f) for f in test_files + dev_files], source=str(path))
    held_out: list[int] = []
    for f in test_files:
        questions, n = load_file(f, src, skip, bench.skipped, bench.notes)
        bench.questions += questions
        held_out.append(n)
    for f in dev_files:
        bench.dev += load_file(f, src, skip, bench.skipped, bench.notes)[0]
    bench.split = _split_said(bool(dev_files), held_out, bench.notes)
    _check_repeats(bench, src.path, dedupe=dedupe, published=builtin is not None)
    total = len(bench.questions) + len(bench.skipped)
    if not bench.questions:
        raise BenchmarkError(f"{path}: no questions" + (f" (all {total} skipped; first: {bench.skipped[0]})"
                                                         if bench.skipped else ""))
    limit = MAX_BAD_FRACTION if max_bad is None else max_bad
    if len(bench.skipped) > limit * total:
        enough = f"{len(bench.skipped) / total:.3g}"
        raise BenchmarkError(f"{path}: {len(bench.skipped)} of {total} questions are malformed, more than --max-bad "
                             f"{limit:g} allows; first: {bench.skipped[0]}; if the fields are mapped right, pass "
                             f"--max-bad {enough} to score the {len(bench.questions)} usable ones "
                             f"({recipe_entry(src.path, max_bad=enough)}), else {FIX}")
    bench.language = language or guess_language(q.question for q in bench.questions)
    bench.total = len(bench.questions)
    return bench


def _split_said(has_dev: bool, held_out: list[int], notes: list[str]) -> str:
    """Which part of the files is scored; C-Eval's test rows, set aside per file, are counted in a note."""
    if any(held_out):
        notes.append(f"{sum(held_out)} C-Eval test rows are not scored: C-Eval publishes no test labels (the "
                     f"answers in such a copy are unofficial), so its val rows are, as lm-evaluation-harness and "
                     f"OpenCompass do")
    rows = ("val rows (test rows not scored)" if held_out and all(held_out) else
            "every row (val rows only, in C-Eval files)" if any(held_out) else "")
    if has_dev:
        return f"test/{': ' + rows if rows else ''} (dev/ gives the examples)"
    return rows or "every row"


def _check_repeats(bench: Benchmark, ref: str, dedupe: bool, published: bool) -> None:
    """A question asked twice is counted twice: n grows and the interval narrows on no new evidence. Repeats are
    the same record id within a file's split, or the same question text and options anywhere in the benchmark
    (a dev example that repeats a scored question would show its answer). Raises naming both places, unless
    `dedupe` (drop all but the first, and say how many) or `published` (keep, and say how many)."""
    first: dict[tuple, str] = {}
    repeats: list[tuple[Question, str, str]] = []  # (the repeat, where it was first seen, what repeats)
    for part in (bench.dev, bench.questions):
        for q in part:
            file = q.source.rpartition(":")[0]
            keys = [(("text", " ".join(q.question.split()), tuple(sorted(q.options.values()))), "question and options")]
            if q.record_id is not None:
                keys.insert(0, (("id", file, part is bench.dev, q.record_id), f"id {q.record_id!r}"))
            seen = next(((first[k], what) for k, what in keys if k in first), None)
            if seen is None:
                for k, _ in keys:
                    first[k] = q.source
            else:
                repeats.append((q, *seen))
    if not repeats:
        return
    q, where, what = repeats[0]
    example = f"{q.source} repeats {where} (the same {what})"
    if dedupe:
        dropped = {id(r) for r, _, _ in repeats}
        bench.questions = [q for q in bench.questions if id(q) not in dropped]
        bench.dev = [q for q in bench.dev if id(q) not in dropped]
        bench.notes.append(f"--dedupe dropped {len(repeats)} repeated questions, keeping the first of each "
                           f"(first: {example})")
    elif published:
        bench.notes.append(f"{len(repeats)} questions repeat an earlier one, as published, and are scored each time "
                           f"(first: {example}); --dedupe scores each once")
    else:
        raise BenchmarkError(f"{example}; {len(repeats)} repeated questions in {bench.source}: a question scored "
                             f"twice counts twice and narrows the interval; remove the repeats, or keep the first of "
                             f"each: pass --dedupe ({recipe_entry(ref, dedupe='true')})")


def guess_language(texts) -> str:
    """zh when CJK characters make up a fair share of the text, else en."""
    sample = "".join(t for _, t in zip(range(50), texts))
    cjk = sum(1 for c in sample if "\u4e00" <= c <= "\u9fff")
    return "zh" if cjk > 0.2 * max(1, len(sample.replace(" ", ""))) else "en"


def _data_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix in DATA_SUFFIXES)


def _split_files(path: Path) -> tuple[list[Path], list[Path]]:
    """(scored files, few-shot files). A folder with test/ scores test/ and takes examples from dev/ (CMMLU's
    layout); any other folder scores every data file in it."""
    if path.is_file():
        return [path], []
    if (path / "test").is_dir():
        dev = path / "dev"
        return _data_files(path / "test"), _data_files(dev) if dev.is_dir() else []
    files = _data_files(path)
    if not files:
        raise BenchmarkError(f"{path}: no {', '.join(DATA_SUFFIXES)} files in this folder")
    return files, []


# --------------------------------------------------------------------------- open-ended question files


@dataclass
class OpenQuestion:
    """A question for `compare`/`chat`: the conversation so far (ending with the user's turn) and, where the file
    has one, a reference answer."""

    id: str
    messages: list[dict]
    reference: str | None
    source: str

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]


_PROMPT_KEYS = ("question", "query", "prompt", "instruction", "medical_case", "input", "problem_text", "问题")
_REFERENCE_KEYS = ("reference", "answer", "model_output", "output", "response", "doctor_diagnosis", "答案")


def default_questions() -> Path:
    """Seed 003's ten questions, shipped with medscale."""
    return Path(str(resources.files("medscale.eval") / "questions" / "seed003_zh.jsonl"))


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list) and value and isinstance(value[-1], (list, tuple)) and len(value[-1]) == 2:
        return _text(value[-1][1])  # HuatuoGPT-II conversation outputs: [[user, assistant], ...]
    return None


def _open_questions(rec: Any, where: str, qid: str) -> list[OpenQuestion]:
    if isinstance(rec, str):
        return [OpenQuestion(qid, [{"role": "user", "content": rec.strip()}], None, where)] if rec.strip() else []
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object or a string, got {type(rec).__name__}")
    rid = str(rec.get("id", qid))
    if isinstance(rec.get("QA_pairs"), list):  # CMB-Clin: one case, several questions about it
        case = str(rec.get("description") or "").strip()
        return [OpenQuestion(f"{rid}-{k}", [{"role": "user", "content": f"{case}\n\n{p['question']}".strip()}],
                             _text(p.get("answer")), where)
                for k, p in enumerate(rec["QA_pairs"], start=1)]
    if isinstance(rec.get("model_input"), list) and rec["model_input"]:  # HuatuoGPT-II conversations
        msgs = [{"role": m["role"], "content": str(m["content"])} for m in rec["model_input"]]
        return [OpenQuestion(rid, msgs, _text(rec.get("model_output")), where)]
    key = next((k for k in _PROMPT_KEYS if isinstance(rec.get(k), str) and rec[k].strip()), None)
    if key is not None:
        ref = next((t for k in _REFERENCE_KEYS if k != key and (t := _text(rec.get(k)))), None)
        return [OpenQuestion(rid, [{"role": "user", "content": rec[key].strip()}], ref, where)]
    fmt = detect(rec)  # any SFT layout: the conversation up to its last answer, which is the reference
    if fmt is not None:
        msgs = to_messages(rec, fmt)
        ref = msgs.pop()["content"] if msgs and msgs[-1]["role"] == "assistant" else None
        msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
        if msgs and msgs[-1]["role"] == "user":
            return [OpenQuestion(rid, msgs, ref, where)]
    raise ValueError(f"no question field; fields found: {sorted(map(str, rec))}; a question is one of "
                     f"{', '.join(_PROMPT_KEYS)}, QA_pairs (CMB-Clin), model_input (a message list), or a chat "
                     f"record (conversations/messages); a reference answer one of {', '.join(_REFERENCE_KEYS)}")


def load_questions(path: str | Path | None = None) -> list[OpenQuestion]:
    """Open-ended questions for `compare`: .txt (one a line), or json/jsonl/csv in any layout above; default:
    seed 003's ten questions."""
    path = Path(path).expanduser() if path else default_questions()
    if not path.is_file():
        raise BenchmarkError(f"question file {path} does not exist")
    out: list[OpenQuestion] = []
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        out = [OpenQuestion(str(n), [{"role": "user", "content": t.strip()}], None, f"{path}:{n}")
               for n, t in enumerate(lines, start=1) if t.strip()]
    else:
        try:
            for n, rec in _raw_records(path):
                try:
                    out += _open_questions(rec, f"{path}:{n}", str(n))
                except (ValueError, TypeError, KeyError, AttributeError) as e:
                    raise BenchmarkError(f"{path}:{n}: {e}") from None
        except DataError as e:
            raise BenchmarkError(str(e)) from None
    if not out:
        raise BenchmarkError(f"{path}: empty file, no questions")
    return out


def _raw_records(path: Path):
    """Like read_records, but a JSON array may hold strings too (a plain list of questions)."""
    if path.suffix == ".json":
        text = path.read_bytes().decode("utf-8-sig")
        if not text.strip():
            return []
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
        return list(enumerate(data if isinstance(data, list) else [data], start=1))
    return list(read_records(path))
