"""`medscale compare`: seed 003's table for any set of models. Each model answers the same questions with the same
generation settings; per model: total/average time, total/average tokens, tokens/s, the answers side by side
(think blocks apart), and a reference-overlap score where the question file carries reference answers.
Markdown and one self-contained HTML page (no scripts, no external assets; templates/compare.html, autoescaped); the
data's text is made inert in both.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from rapidfuzz.distance import LCSseq

from medscale.data.chat import split_think
from medscale.errors import UserError
from medscale.eval.bench import OpenQuestion
from medscale.eval.degenerate import count
from medscale.eval.result import _Model
from medscale.generate.settings import Resolved
from medscale.html import render
from medscale.markdown import md_cell, md_text
from medscale.paths import folder_problem
from medscale.verdicts import Counts


def rouge_l(candidate: str, reference: str) -> float:
    """Character-level ROUGE-L F1 (characters, not words: Chinese has no spaces). rapidfuzz's LCS is C++ and
    bit-parallel, which matters for answers of thousands of characters."""
    cand, ref = "".join(candidate.split()), "".join(reference.split())
    if not cand or not ref:
        return 0.0
    lcs = LCSseq.similarity(cand, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(cand), lcs / len(ref)
    return 2 * p * r / (p + r)


class CompareAnswer(_Model):
    question_id: str
    think: str | None
    answer: str
    tokens: int
    rouge_l: float | None = None


class CompareModel(_Model):
    label: str
    base: str
    adapter: str | None
    total_s: float
    avg_s: float
    total_tokens: int
    avg_tokens: float
    tokens_per_s: float
    rouge_l: float | None = Field(None, description="mean character ROUGE-L F1 against the reference answers")
    answers: list[CompareAnswer]
    backend: dict = Field(default_factory=dict, description="the engine's backend: in-process or the endpoint's "
                                                            "served model and server version")
    degeneration: Counts | None = Field(None, description="its answers' degeneration signals, lengths against the "
                                                          "first model's (medscale.eval.degenerate)")


class CompareQuestion(_Model):
    id: str
    prompt: str
    reference: str | None


class CompareResult(_Model):
    questions: list[CompareQuestion]
    models: list[CompareModel]
    settings: dict

    def summary_rows(self) -> list[list[str]]:
        head = ["model", "total time (s)", "avg time (s)", "total tokens", "avg tokens", "tokens/s", "degenerate"]
        has_ref = any(m.rouge_l is not None for m in self.models)
        rows = [head + (["ROUGE-L (ref)"] if has_ref else [])]
        for m in self.models:
            rows.append([m.label, f"{m.total_s:.1f}", f"{m.avg_s:.2f}", f"{m.total_tokens:,}", f"{m.avg_tokens:.1f}",
                         f"{m.tokens_per_s:.1f}", m.degeneration.cell() if m.degeneration else "–"]
                        + ([f"{m.rouge_l:.3f}" if m.rouge_l is not None else "–"] if has_ref else []))
        return rows

    def summary_markdown(self) -> str:
        rows = self.summary_rows()
        lines = ["| " + " | ".join(rows[0]) + " |", "|---|" + "---:|" * (len(rows[0]) - 1)]
        return "\n".join(lines + ["| " + " | ".join(map(md_cell, r)) + " |" for r in rows[1:]])

    def to_markdown(self) -> str:
        out = ["## Model comparison", "", md_text(_settings_line(self.settings)), "", self.summary_markdown()]
        for i, q in enumerate(self.questions):
            out += ["", f"### {i + 1}. {md_cell(q.prompt)}"]
            if q.reference:
                out += ["", f"**reference**: {md_text(q.reference)}"]
            for m in self.models:
                a = m.answers[i]
                score = f", ROUGE-L {a.rouge_l:.3f}" if a.rouge_l is not None else ""
                out += ["", f"**{md_text(m.label)}** ({a.tokens} tokens{score})"]
                if a.think:
                    out += ["", "> think: " + md_text(a.think).replace("\n", "\n> ")]
                out += ["", md_text(a.answer) if a.answer else "*(no answer)*"]
        return "\n".join(out) + "\n"

    def to_html(self) -> str:
        return render("compare.html", settings=_settings_line(self.settings), summary=self.summary_rows(),
                      questions=self.questions, models=self.models)


def _settings_line(s: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items())


def compare(models: list, questions: list[OpenQuestion], settings: Resolved, *, endpoints: list[str] = (),
            enable_thinking: bool | None = None, batch_size: int | None = None, dtype: str = "auto",
            system_prompt: str | None = None) -> CompareResult:
    """models: (label, medscale.jobs.resolve.ModelRef) each, loaded one at a time (only one in memory); endpoints:
    OpenAI-compatible servers, each one more column. All answer through the engine with the same settings."""
    from medscale.eval.asking import local_backend, release
    from medscale.generate.endpoint import EndpointBackend
    from medscale.generate.engine import Request, generate

    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    requests = [Request(q.id, system + q.messages) for q in questions]
    askers = [(label, ref, lambda ref=ref: local_backend(ref, enable_thinking=enable_thinking, dtype=dtype,
                                                          batch_size=batch_size)) for label, ref in models]
    askers += [(None, None, lambda url=url: EndpointBackend(url, enable_thinking=enable_thinking))
               for url in endpoints]
    out = []
    for label, ref, open_backend in askers:
        backend = open_backend()
        run = generate(requests, settings.settings, backend)
        if ref is not None:
            release(backend)
        answers = []
        for q, g in zip(questions, run.generations):
            think, answer = split_think(g.text)
            answers.append(CompareAnswer(question_id=q.id, think=think, answer=answer or "", tokens=g.tokens,
                                         rouge_l=round(rouge_l(answer or "", q.reference), 4) if q.reference else None))
        refs = [a.rouge_l for a in answers if a.rouge_l is not None]
        n = len(run.generations)
        degeneration = count([(q.prompt, g.text) for q, g in zip(questions, run.generations)],
                             out[0].degeneration.chars if out else None)
        out.append(CompareModel(label=label or run.backend["served_model"],
                                base=str(ref.base) if ref else run.backend["url"],
                                adapter=str(ref.adapter) if ref and ref.adapter else None, backend=run.backend,
                                total_s=round(run.seconds, 3), avg_s=round(run.seconds / n, 3),
                                total_tokens=run.tokens, avg_tokens=round(run.tokens / n, 1),
                                tokens_per_s=round(run.tokens_per_s, 2),
                                rouge_l=round(sum(refs) / len(refs), 4) if refs else None, answers=answers,
                                degeneration=degeneration))
    shown = settings.settings.model_dump(exclude={"n_samples"})
    return CompareResult(questions=[CompareQuestion(id=q.id, prompt=q.prompt, reference=q.reference)
                                    for q in questions], models=out,
                         settings={"greedy": not shown["do_sample"], **shown, "enable_thinking": enable_thinking,
                                   "batch_size": batch_size, "questions": len(questions)})


def output_paths(out_dir: str | Path) -> dict[str, Path]:
    """compare.md / .html / .json in `out_dir`; asked before any model loads, so that a file in the way is one line
    now, not a traceback after every model has answered."""
    out = Path(out_dir)
    if why := folder_problem(out):
        raise UserError(f"--out {out}: {why}")
    return {"markdown": out / "compare.md", "html": out / "compare.html", "json": out / "compare.json"}


def write_compare(result: CompareResult, out_dir: str | Path) -> dict[str, Path]:
    from medscale.jobs.record import write_text_atomic

    paths = output_paths(out_dir)
    paths["markdown"].parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths["markdown"], result.to_markdown())
    write_text_atomic(paths["html"], result.to_html())
    write_text_atomic(paths["json"], result.to_json(indent=1))
    return paths
