"""Evaluation during training and at its end: held-out loss, multiple-choice benchmarks, the forgetting guard."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medscale.benchmarks import BUILTINS
from medscale.recipe.base import Section


class BenchmarkSource(Section):
    """A benchmark with what `medscale eval` takes as flags: the fields medscale cannot guess, and what becomes of
    malformed and repeated questions (read the same in pre-flight, at eval steps and at the end of a run)."""

    path: str = Field(description="a multiple-choice file (.jsonl/.json/.csv) or a folder of subject files")
    question_field: str | None = Field(None, description="field holding the question text")
    options_field: str | None = Field(
        None, description="field holding the options (a dict letter->text or a list), or the option fields "
                          "comma-separated in order, e.g. opa,opb,opc,opd")
    answer_field: str | None = Field(None, description="field holding the answer: letter(s), an option number (from "
                                                       "0; MedMCQA's cop from 1 where the file shows it), the "
                                                       "option's field name (opc) or its text")
    skip_bad: bool = Field(False, description="score the usable questions, each malformed one named in the result "
                                              "with its reason, instead of stopping at the first; more than "
                                              "max_bad of them still stops (like --skip-bad)")
    max_bad: float | None = Field(
        None, ge=0, le=1, description="the share of malformed questions skip_bad tolerates (null: 0.01); implies "
                                      "skip_bad (like --max-bad)")
    dedupe: bool = Field(False, description="score a repeated question (the same id, or the same text and options) "
                                            "once, the first, and say how many were dropped; false: a repeat in "
                                            "your file stops, naming both places (like --dedupe)")

    @model_validator(mode="before")
    @classmethod
    def _max_bad_implies_skip_bad(cls, data: Any) -> Any:
        """As on the command line: a tolerance for malformed questions means skipping them; `skip_bad: false`
        beside it contradicts it (written back as true, the resolved recipe reloads the same)."""
        if not isinstance(data, dict) or data.get("max_bad") is None:
            return data
        if data.get("skip_bad") is False:
            raise ValueError(f"eval.benchmarks: {data.get('path')}: max_bad tolerates malformed questions and "
                             f"skip_bad: false stops at the first: remove one of them")
        return {**data, "skip_bad": True}


class EvalSection(Section):
    eval_strategy: Literal["no", "steps", "epoch"] = Field(
        "no", description="when held-out loss is measured: never, every eval_steps, or each epoch")
    eval_steps: int | None = Field(None, ge=1, description="steps between evaluations (eval_strategy=steps)")
    eval_on_start: bool = Field(True, description="measure the base model first, so a fine-tune that hurts is visible")
    per_device_eval_batch_size: int = Field(4, ge=1, description="samples per evaluation batch per GPU")
    benchmarks: list[str | BenchmarkSource] = Field(
        default_factory=list, description=f"multiple-choice benchmarks scored at eval steps and at the end: built-in "
                                          f"names ({', '.join(BUILTINS)}) under eval.data_dir, or paths")
    benchmark_limit: int | None = Field(
        None, ge=1, description="score a fixed random subset of this many questions per benchmark at each eval step "
                                "(same questions every step, seeded by train.seed); null: all")
    benchmark_mode: Literal["letter", "option", "generate"] = Field(
        "letter", description="letter: log-likelihood of the answer letter (one forward per question); option: "
                              "length-normalised log-likelihood of each option's text; generate: think, then the "
                              "letter parsed after </think> (reasoning models; uses the generation section)")
    shots: int = Field(0, ge=0, le=10, description="worked examples before each question, from the dev split")
    data_dir: str | None = Field(
        None, description="where built-in benchmarks live; default $MEDSCALE_EVAL_DATA, else "
                          "${MEDSCALE_DATA:-~/data}/eval")
    control: str | None = Field(
        None, description="forgetting guard: general-domain SFT data (mean per-token loss) or a multiple-choice "
                          "benchmark (accuracy), measured before and after fine-tuning")
    max_control_regression: float = Field(
        0.05, ge=0, description="flag the run when the control set regresses by more than this: relative rise of "
                                "the loss (0.05 = 5%), or absolute drop of the accuracy (0.05 = 5 points)")
    fail_on_regression: bool = Field(False, description="a flagged control regression makes the job end failed")

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, v: list) -> list:
        for b in v:
            if isinstance(b, str) and b not in BUILTINS and not _looks_like_path(b):
                close = difflib.get_close_matches(b, list(BUILTINS), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ValueError(f"eval.benchmarks: unknown benchmark '{b}'; {hint}(built-in: "
                                 f"{', '.join(BUILTINS)}; or a file/folder path)")
        return v

    @model_validator(mode="after")
    def _regression_needs_control(self) -> "EvalSection":
        if self.fail_on_regression and not self.control:
            raise ValueError("eval.fail_on_regression needs a control set: set eval.control=PATH "
                             "(e.g. general-domain SFT data) or eval.fail_on_regression=false")
        return self


def _looks_like_path(s: str) -> bool:
    return "/" in s or "\\" in s or Path(s).suffix in (".jsonl", ".json", ".csv") or s.startswith(("~", "$", "."))
