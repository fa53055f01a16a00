"""Seed-002-style reports of one or more runs (jobs, or a sweep's trials), built from the registry alone: the
per-step metrics each run recorded as it logged them, its benchmark results and its run record.

Tables (each run a column, like seed 002's version table): training loss and eval loss at chosen steps with each
run's difference from the first in %; per run the stages between those steps (loss at the stage's start and end and
the change in %, seed 000's table); an overview (final loss, eval loss against the base's step-0 loss, gradient-norm
range and coefficient of variation, learning rate at start / middle / end); benchmark deltas against the base with
their paired intervals; the forgetting verdict. Figures: loss, eval loss, learning rate and gradient norm, every
run overlaid, one PNG each. Written as report.md, one self-contained report.html (images inlined) and report.json.

Definitions (what a number in a table means): "loss at step s" is the last training loss logged at or before s;
"eval loss at step s" the evaluation at s, else the last one before it; a step the run never reached has no value
("–", and no change against it: carrying the last value forward would invent numbers); a stage lo-hi runs from the
loss at lo (at step 0: the first one logged) to the loss at hi, so stages chain at any logging interval; the
coefficient of variation is the population standard deviation of the logged gradient norms over their mean.
"""
from __future__ import annotations

import base64
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medscale.errors import UserError
from medscale.eval.stored import base_result, final_results, paired
from medscale.html import render
from medscale.jobs.kinds import recorded_spec
from medscale.jobs.record import RunSummary, write_bytes_atomic, write_text_atomic
from medscale.markdown import md_cell, md_text
from medscale.recipe import Recipe, RecipeError
from medscale.registry import MetricRow, Registry
from medscale.report import versions

log = logging.getLogger(__name__)

FIGURES = (("loss", "training loss"), ("eval_loss", "eval loss"), ("learning_rate", "learning rate"),
           ("grad_norm", "gradient norm"))


class ReportError(UserError):
    """Nothing to report (an unknown job or sweep, or runs that logged nothing)."""


@dataclass(kw_only=True)
class Run:
    label: str
    job_id: int
    name: str
    status: str
    output_dir: str
    base_path: str
    metrics: list[MetricRow]
    summary: RunSummary | None = None
    reached: int = 0  # the furthest step its record or its heartbeats saw (it may have logged last before it)
    description: str = ""  # its recipe's one line

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, getattr(m, key)) for m in self.metrics if getattr(m, key) is not None]

    @property
    def last_step(self) -> int:
        return max([self.reached, *(m.step for m in self.metrics)])

    def at(self, key: str, step: int) -> float | None:
        """`key` at `step` (see `at`); None past the last step this run reached."""
        if step > self.last_step:
            return None
        return at(self.series(key), step, exact_first=key == "eval_loss")


@dataclass(kw_only=True)
class Report:
    title: str
    steps: list[int]
    runs: list[str]
    loss: list[dict] = field(default_factory=list)  # per step: {"step", run: value, ...}
    eval_loss: list[dict] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)  # per run and stage
    overview: list[dict] = field(default_factory=list)  # per run
    benchmarks: list[dict] = field(default_factory=list)  # per run and benchmark
    forgetting: list[dict] = field(default_factory=list)  # per run
    versions: list[dict] = field(default_factory=list)  # seed 004's table: bases and fine-tunes ranked (versions.py)
    notes: list[str] = field(default_factory=list)  # runs that stopped before a chosen step
    figures: dict[str, str] = field(default_factory=dict)  # metric -> PNG file name

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- what to report


def collect(reg: Registry, refs: list[str]) -> tuple[str, list[Run]]:
    """Each ref a sweep (its trials) or a job (id, name or output dir); (a title, the runs)."""
    runs: list[Run] = []
    titles = []
    for ref in refs:
        sweep = _sweep(reg, ref)
        if sweep is not None:
            titles.append(f"sweep {sweep.name}")
            runs += [_run(reg, t.job.id, t.label, t.trial_cell.base) for t in sweep.trials]
        else:
            job_id = reg.find(ref)
            titles.append(reg.job(job_id).name)
            runs.append(_run(reg, job_id, None, None))
    runs = [r for r in runs if r.metrics]
    if not runs:
        raise ReportError(f"{', '.join(refs)}: no run logged any metric yet (a run records them as it logs; "
                          f"`medscale jobs sync DIR` restores them from its trainer_state.json)")
    return ", ".join(titles), runs


def _sweep(reg: Registry, ref: str):
    if ref not in {s.name for s in reg.sweeps()}:
        return None
    return reg.sweep(ref)


def _run(reg: Registry, job_id: int, label: str | None, base: str | None) -> Run:
    job = reg.job(job_id)
    recipe = _recipe(job)
    summary = RunSummary.load(job.output_dir)
    return Run(label=label or job.name, job_id=job_id, name=job.name, status=job.status, output_dir=job.output_dir,
               base_path=base or os.path.abspath(recipe.model.path if recipe else ""), metrics=reg.metrics(job_id),
               summary=summary, reached=max(job.step or 0, summary.global_step if summary else 0),
               description=recipe.description if recipe else "")


def _recipe(job) -> Recipe | None:
    """The recipe a training job recorded; None for an evaluation or a judgement (they train no model), or where the
    recorded recipe no longer validates: a report of old runs still shows their numbers, the warning says why."""
    try:
        recorded = recorded_spec(job)
    except RecipeError as e:
        log.warning("%s: reported without its base model and description", e)
        return None
    return recorded if isinstance(recorded, Recipe) else None


# --------------------------------------------------------------------------- the numbers


def at(series: list[tuple[int, float]], step: int, exact_first: bool = False) -> float | None:
    """The value at `step`: the last one at or before it (an evaluation: the one at `step` itself when there is)."""
    if exact_first:
        hit = [v for s, v in series if s == step]
        if hit:
            return hit[-1]
    before = [v for s, v in series if s <= step]
    return before[-1] if before else None


def pct(a: float | None, b: float | None) -> float | None:
    """b against a, in %."""
    if a is None or b is None or a == 0:
        return None
    return 100 * (b - a) / a


def default_steps(runs: list[Run], n: int = 4) -> list[int]:
    """Quarters of the longest run (seed 002's 100/200/300/400 for a 400-step run)."""
    last = max(r.last_step for r in runs)
    return sorted({max(1, round(last * k / n)) for k in range(1, n + 1)})


def _by_step(runs: list[Run], steps: list[int], key: str) -> list[dict]:
    rows = []
    for s in steps:
        values = {r.label: r.at(key, s) for r in runs}
        first = values[runs[0].label]
        row = {"step": s, **values}
        for r in runs[1:]:
            row[f"{r.label} vs {runs[0].label} %"] = pct(first, values[r.label])
        rows.append(row)
    return rows


def _stages(run: Run, steps: list[int]) -> list[dict]:
    loss = run.series("loss")
    out, lo = [], 0
    for hi in steps:
        start = run.at("loss", lo) if lo else (loss[0][1] if loss else None)
        end = run.at("loss", hi)
        out.append({"run": run.label, "stage": f"{lo}-{hi}", "loss_start": start, "loss_end": end,
                    "change_pct": pct(start, end), "eval_loss": run.at("eval_loss", hi)})
        lo = hi
    return out


def _overview(run: Run) -> dict:
    loss, evals, lr = run.series("loss"), run.series("eval_loss"), run.series("learning_rate")
    norms = [v for _, v in run.series("grad_norm") if math.isfinite(v)]
    mean = sum(norms) / len(norms) if norms else None
    cv = (math.sqrt(sum((x - mean) ** 2 for x in norms) / len(norms)) / mean) if norms and mean else None
    base = next((v for s, v in evals if s == 0), None)
    final = evals[-1][1] if evals and evals[-1][0] > 0 else None
    middle = at(lr, round(run.last_step / 2)) if lr else None
    return {"run": run.label, "recipe": run.description, "status": run.status, "steps": run.last_step,
            "loss_first": loss[0][1] if loss else None, "loss_final": loss[-1][1] if loss else None,
            "eval_loss_base": base, "eval_loss_final": final, "eval_loss_change_pct": pct(base, final),
            "grad_norm_min": min(norms) if norms else None, "grad_norm_max": max(norms) if norms else None,
            "grad_norm_cv": cv, "lr_start": lr[0][1] if lr else None, "lr_middle": middle,
            "lr_end": lr[-1][1] if lr else None,
            "verdict": run.summary.verdict if run.summary else None}


def _benchmarks(reg: Registry, run: Run) -> list[dict]:
    out = []
    for tuned in final_results(reg, run.job_id):
        base = base_result(reg, run.job_id, run.base_path, tuned)
        row = {"run": run.label, "benchmark": tuned.benchmark, "n": tuned.n, "tuned": tuned.accuracy,
               "tuned_ci": [tuned.ci_low, tuned.ci_high], "base": None, "base_ci": None, "diff": None,
               "diff_ci": None, "p_mcnemar": None, "verdict": "no base result on these questions"}
        if base is not None:
            v = paired(base, tuned)
            row.update(base=base.accuracy, base_ci=[base.ci_low, base.ci_high], diff=v.diff,
                       diff_ci=[v.ci_low, v.ci_high], p_mcnemar=v.p_mcnemar, verdict=v.verdict)
        out.append(row)
    return out


def _forgetting(run: Run) -> dict:
    control = run.summary.control if run.summary else None
    if control is None:
        return {"run": run.label, "flagged": None, "line": "not measured (set eval.control: a general-domain set)"}
    return {"run": run.label, "flagged": control.flagged, "line": control.line}


def _unreached(runs: list[Run], steps: list[int]) -> list[str]:
    """A line per run that stopped before some chosen steps: why its cells there are empty."""
    out = []
    for r in runs:
        later = [s for s in steps if s > r.last_step]
        if later:
            out.append(f"{r.label} reached step {r.last_step}: no value at step {', '.join(map(str, later))} (shown "
                       f"as –, no change computed)")
    return out


def build(reg: Registry, refs: list[str], steps: list[int] | None = None) -> tuple[Report, list[Run]]:
    title, runs = collect(reg, refs)
    steps = sorted(set(steps)) if steps else default_steps(runs)
    bases = {b.path: b.label for ref in refs if (s := _sweep(reg, ref)) is not None for b in s.base_models()}
    report = Report(title=title, steps=steps, runs=[r.label for r in runs], loss=_by_step(runs, steps, "loss"),
                    eval_loss=_by_step(runs, steps, "eval_loss"),
                    stages=[row for r in runs for row in _stages(r, steps)], overview=[_overview(r) for r in runs],
                    benchmarks=[row for r in runs for row in _benchmarks(reg, r)],
                    forgetting=[_forgetting(r) for r in runs], notes=_unreached(runs, steps),
                    versions=[v.to_dict() for v in versions.versions(reg, runs, bases)])
    return report, runs


# --------------------------------------------------------------------------- figures and pages


def plot(runs: list[Run], key: str, title: str) -> bytes:
    """One metric, every run overlaid, as PNG bytes (a log scale for the learning rate)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for i, r in enumerate(runs):
        series = r.series(key)
        if series:
            ax.plot(*zip(*series), "o-" if key == "eval_loss" else "-", color=f"C{i % 10}", lw=2, ms=4, label=r.label)
    if key == "learning_rate" and any(v > 0 for r in runs for _, v in r.series(key)):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _fmt(v, kind: str = "num") -> str:
    if v is None:
        return "–"
    if kind == "pct":
        return f"{v:+.1f}%"
    if kind == "acc":
        return f"{100 * v:.1f}"
    if kind == "lr":
        return f"{v:.3g}"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, formatted: the Markdown and the HTML show the same cells."""
    first = report.runs[0]
    others = report.runs[1:]
    out = [("Versions ranked (bases and fine-tunes, each against its own base)", versions.HEADER,
            [versions.cells(versions.Version(**v)) for v in report.versions])]
    for title, rows in (("Training loss at chosen steps", report.loss), ("Eval loss at chosen steps",
                                                                          report.eval_loss)):
        out.append((title, ["step", *report.runs, *[f"{o} vs {first}" for o in others]],
                    [[str(r["step"]), *[_fmt(r[x]) for x in report.runs],
                      *[_fmt(r[f"{o} vs {first} %"], "pct") for o in others]] for r in rows]))
    out.append(("Overview", ["run", "recipe", "status", "steps", "loss first → final",
                             "eval loss base → final (change)", "grad-norm range", "grad-norm CV",
                             "lr start / middle / end"],
                [[o["run"], o["recipe"], o["status"], str(o["steps"]),
                  f"{_fmt(o['loss_first'])} → {_fmt(o['loss_final'])}",
                  f"{_fmt(o['eval_loss_base'])} → {_fmt(o['eval_loss_final'])} "
                  f"({_fmt(o['eval_loss_change_pct'], 'pct')})",
                  f"{_fmt(o['grad_norm_min'])}–{_fmt(o['grad_norm_max'])}", _fmt(o["grad_norm_cv"]),
                  " / ".join(_fmt(o[k], "lr") for k in ("lr_start", "lr_middle", "lr_end"))]
                 for o in report.overview]))
    out.append(("Stages", ["run", "steps", "loss start → end", "change", "eval loss at end"],
                [[s["run"], s["stage"], f"{_fmt(s['loss_start'])} → {_fmt(s['loss_end'])}",
                  _fmt(s["change_pct"], "pct"), _fmt(s["eval_loss"])] for s in report.stages]))
    if report.benchmarks:
        out.append(("Benchmarks against the base (same questions)",
                    ["run", "benchmark", "n", "base acc % (95% CI)", "tuned acc % (95% CI)", "difference (95% CI)",
                     "McNemar p", "verdict"],
                    [[b["run"], Path(b["benchmark"]).name, str(b["n"]),
                      f"{_fmt(b['base'], 'acc')} ({_ci(b['base_ci'])})" if b["base"] is not None else "–",
                      f"{_fmt(b['tuned'], 'acc')} ({_ci(b['tuned_ci'])})",
                      f"{100 * b['diff']:+.1f} pts ({_ci(b['diff_ci'], signed=True)})" if b["diff"] is not None
                      else "–", "–" if b["p_mcnemar"] is None else f"{b['p_mcnemar']:.3g}",
                      b["verdict"].upper() if b["verdict"] == "worse" else b["verdict"]] for b in report.benchmarks]))
    out.append(("Forgetting (control set)", ["run", "verdict"],
                [[f["run"], f["line"]] for f in report.forgetting]))
    return out


def _ci(ci, signed: bool = False) -> str:
    if not ci:
        return "–"
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(100 * ci[0])}–{f.format(100 * ci[1])}"


def to_markdown(report: Report) -> str:
    parts = [f"# medscale report: {md_text(report.title)}", "",
             f"Steps: {', '.join(map(str, report.steps))}. Loss at a step = the last training loss logged at or "
             f"before it; – = not reached or not logged; changes are against the first run "
             f"({md_text(report.runs[0])}).", ""]
    parts += [f"- {md_text(n)}" for n in report.notes] + ([""] if report.notes else [])
    for title, header, rows in tables(report):
        parts += [f"## {title}", "", "| " + " | ".join(map(md_cell, header)) + " |", "|" + "---|" * len(header)]
        parts += ["| " + " | ".join(map(md_cell, row)) + " |" for row in rows]
        parts.append("")
    parts += ["## Curves", ""] + [f"![{label}]({report.figures[key]})" for key, label in FIGURES
                                  if key in report.figures]
    return "\n".join(parts) + "\n"


def to_html(report: Report, images: dict[str, bytes]) -> str:
    """One page, no external asset: the tables, then the figures as data: URIs."""
    return render("report.html", title=report.title, steps=report.steps, first=report.runs[0], notes=report.notes,
                  tables=tables(report), figures=[(label, base64.b64encode(images[key]).decode())
                                                  for key, label in FIGURES if key in images])


def write_report(reg: Registry, refs: list[str], out: Path,
                 steps: list[int] | None = None) -> tuple[dict[str, Path], list[str]]:
    """Build the report and write report.md, report.html, report.json and one PNG per figure into `out` (each file
    written atomically); returns their paths and the report's notes (runs that stopped before a chosen step)."""
    report, runs = build(reg, refs, steps)
    out.mkdir(parents=True, exist_ok=True)
    images = {key: plot(runs, key, label) for key, label in FIGURES if any(r.series(key) for r in runs)}
    paths = {}
    for key, data in images.items():
        report.figures[key] = f"{key}.png"
        paths[key] = out / f"{key}.png"
        write_bytes_atomic(paths[key], data)
    for name, text in (("report.md", to_markdown(report)), ("report.html", to_html(report, images)),
                       ("report.json", json.dumps(report.to_dict(), ensure_ascii=False, indent=1))):
        paths[name] = out / name
        write_text_atomic(paths[name], text)
    return paths, report.notes
