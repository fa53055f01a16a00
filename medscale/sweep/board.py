"""The leaderboard of a sweep: its trials and its base models ranked by one metric, every fine-tune that is worse
than its own base marked (seed 004: most were, and nothing said so).

Metrics (all read from the registry and the trials' run records, nothing re-measured):
- `eval_loss` (lower is better): a trial's last held-out loss; a base's is its trials' step-0 evaluation
  (`eval.eval_on_start`: the same held-out records, before any training). A trial is worse when its loss is above
  its own step-0 loss.
- a benchmark name or path (higher is better): accuracy with its 95% Wilson interval, the base scored once on the
  same questions; worse = the paired bootstrap interval of (trial - base) lies below 0 ("lower, n.s." when only the
  point estimate is).
- `control` (lower is better): the forgetting guard's regression of the control set (eval.control); worse = it
  rose past eval.max_control_regression.
"""
from __future__ import annotations

import json
import math
from dataclasses import KW_ONLY, asdict, dataclass, field
from enum import Enum
from pathlib import Path

from medscale.errors import UserError
from medscale.jobkind import JobKind
from medscale.eval.stored import base_result, final_results, paired
from medscale.markdown import md_cell, md_text
from medscale.registry import Registry, ResultView, SweepView
from medscale.status import AttemptStatus, JobStatus
from medscale.sweep.metric import MetricKind, SweepMetric
from medscale.verdicts import ResultRole


class BoardError(UserError):
    """A leaderboard that cannot be built as asked (an unknown metric)."""


class RowKind(str, Enum):
    """What a leaderboard row is: a trial of the sweep (a job of kind trial), or a base model they are measured
    against (no job)."""

    TRIAL = JobKind.TRIAL.value
    BASE = "base"

    def __str__(self) -> str:
        return self.value


@dataclass
class Row:
    label: str
    kind: RowKind
    base: str  # the base model's label (a base row: itself)
    status: str
    value: float | None = None
    _: KW_ONLY
    ci: tuple[float, float] | None = None
    n: int | None = None
    base_value: float | None = None  # the same metric of its own base (trials)
    worse_than_base: bool | None = None  # None: not comparable (not measured)
    versus: str = ""  # how it compares with its own base, ending in a verdict word
    steps: int | None = None
    note: str = ""
    job_id: int | None = None
    rank: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Leaderboard:
    sweep: str
    metric: SweepMetric
    rows: list[Row] = field(default_factory=list)

    @property
    def lower_is_better(self) -> bool:
        return self.metric.lower_is_better

    def to_dict(self) -> dict:
        return {"sweep": self.sweep, "metric": self.metric.name, "lower_is_better": self.lower_is_better,
                "rows": [r.to_dict() for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1)

    def header(self) -> list[str]:
        return ["#", "model", "kind", "base", "status", self.metric.heading, "vs own base", "steps", "note"]

    VERSUS = 6  # the column of cells() that compares a row with its own base

    def cells(self, r: Row) -> list[str]:
        """A row as plain text. A worse fine-tune's comparison starts with the word WORSE: a colour alone is lost in
        a pipe, a log file and on colour-blind eyes."""
        return [str(r.rank or ""), r.label, r.kind, r.base, r.status, self.value_text(r),
                ("WORSE " if r.worse_than_base else "") + r.versus, "" if r.steps is None else str(r.steps), r.note]

    def worse_line(self) -> str | None:
        """"1 of 3 measured fine-tunes are worse than their own base: ..." (None: no fine-tune measured yet)."""
        worse = [r.label for r in self.rows if r.worse_than_base]
        measured = [r for r in self.rows if r.kind is RowKind.TRIAL and r.worse_than_base is not None]
        if not measured:
            return None
        return (f"{len(worse)} of {len(measured)} measured fine-tunes are worse than their own base"
                + (f": {', '.join(worse)}" if worse else ""))

    def value_text(self, r: Row) -> str:
        if r.value is None:
            return "–"
        if self.metric.kind is MetricKind.EVAL_LOSS:
            return f"{r.value:.4f}"
        if self.metric.kind is MetricKind.CONTROL:
            return f"{100 * r.value:+.1f}%"
        low, high = r.ci or (math.nan, math.nan)
        return f"{100 * r.value:.1f} ({100 * low:.1f}–{100 * high:.1f})"

    def to_markdown(self) -> str:
        order = "lower is better" if self.lower_is_better else "higher is better"
        lines = [f"**{md_text(self.sweep)}** ranked by {md_text(self.metric.name)} ({order}); **WORSE** = a fine-tune "
                 f"worse than its own base", "", "| " + " | ".join(map(md_cell, self.header())) + " |",
                 "|" + "|".join("---:" if h in ("#", "steps") else "---" for h in self.header()) + "|"]
        for r in self.rows:
            cells = [md_cell(c) for c in self.cells(r)]
            if r.worse_than_base:
                cells[self.VERSUS] = "**WORSE** " + md_cell(r.versus)
            lines.append("| " + " | ".join(cells) + " |")
        if line := self.worse_line():
            lines += ["", md_text(line)]
        return "\n".join(lines) + "\n"


def leaderboard(reg: Registry, sweep_ref: str, metric: SweepMetric | None = None) -> Leaderboard:
    """The sweep's rows ranked by `metric` (default: the one its definition names)."""
    view = reg.sweep(sweep_ref)
    metric = metric or SweepMetric.of_definition(view.definition_yaml)
    board = Leaderboard(view.name, metric)
    bases = {b.path: b.label for b in view.base_models()}
    trial_rows = [_trial_row(reg, view, t, metric, bases) for t in view.trials]
    if metric.kind is MetricKind.BENCHMARK and not any(r.value is not None for r in trial_rows) and not _base_results(
            reg, list(bases), metric):
        known = sorted({r.benchmark for t in view.trials for r in reg.results(job_id=t.job.id)})
        raise BoardError(f"no results for '{metric.name}' in sweep {view.name} (metrics: eval_loss, control"
                         + (f", {', '.join(known)}" if known else "") + ")")
    base_rows = [_base_row(reg, path, label, metric, trial_rows, view=view) for path, label in bases.items()]
    measured = [r for r in trial_rows + base_rows if r.value is not None]
    rest = [r for r in trial_rows + base_rows if r.value is None]
    measured.sort(key=lambda r: r.value if board.lower_is_better else -r.value)
    for i, r in enumerate(measured, 1):
        r.rank = i
    board.rows = measured + rest
    return board


def _trial_row(reg: Registry, view: SweepView, t, metric: SweepMetric, bases: dict) -> Row:
    from medscale.jobs.record import RunSummary

    job = t.job
    cell = t.trial_cell
    base_path = cell.base
    status = JobStatus.FAILED.value if t.error and job.status == JobStatus.SUCCEEDED else job.status
    note = "; ".join(x for x in (cell.note, t.error or _failure(job)) if x)
    row = Row(t.label, RowKind.TRIAL, bases.get(base_path, Path(base_path).name), status, note=note, job_id=job.id,
              steps=job.step or None)
    if metric.kind is MetricKind.EVAL_LOSS:
        evals = [m for m in reg.metrics(job.id) if m.eval_loss is not None]
        start = next((m.eval_loss for m in evals if m.step == 0), None)
        if evals and evals[-1].step > 0:
            row.value, row.base_value = evals[-1].eval_loss, start
            if start is not None:
                change = (row.value - start) / start
                row.worse_than_base = row.value > start
                word = "worse" if row.worse_than_base else "better" if row.value < start else "no change"
                row.versus = f"{start:.4f} -> {row.value:.4f} ({100 * change:+.1f}%): {word}"
    elif metric.kind is MetricKind.CONTROL:
        summary = RunSummary.load(job.output_dir)
        control = summary.control if summary else None
        if control is not None:
            row.value, row.base_value = control.regression, 0.0
            row.worse_than_base, row.versus = control.flagged, control.line
    else:
        tuned = next((r for r in final_results(reg, job.id) if metric.measures(r.benchmark)), None)
        if tuned is not None:
            row.value, row.ci, row.n = tuned.accuracy, (tuned.ci_low, tuned.ci_high), tuned.n
            base = base_result(reg, job.id, base_path, tuned)
            if base is not None:
                row.base_value = base.accuracy
                v = paired(base, tuned)
                row.worse_than_base = v.verdict == "worse"
                word = "lower, n.s." if v.verdict != "worse" and v.diff < 0 else v.verdict
                row.versus = (f"{100 * v.diff:+.1f} points (95% CI {100 * v.ci_low:+.1f} to {100 * v.ci_high:+.1f}, "
                              f"McNemar p={v.p_mcnemar:.3g}): {word}")
    return row


def _failure(job) -> str | None:
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED, AttemptStatus.LOST, JobStatus.STOPPED_EARLY,
                          JobStatus.PREEMPTED):
        return None
    reasons = [a.exit_reason for a in job.attempt_list if a.exit_reason]
    return reasons[-1] if reasons else None


def _latest(rows: list[ResultView]) -> ResultView | None:
    return rows[-1] if rows else None


def _base_results(reg: Registry, paths: list[str], metric: SweepMetric) -> list[ResultView]:
    """A sweep's base models' own results (measured once, of no job)."""
    return [r for r in reg.results() if r.role is ResultRole.BASE and r.job_id is None
            and r.adapter_path is None and r.base_path in paths and metric.measures(r.benchmark)]


def _base_row(reg: Registry, path: str, label: str, metric: SweepMetric, trials: list[Row], *, view: SweepView) -> Row:
    row = Row(label, RowKind.BASE, label, "base")
    mine = [r for r, t in zip(trials, view.trials) if t.trial_cell.base == path]
    if metric.kind is MetricKind.EVAL_LOSS:
        starts = {round(r.base_value, 6) for r in mine if r.base_value is not None}
        if len(starts) == 1:
            row.value = starts.pop()
        elif starts:
            row.note = "its trials' held-out sets differ: no single step-0 loss"
        else:
            row.note = "no trial of this base evaluated at step 0 (eval.eval_on_start)"
    elif metric.kind is MetricKind.CONTROL:
        row.value = 0.0 if mine else None
    else:
        base = _latest(_base_results(reg, [path], metric))
        if base is not None:
            row.value, row.ci, row.n = base.accuracy, (base.ci_low, base.ci_high), base.n
    return row
