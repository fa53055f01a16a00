"""Was the fine-tune better? The verdict at the end of a training run, on benchmarks and a control set.

(Not the judge of open answers: this compares scores the run measured, base against tuned.)

At the end of a run whose recipe lists `eval.benchmarks`, the model just trained is scored with its adapter and
without it (`disable_adapter`: exactly the base it was tuned from, in the same process, on the same questions), and
the paired verdict says better / worse / no detectable difference at this n, with a contamination check beside
every "better", and in generate mode the degeneration signals of both models' answers (DEGENERATE: significantly
more degenerate answers than the base, medscale.eval.degenerate). `eval.control` measures the base and the tuned
model on general-domain data: a regression beyond `eval.max_control_regression` is flagged (FORGETTING), and fails
the job when `eval.fail_on_regression` asks.
Every process of the run calls this (scoring is sharded across them)."""
from __future__ import annotations

import logging

from medscale.eval.result import BenchResult
from medscale.eval.run import check_contamination, evaluate_benchmark, load_benchmarks
from medscale.eval.sampled import pair
from medscale.recipe import Recipe
from medscale.verdicts import ResultRole, RunBenchmark, RunVerdicts

log = logging.getLogger("medscale.eval")


class RunVerdict(RunVerdicts):
    """The verdicts the run's summary keeps, and what the job does with the rest: the results it stores against
    itself, the failure it ends with."""

    results: list[tuple[BenchResult, ResultRole]] = []  # (result, base | tuned)
    failure: str | None = None  # why the job must end failed (eval.fail_on_regression)


def without_adapter(model):
    """The base model inside a PEFT model: its adapters (modules_to_save included) switched off for the block."""
    import contextlib

    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def run_verdict(model, tok, recipe: Recipe, step: int) -> RunVerdict:
    from medscale.eval.control import forgetting_verdict, measure_control
    from medscale.eval.result import EvalReport

    e, j = recipe.eval, RunVerdict()
    system = recipe.data.system_prompt
    if e.benchmarks:
        benches = load_benchmarks(e.benchmarks, e.data_dir, None, recipe.train.seed)
        report = EvalReport(model={"label": f"{recipe.name}@{step}"}, results=[])
        how = dict(mode=e.benchmark_mode, shots=e.shots, batch_size=e.per_device_eval_batch_size, system_prompt=system,
                   generation=recipe.generation)
        for bench in benches:
            tuned = evaluate_benchmark(model, tok, bench, **how, model_meta={"label": f"{recipe.name} (step {step})"})
            with without_adapter(model):
                base = evaluate_benchmark(model, tok, bench, **how, model_meta={"label": f"{recipe.name} (base)"})
            report.results.append(tuned)
            report.against.append(base)
            report.verdicts.append(pair(base, tuned, a_label="base", b_label="tuned"))
            j.results += [(base, ResultRole.BASE), (tuned, ResultRole.TUNED)]
        check_contamination(report, benches, [s.path for s in recipe.data.sources])
        j.benchmarks = {bench.name: RunBenchmark.of(bench.name, v) for bench, v in zip(benches, report.verdicts)}
    if e.control:
        limit = e.benchmark_limit
        after = measure_control(model, tok, e.control, limit=limit, max_length=recipe.data.max_length,
                                batch_size=e.per_device_eval_batch_size, system_prompt=system, data_dir=e.data_dir,
                                seed=recipe.train.seed)
        with without_adapter(model):
            before = measure_control(model, tok, e.control, limit=limit, max_length=recipe.data.max_length,
                                     batch_size=e.per_device_eval_batch_size, system_prompt=system,
                                     data_dir=e.data_dir, seed=recipe.train.seed)
        j.control = forgetting_verdict(before, after, e.max_control_regression)
        if j.control.flagged and e.fail_on_regression:
            j.failure = f"{j.control.line} (eval.fail_on_regression=true)"
    for line in j.lines():
        (log.warning if any(w in line for w in ("WORSE", "FORGETTING", "DEGENERATE")) else log.info)("%s", line)
    return j
