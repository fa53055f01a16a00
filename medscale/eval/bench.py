"""What a model is asked: multiple-choice benchmarks and open-ended question files.

Every common multiple-choice layout loads as it is published, with no conversion script:
C-Eval/CMMLU columns (`question`/`Question`, `A`..`E`, `answer`/`Answer`), MedQA (`options` dict + `answer_idx`),
medLLM_QA_benchmark (`problem_text`, `choices` list, `answer` letter list), MedMCQA (`opa`..`opd` + `cop`),
CMB (`option` dict + an answer string such as "ACE"); json, jsonl or csv; a file, or a folder of subject files
(CMMLU's `test/` + `dev/`). Questions keep their published letters where options are not empty; empty options
are dropped and the rest re-lettered. Anything that does not fit raises BenchmarkError naming the file, the line,
the fields found and the option that maps them.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from medscale.data.formats import detect, to_messages
from medscale.data.sources import DataError, read_records
from medscale.errors import UserError
from medscale.recipe import BENCHMARK_NAMES, BenchmarkSource

LETTERS = "ABCDEFGHIJ"
DATA_SUFFIXES = (".jsonl", ".json", ".csv")
MAX_BAD_FRACTION = 0.01  # even with skip_bad, more malformed questions than this means a wrong layout or file


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
    source: str  # file:line

    @property
    def multi(self) -> bool:
        return len(self.answer) > 1


@dataclass
class Benchmark:
    name: str
    language: str  # "zh" | "en": picks the instruction language
    questions: list[Question]
    dev: list[Question] = field(default_factory=list)  # the few-shot pool (a dev/val split), never scored
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" of malformed questions left out
    files: list[str] = field(default_factory=list)

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

    def shots_for(self, q: Question, k: int) -> list[Question]:
        """k worked examples for q: the dev split's questions of q's subject first, then any dev question. Without
        a dev split, k other questions of the benchmark (seeded by q's id; q itself is never its own example)."""
        if k <= 0:
            return []
        if self.dev:
            same = [d for d in self.dev if d.subject == q.subject]
            return (same + [d for d in self.dev if d.subject != q.subject])[:k]
        pool = [o for o in self.questions if o.id != q.id]
        return random.Random(q.id).sample(pool, min(k, len(pool)))


# --------------------------------------------------------------------------- built-in benchmarks


@dataclass(frozen=True)
class _Builtin:
    path: str  # under the eval data dir
    language: str
    origin: str  # where to get it, for the error when it is missing


BUILTINS: dict[str, _Builtin] = {
    "cmmlu-med": _Builtin("cmmlu_medical", "zh", "haonan-li/CMMLU data/{test,dev}/<medical subject>.csv"),
    "ceval-med": _Builtin("ceval_medical", "zh", "ceval/ceval-exam basic_medicine, clinical_medicine, physician "
                                                 "(val rows, then test rows, one .jsonl per subject)"),
    "medqa-zh": _Builtin("medllm_qa_benchmark/zh/medqa_zh.jsonl", "zh", "aistairc/medLLM_QA_benchmark data/zh"),
    "cmexam": _Builtin("medllm_qa_benchmark/zh/cmexam.jsonl", "zh", "aistairc/medLLM_QA_benchmark data/zh"),
    "medqa-en": _Builtin("medllm_qa_benchmark/en/medqa_en.jsonl", "en", "aistairc/medLLM_QA_benchmark data/en"),
    "mmlu-med": _Builtin("medllm_qa_benchmark/en/mmlu_en_medical.jsonl", "en", "aistairc/medLLM_QA_benchmark data/en"),
}
assert tuple(BUILTINS) == BENCHMARK_NAMES  # the recipe validates names against the same list
MEDICAL_ZH = ("cmmlu-med", "ceval-med", "medqa-zh", "cmexam")  # `medscale eval` without --bench


def eval_data_dir(override: str | Path | None = None) -> Path:
    """Where built-in benchmarks live: the given dir, else $MEDSCALE_EVAL_DATA, else ${MEDSCALE_DATA:-~/data}/eval."""
    if override:
        return Path(override).expanduser()
    if env := os.environ.get("MEDSCALE_EVAL_DATA"):
        return Path(env).expanduser()
    return Path(os.environ.get("MEDSCALE_DATA") or "~/data").expanduser() / "eval"


def load_benchmark(ref: str | BenchmarkSource, data_dir: str | Path | None = None,
                   skip_bad: bool | None = None) -> Benchmark:
    """A built-in name (under the eval data dir) or a file/folder path, as a Benchmark.

    Published built-in sets are read as they are: a malformed question there is skipped and listed in the result
    (you cannot fix upstream data without changing the benchmark). In your own files it stops with the file and
    line, unless `skip_bad` (or the source's `skip_bad`) says to count it as skipped."""
    src = ref if isinstance(ref, BenchmarkSource) else BenchmarkSource(path=str(ref))
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
            close = difflib.get_close_matches(src.path, BENCHMARK_NAMES, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise BenchmarkError(f"benchmark {src.path}: no such file or folder{hint} (built-in: "
                                 f"{', '.join(BENCHMARK_NAMES)})")
        name, language, skip = path.stem, None, src.skip_bad if skip_bad is None else skip_bad
    test_files, dev_files = _split_files(path)
    bench = Benchmark(name, "", [], files=[str(f) for f in test_files + dev_files])
    for f in test_files:
        test, dev = _load_file(f, src, skip, bench.skipped)
        bench.questions += test
        bench.dev += dev
    for f in dev_files:
        bench.dev += _load_file(f, src, skip, bench.skipped)[0]
    total = len(bench.questions) + len(bench.skipped)
    if not bench.questions:
        raise BenchmarkError(f"{path}: no questions" + (f" (all {total} skipped; first: {bench.skipped[0]})"
                                                         if bench.skipped else ""))
    if len(bench.skipped) > MAX_BAD_FRACTION * total:
        raise BenchmarkError(f"{path}: {len(bench.skipped)} of {total} questions are malformed (more than "
                             f"{MAX_BAD_FRACTION:.0%}: a wrong field mapping?); first: {bench.skipped[0]}")
    bench.language = language or guess_language(q.question for q in bench.questions)
    return bench


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


# --------------------------------------------------------------------------- layouts

_QUESTION_KEYS = ("question", "Question", "problem_text", "problem", "stem", "题目", "问题")
_ANSWER_KEYS = ("answer_idx", "answer", "Answer", "cop", "answerKey", "label", "correct_answer", "答案")
_OPTION_CONTAINERS = ("options", "option", "choices", "Options", "选项")
_MEDMCQA = ("opa", "opb", "opc", "opd", "ope")
_SUBJECT_KEYS = ("subject", "subject_name", "Subject")
_FIX = ("map the fields with --question-field, --options-field (a field holding a dict or list, or the option "
        "fields comma-separated, e.g. opa,opb,opc,opd) and --answer-field; in a recipe: eval.benchmarks: "
        "[{path: FILE, question_field: ..., options_field: ..., answer_field: ...}]")


@dataclass
class _Layout:
    question: str
    options: str | list[str]  # a container field, or the per-option fields in order
    answer: str
    index_base: int = 0  # for integer answers (MedMCQA's cop: 0- or 1-based, decided per file)

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


_SEPARATED = re.compile(r"^[A-Za-z](\s*[,，、;/和及\s]\s*[A-Za-z])*$")


def _answer_letters(value: Any, options: list[str], layout: _Layout) -> list[str]:
    """Answer letters from a letter string ("B", "ACE", "A,C"), a list of letters, an integer index, or the
    option's text."""
    n = len(options)
    if isinstance(value, list):
        out = [x for v in value for x in _answer_letters(v, options, layout)]
    elif isinstance(value, bool) or value is None:
        raise ValueError(f"answer {value!r} is not a letter, index or option text")
    elif isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        i = int(value) - layout.index_base
        if not 0 <= i < n:
            raise ValueError(f"answer index {value} is outside the {n} options")
        out = [LETTERS[i]]
    else:
        text = str(value).strip()
        if text in options and not (len(text) == 1 and text.upper() in LETTERS[:n] and text.isupper()):
            out = [LETTERS[options.index(text)]]
        elif text and text.isascii() and (_SEPARATED.match(text) or text.isalpha()):
            out = [c.upper() for c in text if c.isalpha()]
        else:
            raise ValueError(f"answer {text!r} is not a letter, index or the text of an option")
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
        raise ValueError(f"missing answer field {layout.answer!r}")
    answer = _answer_letters(rec[layout.answer], options, layout)
    if not answer:
        raise ValueError("no answer")
    kept = [(LETTERS[i], o) for i, o in enumerate(options) if o]
    empty_answer = [a for a in answer if not options[LETTERS.index(a)]]
    if empty_answer:
        raise ValueError(f"answer {','.join(empty_answer)} is an empty option")
    if len(kept) < 2:
        raise ValueError(f"fewer than two non-empty options ({len(kept)})")
    relabel = {old: LETTERS[i] for i, (old, _) in enumerate(kept)}  # empty options dropped: letters close up
    for key in _SUBJECT_KEYS:
        if isinstance(rec.get(key), str) and rec[key].strip():
            subject = rec[key].strip()
            break
    return Question(qid, subject, text.strip(), {relabel[o]: t for o, t in kept},
                    tuple(relabel[a] for a in answer), where)


def _index_base(rows: list[tuple[int, dict]], layout: _Layout, path: Path) -> int:
    """MedMCQA's `cop` is 1-based in the original release and 0-based on the HF hub: decide from the file."""
    if layout.answer != "cop":
        return 0
    values = {int(r[layout.answer]) for _, r in rows if str(r.get(layout.answer, "")).strip().isdigit()}
    widths = {len(_options(r, layout)) for _, r in rows}
    if 0 in values:
        return 0
    if values & widths:
        return 1
    raise BenchmarkError(f"{path}: cannot tell whether 'cop' counts options from 0 or from 1 (values seen: "
                         f"{sorted(values)}); write the answers as letters, or {_FIX}")


def _val_rows_first(rows: list[tuple[int, dict]]) -> int:
    """Rows before this index are a dev split: files that hold val rows then test rows (as the C-Eval export
    does) number each part 0, 1, 2, ... with an integer `id`, so the ids read 0..k-1 then 0..m-1 (k, m >= 2). 0 otherwise."""
    try:
        ids = [int(r.get("id")) for _, r in rows]
    except (TypeError, ValueError):
        return 0
    k = next((i for i in range(1, len(ids)) if ids[i] == 0), 0)
    m = len(ids) - k
    return k if k >= 2 and m >= 2 and ids == list(range(k)) + list(range(m)) else 0


def _load_file(path: Path, src: BenchmarkSource, skip_bad: bool,
               skipped: list[str]) -> tuple[list[Question], list[Question]]:
    """(scored questions, dev questions) of one file; malformed ones raise or, with skip_bad, go to `skipped`."""
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
    line, first = rows[0]
    layout = _detect_layout(first, src)
    if layout is None:
        raise BenchmarkError(f"{path}:{line}: unknown multiple-choice layout; fields found: "
                             f"{sorted(map(str, first))}; known: C-Eval/CMMLU (question, A..E, answer), MedQA "
                             f"(question, options{{A:..}}, answer_idx), medLLM (problem_text, choices[], answer), "
                             f"MedMCQA (question, opa..opd, cop), CMB (question, option{{A:..}}, answer); {_FIX}")
    layout.index_base = _index_base(rows, layout, path)
    split = _val_rows_first(rows)
    test: list[Question] = []
    dev: list[Question] = []
    for i, (n, rec) in enumerate(rows):
        try:
            q = _question(rec, layout, path.stem, f"{path.stem}:{n}", f"{path}:{n}")
        except (ValueError, TypeError, AttributeError) as e:
            msg = f"{path}:{n}: {e} (layout {layout.describe()}; fields found: {sorted(map(str, rec))})"
            if not skip_bad:
                raise BenchmarkError(f"{msg}; fix the record, or pass --skip-bad to count it as skipped; "
                                     f"if the fields are mapped wrongly, {_FIX}") from None
            skipped.append(msg)
            continue
        (dev if i < split else test).append(q)
    return test, dev


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
