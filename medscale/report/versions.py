"""Seed 004's table, made by medscale: bases and fine-tunes ranked in one table, each fine-tune against its own base.

Per row: the benchmark accuracy with its 95% interval; the judge's win rate against its own base and its per-criterion
preferences (from a stored judgement of base against fine-tune: a `judge` job's judge.json; "–" when none was made);
the degeneration counts of its generated answers (stored with each generate-mode result); the forgetting guard's
change of the control set; one verdict line. Everything is read from the registry and the jobs' records; nothing is
measured again.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path

from medscale.eval.degenerate import versus
from medscale.eval.stored import base_result, figures, final_results, paired
from medscale.jobkind import JobKind
from medscale.markdown import md_cell
from medscale.registry import Registry, ResultView
from medscale.verdicts import Counts, ResultRole

_AGAINST = {"better": "better than", "worse": "WORSE than", "no detectable difference": "no detectable difference from"}


@dataclass
class Version:
    label: str
    kind: str  # base | fine-tune
    base: str  # its base's label (a base: itself)
    benchmark: str | None = None
    acc: float | None = None
    _: KW_ONLY
    ci: list[float] | None = None
    n: int | None = None
    win_rate: float | None = None  # the judge: share of questions it preferred this fine-tune over its base
    criteria: dict[str, float] = field(default_factory=dict)  # criterion -> net preference (win - loss rate)
    degenerate: int | None = None
    answers: int | None = None
    degeneration: str = ""  # which signals, or why there are none
    degenerate_flag: bool = False  # significantly more degenerate answers than its base (DEGENERATE)
    forgetting: str = "–"  # the control set's change
    verdict: str = ""
    rank: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def versions(reg: Registry, runs: list, bases: dict[str, str]) -> list[Version]:
    """`runs`: report.build's Runs (the fine-tunes); `bases`: base path -> label (a sweep's, else each run's model)."""
    bases = dict(bases) or {}
    for r in runs:
        bases.setdefault(r.base_path, Path(r.base_path).name)
    bench = _benchmark(reg, runs)
    judged = _judgements(reg)
    rows, base_results = [], {}
    for run in runs:
        row, base = _fine_tune(reg, run, bases[run.base_path], bench, judged)
        rows.append(row)
        if base is not None:
            base_results.setdefault(run.base_path, base)
    for path, label in bases.items():
        rows.append(_base_row(label, base_results.get(path) or _shared_base(reg, path, bench)))
    # ties (common at small n) go to the version with fewer degenerate answers
    ranked = sorted([r for r in rows if r.acc is not None],
                    key=lambda r: (-r.acc, r.degenerate_flag, r.degenerate or 0))
    for i, r in enumerate(ranked, 1):
        r.rank = i
    return ranked + [r for r in rows if r.acc is None]


def _benchmark(reg: Registry, runs: list) -> str | None:
    """The benchmark most fine-tunes were scored on (the table ranks by one)."""
    seen = Counter(r.benchmark for run in runs for r in final_results(reg, run.job_id))
    return min(seen, key=lambda b: (-seen[b], b)) if seen else None


def _counts(r: ResultView | None) -> Counts | None:
    return figures(r).degeneration if r is not None else None


def _fine_tune(reg: Registry, run, base_label: str, bench: str | None, judged: dict) -> tuple[Version, object]:
    row = Version(run.label, "fine-tune", base_label, bench)
    words = []
    tuned = next((r for r in final_results(reg, run.job_id) if r.benchmark == bench), None)
    base = base_result(reg, run.job_id, run.base_path, tuned) if tuned is not None else None
    if tuned is not None:
        row.acc, row.ci, row.n = tuned.accuracy, [tuned.ci_low, tuned.ci_high], tuned.n
        if base is not None:
            v = paired(base, tuned)
            words.append(f"{_AGAINST[v.verdict]} {base_label} on {Path(bench).stem} ({100 * v.diff:+.1f} pts)")
        else:
            words.append(f"no result of {base_label} on {Path(bench).stem}")
    else:
        words.append("no benchmark result")
    mine, theirs = _counts(tuned), _counts(base)
    if mine is not None:
        row.degenerate, row.answers, row.degeneration = mine.degenerate, mine.n, mine.line()
        if theirs is not None and len(theirs.flags) == len(mine.flags):
            d = versus(theirs, mine)
            row.degenerate, row.degeneration, row.degenerate_flag = d.tuned, d.counts.line(), d.flagged
            if d.flagged:
                words.append("DEGENERATE")
    else:
        row.degeneration = "not generated (benchmark_mode: generate counts them)"
    control = run.summary.control if run.summary else None
    if control is not None:
        row.forgetting = control.change()
        if control.flagged:
            words.append("FORGETTING")
    judgement = judged.get((_key(run.base_path), run.job_id))
    if judgement is not None and judgement.pairwise is not None:
        o = judgement.pairwise.overall
        if o.n:
            row.win_rate = o.win / o.n
            row.criteria = {k: p.net for k, p in judgement.pairwise.criteria.items() if p.n}
        words.append(f"judge: {o.verdict}" if o.n else f"judge: no pair readable ({o.unparseable} unparseable)")
    row.verdict = "; ".join(words)
    return row, base


def _base_row(label: str, result: ResultView | None) -> Version:
    row = Version(label, "base", label, verdict="base")
    if result is not None:
        row.benchmark, row.acc, row.ci, row.n = result.benchmark, result.accuracy, [result.ci_low, result.ci_high], \
            result.n
        counts = _counts(result)
        if counts is not None:
            row.degenerate, row.answers, row.degeneration = counts.degenerate, counts.n, counts.line()
    return row


def _shared_base(reg: Registry, path: str, bench: str | None) -> ResultView | None:
    """A base measured once for a sweep (no job) on the table's benchmark."""
    found = [r for r in reg.results(benchmark=bench, outcomes=True) if r.role is ResultRole.BASE and r.job_id is None
             and r.adapter_path is None and r.base_path == path] if bench else []
    return found[-1] if found else None


def _key(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _judgements(reg: Registry) -> dict:
    """(base folder, fine-tune job id) -> the newest pairwise judgement of that fine-tune (B) against that base (A)."""
    from medscale.judge.spec import JUDGEMENT

    out = {}
    for job in reg.jobs():
        folder = Path(job.output_dir)
        if job.kind is JobKind.JUDGE and (folder / JUDGEMENT).is_file():
            out.update(_judgement(folder))
    return out


def _judgement(folder: Path) -> dict:
    from medscale.errors import UserError
    from medscale.jobs.resolve import resolve
    from medscale.judge.spec import JOB_FILE, load_judge_spec, read_judgement

    spec = load_judge_spec(str(folder / JOB_FILE))
    if spec.mode != "pairwise" or len(spec.models) != 2:
        return {}
    try:
        a, b = (resolve(m) for m in spec.models)
    except UserError:  # a side that no longer resolves (moved, deleted) or an answer file judges no job here
        return {}
    if a.adapter is not None or b.job_id is None:
        return {}
    return {(_key(str(a.base)), b.job_id): read_judgement(folder)}


def cells(v: Version) -> list[str]:
    """A row as the table shows it (Markdown and HTML alike)."""
    acc = "–" if v.acc is None else f"{100 * v.acc:.1f} ({100 * v.ci[0]:.1f}–{100 * v.ci[1]:.1f})"
    win = "–" if v.win_rate is None else f"{100 * v.win_rate:.0f}%"
    crit = ", ".join(f"{k} {100 * x:+.0f}" for k, x in v.criteria.items()) or "–"
    degen = "–" if v.degenerate is None else f"{v.degenerate}/{v.answers}" + (" DEGENERATE" if v.degenerate_flag
                                                                              else "")
    return [str(v.rank or ""), v.label, v.kind, v.base, acc, win, crit, degen, v.forgetting, v.verdict]


HEADER = ["#", "model", "kind", "base", "acc % (95% CI)", "judge: wins vs base", "judge: per criterion (net pts)",
          "degenerate answers", "forgetting guard", "verdict"]


def table_markdown(rows: list[dict]) -> str:
    """The table in Markdown (what `medscale report` prints), from report.json's `versions`."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---:" if h == "#" else "---" for h in HEADER) + "|"]
    return "\n".join(lines + ["| " + " | ".join(md_cell(c) for c in cells(Version(**r))) + " |" for r in rows])
