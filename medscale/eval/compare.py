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

from medscale.errors import UserError
from medscale.eval.bench import OpenQuestion
from medscale.eval.result import _Model
from medscale.html import render
from medscale.markdown import md_cell, md_text
from medscale.paths import folder_problem
from medscale.recipe import GenerationSection


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


class CompareQuestion(_Model):
    id: str
    prompt: str
    reference: str | None


class CompareResult(_Model):
    questions: list[CompareQuestion]
    models: list[CompareModel]
    settings: dict

    def summary_rows(self) -> list[list[str]]:
        head = ["model", "total time (s)", "avg time (s)", "total tokens", "avg tokens", "tokens/s"]
        has_ref = any(m.rouge_l is not None for m in self.models)
        rows = [head + (["ROUGE-L (ref)"] if has_ref else [])]
        for m in self.models:
            rows.append([m.label, f"{m.total_s:.1f}", f"{m.avg_s:.2f}", f"{m.total_tokens:,}", f"{m.avg_tokens:.1f}",
                         f"{m.tokens_per_s:.1f}"] + ([f"{m.rouge_l:.3f}" if m.rouge_l is not None else "–"]
                                                     if has_ref else []))
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


def compare(models: list, questions: list[OpenQuestion], generation: GenerationSection, greedy: bool = False,
            batch_size: int = 8, seed: int = 0, dtype: str = "auto", system_prompt: str | None = None) -> CompareResult:
    """models: (label, medscale.jobs.resolve.ModelRef) each, loaded one at a time (only one in memory)."""
    from medscale.eval.generate import generate
    from medscale.model.infer import free_memory, load_for_inference

    convs = [([{"role": "system", "content": system_prompt}] if system_prompt else []) + q.messages for q in questions]
    out = []
    for label, ref in models:
        base, adapter = ref.base, ref.adapter
        model, tok = load_for_inference(base, adapter, dtype, model_section=ref.recipe.get("model"))
        gens = generate(model, tok, convs, generation, greedy=greedy, batch_size=batch_size, seed=seed, desc=label)
        del model
        free_memory()
        answers = [CompareAnswer(question_id=q.id, think=g.think, answer=g.answer, tokens=g.tokens,
                                 rouge_l=round(rouge_l(g.answer, q.reference), 4) if q.reference else None)
                   for q, g in zip(questions, gens)]
        total_s = sum(_batch_seconds(gens))
        tokens = sum(g.tokens for g in gens)
        refs = [a.rouge_l for a in answers if a.rouge_l is not None]
        out.append(CompareModel(label=label, base=str(base), adapter=str(adapter) if adapter else None,
                                total_s=round(total_s, 3), avg_s=round(total_s / len(gens), 3), total_tokens=tokens,
                                avg_tokens=round(tokens / len(gens), 1),
                                tokens_per_s=round(tokens / total_s, 2) if total_s else 0.0,
                                rouge_l=round(sum(refs) / len(refs), 4) if refs else None, answers=answers))
    settings = {"greedy": greedy or generation.temperature == 0, **generation.model_dump(), "batch_size": batch_size,
                "questions": len(questions)}
    return CompareResult(questions=[CompareQuestion(id=q.id, prompt=q.prompt, reference=q.reference)
                                    for q in questions], models=out, settings=settings)


def _batch_seconds(gens) -> list[float]:
    """Each batch's wall time once (answers of one batch share it)."""
    seen, out = set(), []
    for g in gens:
        if g.batch not in seen:
            seen.add(g.batch)
            out.append(g.seconds)
    return out


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
