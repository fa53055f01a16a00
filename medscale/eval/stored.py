"""Benchmark results as the registry keeps them, paired again: a fine-tune against its own base on the same
questions. Evaluation stored them, so evaluation reads them back; the report and the sweep leaderboard both ask
here."""
from __future__ import annotations

from medscale.registry import Registry, ResultView
from medscale.verdicts import ResultRole


def figures(r: ResultView):
    """A stored result's figures (its `figures` JSON) as the typed `eval.result.ResultFigures`."""
    from medscale.eval.result import ResultFigures

    return ResultFigures.model_validate(r.figures or {})


def as_bench(r: ResultView):
    """A stored result (with its outcomes) as the BenchResult that medscale.eval pairs."""
    from medscale.eval.result import BenchResult, Outcome

    return BenchResult(benchmark=r.benchmark, fingerprint=r.fingerprint, mode=r.mode, shots=r.shots,
                       model={"label": r.model}, n=r.n, acc=r.accuracy or 0.0, ci_low=r.ci_low or 0.0,
                       ci_high=r.ci_high or 0.0, outcomes=[Outcome(**o) for o in r.outcomes], **dict(figures(r)))


def paired(base: ResultView, tuned: ResultView):
    """The paired verdict (bootstrap interval of tuned - base, McNemar's p) of two stored results; sampled ones
    pair by question, averaged over samples."""
    from medscale.eval.sampled import pair

    return pair(as_bench(base), as_bench(tuned), a_label="base", b_label="tuned")


def final_results(reg: Registry, job_id: int) -> list[ResultView]:
    """The newest result per benchmark of a job's final model (not a checkpoint's), outcomes included."""
    newest: dict[str, ResultView] = {}
    for r in reg.results(job_id=job_id, outcomes=True):
        if r.role is ResultRole.TUNED and r.checkpoint is None:
            newest[r.benchmark] = r
    return list(newest.values())


def base_result(reg: Registry, job_id: int, base_path: str, tuned: ResultView) -> ResultView | None:
    """The base model's result on the same questions as `tuned`: measured with the job (its end-of-run verdict), else
    measured once for a sweep (no job)."""
    def same(r: ResultView) -> bool:
        return r.role is ResultRole.BASE and (r.fingerprint, r.mode, r.shots) == (tuned.fingerprint, tuned.mode,
                                                                                 tuned.shots)

    own = [r for r in reg.results(job_id=job_id, outcomes=True) if same(r)]
    if own:
        return own[-1]
    shared = [r for r in reg.results(benchmark=tuned.benchmark, outcomes=True)
              if same(r) and r.job_id is None and r.adapter_path is None and r.base_path == base_path]
    return shared[-1] if shared else None
