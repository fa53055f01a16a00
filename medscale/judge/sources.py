"""What is judged: the open questions (a built-in set by name, or any question file `compare` reads) and each side's
answers to them. A side is an answer file (JSONL: id, question, answer, optional reference: answers from a model
medscale cannot load, such as an API model or seed 003's Ziya-13B-Med), an OpenAI-compatible endpoint (http...),
or anything medscale.jobs.resolve understands (a job, an output dir, a checkpoint, a model folder), asked through
the generation engine. The judge is opened the same way.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from medscale.benchmarks import OPEN_SETS
from medscale.data.chat import THINK_OPEN, render_prompt
from medscale.errors import UserError
from medscale.eval.bench import OpenQuestion, eval_data_dir, load_questions


def shipped(name: str) -> Path:
    """A file medscale ships in medscale/judge/questions (seed 004's set, the calibration pairs)."""
    return Path(str(resources.files("medscale.judge") / "questions" / name))


def open_questions(ref: str | None, data_dir: str | Path | None = None) -> list[OpenQuestion]:
    """A built-in open set by name (OPEN_SETS), else a question file in any layout `compare` reads."""
    if ref in OPEN_SETS:
        s = OPEN_SETS[ref]
        path = shipped(s.path) if s.shipped else eval_data_dir(data_dir) / s.path
        if not path.is_file():
            raise UserError(f"--questions {ref}: {path} is missing: get {s.origin} into the eval data dir "
                            f"(--data-dir or MEDSCALE_EVAL_DATA)")
        return load_questions(path)
    if ref is None or not Path(ref).expanduser().is_file():
        raise UserError(f"--questions {ref}: not a file nor a built-in set ({', '.join(OPEN_SETS)})")
    return load_questions(ref)


def is_answer_file(ref: str) -> bool:
    return Path(ref).expanduser().is_file()


def read_answer_file(ref: str) -> tuple[list[OpenQuestion], dict[str, str]]:
    """(questions, id -> answer) of a JSONL answer file; a bad line is one error naming it."""
    path = Path(ref).expanduser()
    questions, answers = [], {}
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not a JSON line ({e.msg})") from None
        missing = [k for k in ("id", "question", "answer") if not isinstance(rec, dict) or rec.get(k) is None]
        if missing:
            raise UserError(f"{path}:{n}: an answer line needs id, question and answer (missing {', '.join(missing)})")
        qid = str(rec["id"])
        if qid in answers:
            raise UserError(f"{path}:{n}: id {qid} answered twice: keep one line per question")
        ref_text = rec.get("reference")
        questions.append(OpenQuestion(qid, [{"role": "user", "content": str(rec["question"])}],
                                      str(ref_text) if ref_text else None, f"{path}:{n}"))
        answers[qid] = str(rec["answer"])
    if not answers:
        raise UserError(f"{path}: no answers: write one JSON line per question (id, question, answer)")
    return questions, answers


def file_answers(ref: str, questions: list[OpenQuestion]) -> dict[str, str]:
    """The answer file's answer to each question, by id; one missing is an error naming the file."""
    _, texts = read_answer_file(ref)
    missing = [q.id for q in questions if q.id not in texts]
    if missing:
        raise UserError(f"{ref}: no answer for {len(missing)} of the {len(questions)} questions (first: "
                        f"{missing[0]}): answer every question id, or judge the questions the file answers")
    return {q.id: texts[q.id] for q in questions}


@dataclass(frozen=True, kw_only=True)
class Asking:
    """How models are asked: the generation flags given (eval's), and where the engine caches what finished."""

    cli: dict = field(default_factory=dict)  # SamplingSettings keys given on the command line
    greedy: bool = False
    enable_thinking: bool | None = None
    batch_size: int | None = None  # None: the engine plans it from free GPU memory
    system_prompt: str | None = None
    api_key_env: str = "OPENAI_API_KEY"


@dataclass
class Answers:
    label: str
    texts: dict[str, str]  # question id -> the generated text (think block included) or the file's answer
    source: dict  # what answered: the file, or the backend, settings and their sources


@contextlib.contextmanager
def opened(ref: str, asking: Asking):
    """(label, backend, Resolved settings) of a model or endpoint, asked as compare and chat ask it (eval.asking);
    an in-process model is freed on leaving."""
    from medscale.eval.asking import local_backend, release, sampling

    if ref.startswith(("http://", "https://")):
        from medscale.generate.endpoint import EndpointBackend

        backend = EndpointBackend(ref, api_key_env=asking.api_key_env, enable_thinking=asking.enable_thinking)
        yield backend.model, backend, sampling(asking.cli, greedy=asking.greedy)
        return
    from medscale.jobs.resolve import resolve as resolve_model

    found = resolve_model(ref)
    backend = local_backend(found, enable_thinking=asking.enable_thinking, batch_size=asking.batch_size)
    try:
        yield found.label, backend, sampling(asking.cli, ref=found, greedy=asking.greedy)
    finally:
        release(backend)


def as_generated(backend, messages: list[dict], texts: dict[str, str]) -> dict[str, str]:
    """The texts with the think block the prompt opened: an R1-style template writes <think> into the prompt, so a
    reply that never closes it would otherwise read as an answer (its reasoning judged, its verdict lines read)."""
    tok = getattr(backend, "tok", None)
    opened = tok is not None and render_prompt(tok, messages, backend.enable_thinking).rstrip().endswith(THINK_OPEN)
    return {k: THINK_OPEN + t if opened and THINK_OPEN not in t else t for k, t in texts.items()}


def answer(ref: str, questions: list[OpenQuestion], asking: Asking, cache: Path | None) -> Answers:
    """Each question answered by `ref` (a file's answers are looked up by id)."""
    if is_answer_file(ref):
        return Answers(Path(ref).stem, file_answers(ref, questions),
                       {"answer_file": str(Path(ref).expanduser().resolve())})
    from medscale.generate.engine import Request, generate

    system = [{"role": "system", "content": asking.system_prompt}] if asking.system_prompt else []
    requests = [Request(q.id, system + q.messages) for q in questions]
    with opened(ref, asking) as (label, backend, resolved):
        run = generate(requests, resolved.settings, backend, cache)
        texts = as_generated(backend, requests[0].messages, {g.id: g.text for g in run.generations})
    return Answers(label, texts,
                   {"backend": run.backend, "settings": resolved.settings.model_dump(), "sources": resolved.sources,
                    "fingerprint": run.fingerprint, "generated": run.generated, "cached": run.cached,
                    "seconds": round(run.seconds, 3), "tokens_per_s": round(run.tokens_per_s, 2)})
