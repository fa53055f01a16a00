"""The verdicts a measurement ends in, typed: a paired benchmark verdict (with its contamination and degeneration
checks), the forgetting guard's, and a run's own verdict on each benchmark as its summary keeps it.

They sit below both the evaluation that makes them (`medscale.eval`) and the job record that keeps a run's in
`run_summary.json` (`medscale.jobs.record.RunSummary`), so one layout is written and read back through these models:
`medscale jobs show`, the report and the sweep's leaderboard read fields, never a dict's keys. Pydantic only.
"""
from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

VerdictWord = Literal["better", "worse", "no detectable difference"]
KINDS = ("looping", "unclosed_think", "empty_answer", "wrong_language", "length_off")  # the degeneration signals


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResultRole(str, Enum):
    """Whose measurement a stored result is (the registry keeps the plain value): a job's tuned model, the base it was
    tuned from (measured with the job, or once for a sweep with no job): the two sides a paired verdict compares; or
    any other model."""

    TUNED = "tuned"
    BASE = "base"
    MODEL = "model"

    def __str__(self) -> str:
        return self.value


def percent(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


class Counts(_Model):
    """One model's answers: how many show each degeneration signal (`medscale.eval.degenerate`), and which answers
    are degenerate (in question order, so two models' counts on the same questions pair)."""

    n: int
    looping: int = 0
    unclosed_think: int = 0
    empty_answer: int = 0
    wrong_language: int = 0
    length_off: int | None = Field(None, description="None when no base lengths were given")
    degenerate: int = Field(0, description="answers with at least one signal")
    flags: list[bool] = Field(default_factory=list, description="per answer: degenerate")
    chars: list[int] = Field(default_factory=list, description="per answer: characters generated")

    def kinds(self) -> str:
        """"1 looping, 1 unclosed think": how many answers show each signal (those that any do)."""
        return ", ".join(f"{getattr(self, k)} {k.replace('_', ' ')}" for k in KINDS if getattr(self, k))

    def cell(self) -> str:
        """"2/10 (1 looping, 1 unclosed think)": a table's cell."""
        return f"{self.degenerate}/{self.n}" + (f" ({self.kinds()})" if self.degenerate else "")

    def line(self) -> str:
        return f"degenerate {self.cell()}"


class DegenerationVerdict(_Model):
    """The tuned model against its base on the same questions: discordant answers and McNemar's exact p."""

    n: int
    base: int = Field(description="degenerate answers of the base")
    tuned: int = Field(description="degenerate answers of the fine-tune")
    base_only: int
    tuned_only: int
    p_mcnemar: float
    flagged: bool = Field(description="significantly more degenerate answers than the base (DEGENERATE)")
    line: str
    counts: Counts = Field(description="the fine-tune's counts, lengths checked against the base's")


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
        return (f"contamination: {self.overlapping}/{self.n_questions} questions ({percent(self.share)}%) share >= "
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
    degeneration: DegenerationVerdict | None = Field(None, description="generate mode: B's degenerate answers "
                                                                       "against A's (DEGENERATE when significant)")

    def line(self) -> str:
        text = (f"{self.benchmark}: {self.b} vs {self.a}: {percent(self.acc_b)}% vs {percent(self.acc_a)}% "
                f"({100 * self.diff:+.1f} points, 95% CI {100 * self.ci_low:+.1f} to {100 * self.ci_high:+.1f}; "
                f"McNemar p={self.p_mcnemar:.3g}; n={self.n}) -> "
                f"{self.verdict.upper() if self.verdict != 'no detectable difference' else self.verdict + ' at this n'}")
        if self.contamination is not None:
            text += f"; {self.contamination.line()}"
        if self.degeneration is not None:
            text += f"; {self.degeneration.line}"
        return text


class RunBenchmark(Verdict):
    """A run's verdict on one of its `eval.benchmarks` (the tuned model, B, against the base it started from, A), as
    its summary keeps it: the paired verdict's fields and, under the key `line`, what the run said of it. (The key is
    the previous version's: its summaries load as they are; `Verdict.line()` stays the generic sentence.)"""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, serialize_by_alias=True)

    said: str = Field(alias="line", description="the run's one line: base -> tuned, CI, p, the word, the checks")

    @classmethod
    def of(cls, name: str, v: Verdict) -> "RunBenchmark":
        word = "WORSE" if v.verdict == "worse" else v.verdict
        seen = (f"; {100 * v.contamination.share:.0f}% of its questions overlap the training data"
                if v.contamination is not None else "")
        seen += f"; {v.degeneration.line}" if v.degeneration is not None else ""
        said = (f"{name}: base {100 * v.acc_a:.1f}% -> tuned {100 * v.acc_b:.1f}% ({100 * v.diff:+.1f} points, "
                f"95% CI {100 * v.ci_low:+.1f} to {100 * v.ci_high:+.1f}, McNemar p={v.p_mcnemar:.3g}, n={v.n}): "
                f"{word}{seen}")
        return cls(**dict(v), said=said)


class ForgettingVerdict(_Model):
    """The forgetting guard (`eval.control`): the control set before and after fine-tuning, flagged past
    `eval.max_control_regression`."""

    kind: Literal["loss", "accuracy"]
    before: float
    after: float
    regression: float = Field(description="loss: relative rise; accuracy: absolute drop (positive = worse)")
    threshold: float
    flagged: bool
    line: str

    def change(self) -> str:
        """The control set's change as a table's cell: "-2.5 pts" (accuracy), "loss +12.0%" (loss)."""
        if self.kind == "accuracy":
            return f"{-100 * self.regression:+.1f} pts"
        return f"loss {100 * self.regression:+.1f}%" + (" FORGETTING" if self.flagged else "")


class RunVerdicts(_Model):
    """A training run's verdicts at its end (`medscale.eval.verdict`), as its summary keeps them (RunSummary's
    `benchmarks` and `control`)."""

    benchmarks: dict[str, RunBenchmark] = Field(default_factory=dict, description="eval.benchmarks: benchmark name "
                                                                                  "-> the verdict against the base")
    control: ForgettingVerdict | None = Field(None, description="eval.control: the forgetting guard")

    @field_validator("control", mode="before")
    @classmethod
    def _unmeasured(cls, value):
        return value or None  # the previous version wrote {} for a run without eval.control

    def lines(self) -> list[str]:
        """What the run said of its benchmarks and of the control set, one line each."""
        return [b.said for b in self.benchmarks.values()] + ([self.control.line] if self.control else [])
