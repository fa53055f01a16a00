"""Typed evaluation results: JSON round-trip (pydantic) and Markdown tables.

A BenchResult keeps every question's outcome, so two results on the same questions can be paired (a verdict)
long after they were measured, and the registry can store them as they are.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from medscale.markdown import md_cell, md_text

Mode = Literal["letter", "option", "generate"]
VerdictWord = Literal["better", "worse", "no detectable difference"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self, **kw) -> str:
        return self.model_dump_json(**kw)

    @classmethod
    def from_json(cls, text: str):
        return cls.model_validate_json(text)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


class Outcome(_Model):
    """One question: what the model chose, what was right, and the per-option scores behind the choice."""

    id: str
    subject: str
    chosen: list[str] | None = Field(description="the chosen letter(s); None when a generated answer was unparseable")
    correct: list[str]
    ok: bool
    scores: dict[str, float] = Field(default_factory=dict, description="letter -> log-likelihood (letter mode) or "
                                                                      "mean token log-likelihood (option mode)")
    output: str | None = Field(None, description="generate mode: the generated text")


class SubjectScore(_Model):
    subject: str
    n: int
    correct: int
    acc: float
    ci_low: float
    ci_high: float


class BenchResult(_Model):
    benchmark: str
    fingerprint: str = Field(description="hash of the scored questions; results pair only on equal fingerprints")
    language: str
    mode: Mode
    shots: int
    model: dict = Field(default_factory=dict, description="what was measured: base, adapter, checkpoint, label")
    n: int
    correct: int
    acc: float
    ci_low: float = Field(description="Wilson 95% interval")
    ci_high: float
    skipped: int = Field(0, description="malformed questions left out of n (listed in skipped_detail)")
    skipped_detail: list[str] = Field(default_factory=list, description="'id (file:line): reason' of each")
    source: str = Field("", description="the benchmark's file or folder")
    split: str = Field("", description="the part of it that was scored")
    total: int = Field(0, description="questions in that split; n is fewer under --limit")
    unparseable: int = Field(0, description="generate mode: answers with no letter found; counted wrong")
    multi_answer: int = Field(0, description="questions with several correct letters, scored as an exact set")
    subjects: list[SubjectScore] = Field(default_factory=list)
    outcomes: list[Outcome] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    questions_per_s: float = 0.0
    processes: int = Field(1, description="processes the questions were sharded over")
    created: str = Field(default_factory=_now)

    def to_markdown(self) -> str:
        label = self.model.get("label") or self.model.get("base", "")
        lines = [f"### {md_cell(self.benchmark)} — {md_cell(label)}", "",
                 f"accuracy **{_pct(self.acc)}%** (95% CI {_pct(self.ci_low)}–{_pct(self.ci_high)}), n={self.n}, "
                 f"skipped {self.skipped}, mode {self.mode}, {self.shots}-shot, unparseable {self.unparseable}, "
                 f"{self.questions_per_s:.1f} questions/s", "",
                 f"benchmark: {md_text(self.source)}, {md_text(self.split)}, {self.total} questions"
                 + (f" (n={self.n}: a --limit subset)" if self.n < self.total else ""), "",
                 "| subject | n | correct | acc % | 95% CI |", "|---|---:|---:|---:|---|"]
        lines += [f"| {md_cell(s.subject)} | {s.n} | {s.correct} | {_pct(s.acc)} | "
                  f"{_pct(s.ci_low)}–{_pct(s.ci_high)} |" for s in self.subjects]
        lines += [""] + [f"- {md_cell(note)}" for note in self.notes]
        lines += [f"- skipped {md_cell(entry)}" for entry in self.skipped_detail]
        return "\n".join(lines).rstrip() + "\n"


class Contamination(_Model):
    """Share of benchmark questions whose text overlaps the training data."""

    n_questions: int
    overlapping: int
    share: float
    ngram: int = Field(description="characters per n-gram of the normalised text")
    threshold: float = Field(description="a question overlaps when at least this share of its n-grams occur in the "
                                         "training texts")
    examples: list[str] = Field(default_factory=list, description="ids of up to 20 overlapping questions")

    def line(self) -> str:
        return (f"contamination: {self.overlapping}/{self.n_questions} questions ({_pct(self.share)}%) share >= "
                f"{self.threshold:.0%} of their {self.ngram}-character n-grams with the training data")


class Verdict(_Model):
    """B against A on the same questions: paired bootstrap interval of acc(B) - acc(A), McNemar's p, one word."""

    benchmark: str
    a: str
    b: str
    n: int
    acc_a: float
    acc_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_mcnemar: float
    a_only: int = Field(description="questions A got right and B wrong")
    b_only: int = Field(description="questions B got right and A wrong")
    resamples: int
    seed: int
    verdict: VerdictWord
    contamination: Contamination | None = None

    def line(self) -> str:
        text = (f"{self.benchmark}: {self.b} vs {self.a}: {_pct(self.acc_b)}% vs {_pct(self.acc_a)}% "
                f"({100 * self.diff:+.1f} points, 95% CI {100 * self.ci_low:+.1f} to {100 * self.ci_high:+.1f}; "
                f"McNemar p={self.p_mcnemar:.3g}; n={self.n}) -> "
                f"{self.verdict.upper() if self.verdict != 'no detectable difference' else self.verdict + ' at this n'}")
        if self.contamination is not None:
            text += f"; {self.contamination.line()}"
        return text


class ControlResult(_Model):
    """The forgetting guard's measurement of one model on the control set."""

    kind: Literal["loss", "accuracy"]
    value: float
    n: int = Field(description="records (loss) or questions (accuracy)")
    tokens: int = Field(0, description="loss: the answer tokens the mean is over")
    path: str
    model: dict = Field(default_factory=dict)


class ForgettingVerdict(_Model):
    kind: Literal["loss", "accuracy"]
    before: float
    after: float
    regression: float = Field(description="loss: relative rise; accuracy: absolute drop (positive = worse)")
    threshold: float
    flagged: bool
    line: str


class EvalReport(_Model):
    """Everything one `medscale eval` measured: one JSON object with --json."""

    model: dict
    results: list[BenchResult]
    against: list[BenchResult] = Field(default_factory=list, description="the same benchmarks on the other model")
    verdicts: list[Verdict] = Field(default_factory=list)

    def to_markdown(self) -> str:
        rows = ["| benchmark | model | mode | shots | n | acc % | 95% CI | skipped | unparseable |",
                "|---|---|---|---:|---:|---:|---|---:|---:|"]
        for r in self.against + self.results:
            label = r.model.get("label") or r.model.get("base", "")
            rows.append(f"| {md_cell(r.benchmark)} | {md_cell(label)} | {r.mode} | {r.shots} | {r.n} | "
                        f"{_pct(r.acc)} | {_pct(r.ci_low)}–{_pct(r.ci_high)} | {r.skipped} | {r.unparseable} |")
        parts = ["\n".join(rows) + "\n"]
        parts += [f"**verdict** {md_text(v.line())}\n" for v in self.verdicts]
        parts += [r.to_markdown() for r in self.results]
        return "\n".join(parts)
