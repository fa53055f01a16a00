"""One judgement, end to end: the questions, each side's answers (through the generation engine, or an answer
file), their degeneration signals, then the judge's replies (every pair in both orders, or one score reply per
answer) and what the protocol makes of them. `--calibrate` is the same protocol on labelled pairs: the rejected
answer as A, the chosen one as B, so B's win rate is the judge's agreement with the labels.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from medscale.data.chat import split_think
from medscale.errors import UserError
from medscale.eval import degenerate
from medscale.eval.bench import OpenQuestion, guess_language
from medscale.generate.engine import Request, generate
from medscale.judge import protocol, rubric
from medscale.judge.result import JudgeResult, Side
from medscale.judge.sources import (Answers, Asking, answer, as_generated, is_answer_file, open_questions,
                                    opened, read_answer_file, shipped)

log = logging.getLogger("medscale.judge")
CALIBRATION = "reward_medical_test.jsonl"  # shipped: MedicalGPT's 100 labelled medical preference pairs


def questions_for(models: list[str], questions: str | None, data_dir: str | None, limit: int | None):
    """The question file or set; without one, the first answer file's questions."""
    if questions is not None:
        qs = open_questions(questions, data_dir)
    else:
        files = [m for m in models if is_answer_file(m)]
        if not files:
            raise UserError("--questions FILE_OR_NAME is needed when no side is an answer file (built-in sets: "
                            "seed004, cmb-clin, huatuo100)")
        qs = read_answer_file(files[0])[0]
    return qs[:limit] if limit else qs


def _shown(text: str) -> str:
    """What the judge sees of an answer: the text after the think block ("" when the block never closed)."""
    return split_think(text)[1] or ""


def _lang(q: OpenQuestion, rubric_language: str) -> str:
    return guess_language([q.prompt]) if rubric_language == "auto" else rubric_language


def _weights(base, adapter) -> str:
    return f"{Path(base).resolve()}+{Path(adapter).resolve() if adapter else ''}"


def _identity(ref: str) -> str:
    """What a reference names, for the judge-is-judged warning (the same endpoint or the same weights)."""
    if ref.startswith(("http://", "https://")):
        return ref.rstrip("/").removesuffix("/v1")
    if is_answer_file(ref):
        return ref
    from medscale.jobs.resolve import resolve

    found = resolve(ref)
    return _weights(found.base, found.adapter)


def self_judged(judge: str, judged: dict[str, str]) -> list[str]:
    """The warning when the judge is one of the judged (`judged`: each side's name -> its _identity): a model tends
    to prefer its own answers."""
    mine = _identity(judge)
    same = [name for name, identity in judged.items() if identity == mine]
    return [f"the judge {judge} is one of the judged ({', '.join(same)}): a model tends to prefer its own answers; "
            f"judge with another model"] if same else []


def _ask_judge(judge: str, prompts: list[tuple[str, str]], asking: Asking, cache: Path | None) -> tuple[dict, dict]:
    """(id -> reply, the judge as stored: label, backend, settings and their sources, throughput)."""
    requests = [Request(i, [{"role": "user", "content": p}]) for i, p in prompts]
    with opened(judge, asking) as (label, backend, resolved):
        run = generate(requests, resolved.settings, backend, cache)
        replies = as_generated(backend, requests[0].messages, {g.id: g.text for g in run.generations})
    stored = {"ref": judge, "label": label, "backend": run.backend, "settings": resolved.settings.model_dump(),
              "sources": resolved.sources, "fingerprint": run.fingerprint, "generated": run.generated,
              "cached": run.cached, "seconds": round(run.seconds, 3),
              "replies_per_minute": round(60 * run.generated / run.seconds, 2) if run.seconds > 0 else None}
    return replies, stored


def _degeneration(questions, sides: list[Answers]) -> tuple[dict, dict | None]:
    """Each side's degeneration counts (lengths against the first side, the base of a base-vs-tuned judgement) and,
    for two sides, the second against the first."""
    pairs = [[(q.prompt, s.texts[q.id]) for q in questions] for s in sides]
    first = degenerate.count(pairs[0])
    counts = [first] + [degenerate.count(p, first.chars) for p in pairs[1:]]
    against = degenerate.versus(first, counts[1]).model_dump() if len(sides) == 2 else None
    return {s.label: c.model_dump() for s, c in zip(sides, counts)}, against


def judge_answers(sides: list[Answers], questions: list[OpenQuestion], *, mode: str, judge: str | None,
                  asking: Asking, judge_asking: Asking, rubric_language: str = "auto",
                  cache_dir: Path | None = None) -> JudgeResult:
    """The judgement of answers already made (every side answered every question)."""
    if mode == "pairwise" and len(sides) != 2:
        raise UserError(f"pairwise judging compares two sides, got {len(sides)}: pass A and B, or --mode score")
    labels = [s.label for s in sides]
    for k, s in enumerate(sides):  # two folders of the same name are still two sides
        if labels.count(s.label) > 1:
            s.label = f"{s.label} ({'AB'[k] if mode == 'pairwise' else k + 1})"
    counts, against = _degeneration(questions, sides)
    result = JudgeResult(mode=mode, sides=[Side(label=s.label, source=s.source, answers=[s.texts[q.id]
                                                                                         for q in questions])
                                           for s in sides],
                         questions=[{"id": q.id, "prompt": q.prompt, "reference": q.reference} for q in questions],
                         degeneration=counts, degeneration_verdict=against, templates=rubric.templates(),
                         rubric_language=rubric_language, asked=asking.cli | {"greedy": asking.greedy})
    if judge is None:
        return result.finished()
    prompts = judge_prompts(mode, sides, questions, rubric_language)
    replies, result.judge = _ask_judge(judge, prompts, judge_asking,
                                       cache_dir / "judge.jsonl" if cache_dir else None)
    if mode == "pairwise":
        a, b = sides
        result.pairs = [protocol.judge_pair(q.id, replies[f"{q.id}|AB"], replies[f"{q.id}|BA"],
                                            len(_shown(a.texts[q.id])), len(_shown(b.texts[q.id])))
                        for q in questions]
        result.pairwise = protocol.summarise_pairs(result.pairs)
    else:
        result.scores = [protocol.summarise_scores(s.label, [replies[f"{q.id}|{k}"] for q in questions])
                         for k, s in enumerate(sides)]
    return result.finished()


def judge_prompts(mode: str, sides: list[Answers], questions: list[OpenQuestion], rubric_language: str):
    out = []
    for q in questions:
        lang = _lang(q, rubric_language)
        if mode == "pairwise":
            a, b = (_shown(s.texts[q.id]) for s in sides)
            out += [(f"{q.id}|AB", rubric.pairwise_prompt(lang, q.prompt, a, b, q.reference)),
                    (f"{q.id}|BA", rubric.pairwise_prompt(lang, q.prompt, b, a, q.reference))]
        else:
            out += [(f"{q.id}|{k}", rubric.score_prompt(lang, q.prompt, _shown(s.texts[q.id]), q.reference))
                    for k, s in enumerate(sides)]
    return out


def run_judgement(models: list[str], *, questions: str | None, mode: str, judge: str | None, asking: Asking,
                  judge_asking: Asking, data_dir: str | None = None, limit: int | None = None,
                  rubric_language: str = "auto", cache_dir: Path | None = None) -> JudgeResult:
    """`medscale judge A B`: every side answers (one model in memory at a time), then the judge judges."""
    qs = questions_for(models, questions, data_dir, limit)
    sides = [answer(m, qs, asking, cache_dir / f"answers-{k}.jsonl" if cache_dir else None)
             for k, m in enumerate(models)]
    result = judge_answers(sides, qs, mode=mode, judge=judge, asking=asking, judge_asking=judge_asking,
                           rubric_language=rubric_language, cache_dir=cache_dir)
    if judge is not None:
        result.warnings += self_judged(judge, {m: _identity(m) for m in models})
    for w in result.warnings:
        log.warning("%s", w)
    return result


def judge_compared(compared, questions: list[OpenQuestion], *, judge: str, judge_asking: Asking,
                   cache_dir: Path | None = None) -> JudgeResult:
    """`compare --judge`: the second model compared against the first on the answers compare generated."""
    if len(compared.models) < 2:
        raise UserError("compare --judge needs two models (the first is A, the second B)")
    sides = [Answers(m.label, {a.question_id: (f"<think>{a.think}</think>" if a.think else "") + a.answer
                               for a in m.answers}, {"compare": m.backend})
             for m in compared.models[:2]]
    result = judge_answers(sides, questions, mode="pairwise", judge=judge, asking=Asking(),
                           judge_asking=judge_asking, cache_dir=cache_dir)
    result.warnings += self_judged(judge, {m.label: _identity(m.base) if m.base.startswith("http") else
                                           _weights(m.base, m.adapter) for m in compared.models[:2]})
    return result


def calibration_pairs(labels: str | None) -> tuple[list[OpenQuestion], Answers, Answers]:
    """The labelled pairs (question, response_chosen, response_rejected) as two sides: rejected (A), chosen (B)."""
    path = Path(labels).expanduser() if labels else shipped(CALIBRATION)
    qs, chosen, rejected = [], {}, {}
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            qid = str(rec.get("id", n))
            qs.append(OpenQuestion(qid, [{"role": "user", "content": rec["question"]}], None, f"{path}:{n}"))
            chosen[qid], rejected[qid] = str(rec["response_chosen"]), str(rec["response_rejected"])
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise UserError(f"{path}:{n}: a labelled pair is one JSON line with question, response_chosen and "
                            f"response_rejected") from None
    if not qs:
        raise UserError(f"{path}: no labelled pairs")
    return qs, Answers("rejected", rejected, {"labels": str(path)}), Answers("chosen", chosen, {"labels": str(path)})


def run_calibration(judge: str, *, labels: str | None, judge_asking: Asking, limit: int | None = None,
                    rubric_language: str = "auto", cache_dir: Path | None = None) -> JudgeResult:
    qs, rejected, chosen = calibration_pairs(labels)
    qs = qs[:limit] if limit else qs
    t0 = time.perf_counter()
    result = judge_answers([rejected, chosen], qs, mode="pairwise", judge=judge, asking=Asking(),
                           judge_asking=judge_asking, rubric_language=rubric_language, cache_dir=cache_dir)
    result.calibration = True
    log.info("calibration of %s on %d labelled pairs took %.1fs", judge, len(qs), time.perf_counter() - t0)
    return result.finished()
