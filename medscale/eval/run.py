"""The eval entry: benchmarks in, typed results out. `run_eval` is what `medscale eval` (and, through the
launchers, an eval job) calls; `evaluate_benchmark` is the library step the training callback and the lead's
end-of-run verdict reuse."""
from __future__ import annotations

from medscale.eval.bench import Benchmark, BenchmarkError, load_benchmark
from medscale.eval.result import BenchResult, EvalReport
from medscale.eval.score import process_group_rank, score
from medscale.eval.stats import paired_verdict, summarise
from medscale.recipe import BenchmarkSource, GenerationSection


def evaluate_benchmark(model, tok, bench: Benchmark, mode: str = "letter", shots: int = 0, batch_size: int = 8,
                       system_prompt: str | None = None, generation: GenerationSection | None = None,
                       model_meta: dict | None = None, seed: int = 0, scores_dir: str | None = None) -> BenchResult:
    """Score one (already loaded, possibly subset) benchmark and summarise it with intervals, saying what it was
    measured on (source, split, count) and the benchmark's notes. `scores_dir` (an evaluation job's folder): keep
    each question's score there as it finishes, and reuse those an earlier attempt kept (medscale.eval.scores)."""
    bench = bench.for_shots(shots, seed)  # a no-op where load_benchmarks did it, before the --limit subset
    log = None
    if scores_dir is not None:
        from medscale.eval.scores import ScoreLog, measure_key

        key = measure_key(bench_fingerprint=bench.fingerprint(), mode=mode, shots=shots, model=model_meta,
                          system_prompt=system_prompt, generation=(generation or GenerationSection()).model_dump())
        log = ScoreLog(scores_dir, key, rank=process_group_rank()[0])
    try:
        outcomes, seconds = score(model, tok, bench, mode, shots, batch_size, system_prompt, generation, seed, log)
    finally:
        if log is not None:
            log.close()
    notes = list(bench.notes)
    if log is not None and (kept := sum(o.id in log.done for o in outcomes)):
        notes.append(f"{kept} of {len(outcomes)} questions scored by an earlier attempt of this job (kept in "
                     f"{scores_dir})")
    if system_prompt:
        notes.append("asked with the run's system prompt")
    result = summarise(outcomes, benchmark=bench.name, fingerprint=bench.fingerprint(), language=bench.language,
                       mode=mode, shots=shots, model=model_meta, skipped=bench.skipped, notes=notes, seconds=seconds)
    result.processes = process_group_rank()[1]
    result.source, result.split, result.total = bench.source, bench.split, bench.total
    return result


def load_benchmarks(refs: list[str | BenchmarkSource], data_dir: str | None = None, limit: int | None = None,
                    seed: int = 0, skip_bad: bool | None = None, max_bad: float | None = None, dedupe: bool = False,
                    shots: int = 0) -> list[Benchmark]:
    """Every benchmark loaded (its k-shot examples set apart, then cut to its fixed subset) before any model is: bad
    input fails in seconds."""
    return [load_benchmark(r, data_dir, skip_bad, max_bad, dedupe).for_shots(shots, seed).subset(limit, seed)
            for r in refs]


def run_eval(model_ref: str, benchmarks: list[str | BenchmarkSource], adapter: str | None = None,
             checkpoint: int | None = None, against: str | None = None, mode: str = "letter", shots: int = 0,
             limit: int | None = None, seed: int = 0, data_dir: str | None = None, batch_size: int = 8,
             generation: GenerationSection | None = None, skip_bad: bool | None = None,
             system_prompt: str | None = None, dtype: str = "auto", train_data: list[str] | None = None,
             record: bool = True, max_bad: float | None = None, dedupe: bool = False,
             scores_dir: str | None = None) -> EvalReport:
    """Evaluate MODEL (a job, an output dir, a checkpoint, an adapter or a model folder: medscale.jobs.resolve) on
    the benchmarks; with `against` (another model, or `base`: the model MODEL was tuned from), score it on the same
    questions and give the paired verdict of MODEL against it, with a contamination check beside every "better"
    (against `train_data`, default: the job's own training data). Every result is stored in the registry against the
    job and checkpoint it measured (`record`; a registry that cannot be reached only warns). `scores_dir`: an
    evaluation job's folder, where every question's score is kept as it finishes (a rerun skips them)."""
    from medscale.jobs.resolve import resolve

    benches = load_benchmarks(benchmarks, data_dir, limit, seed, skip_bad, max_bad, dedupe, shots)
    started_group = _join_process_group()
    target = resolve(model_ref, checkpoint=checkpoint, adapter=adapter)
    other = (target.base_only() if against == "base" else resolve(against)) if against else None
    if against == "base" and target.adapter is None:
        raise BenchmarkError(f"--against base: {target.label} is a base model already (no adapter to compare with)")

    def measure(ref) -> list[BenchResult]:
        from medscale.model.infer import free_memory, load_for_inference

        model, tok = load_for_inference(ref.base, ref.adapter, dtype, model_section=ref.recipe.get("model"))
        prompt = system_prompt if system_prompt is not None else ref.system_prompt
        results = [evaluate_benchmark(model, tok, b, mode, shots, batch_size, prompt, generation, ref.to_dict(), seed,
                                      scores_dir=scores_dir) for b in benches]
        del model
        free_memory()
        return results

    report = EvalReport(model=target.to_dict(), results=measure(target))
    if other is not None:
        report.against = measure(other)
        report.verdicts = [paired_verdict(a, b) for a, b in zip(report.against, report.results)]
        check_contamination(report, benches, train_data or target.training_data)
    if started_group:
        import torch.distributed as dist

        dist.destroy_process_group()
    if record and process_group_rank()[0] == 0:
        rows = [(r, target, "tuned" if target.adapter else "model") for r in report.results]
        rows += [(r, other, "base" if against == "base" else "model") for r in report.against]
        record_results(rows, job_id=target.job_id)
    return report


def result_row(result: BenchResult, *, model: str, base: str, adapter: str | None, role: str, step: int | None = None,
               checkpoint: str | None = None):
    """One BenchResult as the registry stores it (medscale.registry.ResultInfo), per-question outcomes included."""
    from medscale.registry import ResultInfo

    return ResultInfo(model=model, base_path=str(base), benchmark=result.benchmark, fingerprint=result.fingerprint,
                      mode=result.mode, n=result.n, role=role, adapter_path=str(adapter) if adapter else None,
                      shots=result.shots, step=step, checkpoint=checkpoint, accuracy=result.acc,
                      ci_low=result.ci_low, ci_high=result.ci_high,
                      figures={"correct": result.correct, "skipped": result.skipped, "unparseable": result.unparseable,
                               "source": result.source, "split": result.split, "total": result.total,
                               "multi_answer": result.multi_answer, "language": result.language,
                               "questions_per_s": result.questions_per_s,
                               "subjects": [s.model_dump() for s in result.subjects]},
                      outcomes=[o.model_dump() for o in result.outcomes])


def record_results(rows, job_id: int | None) -> None:
    """Store (result, model reference, role) rows in the registry; role: tuned (a job's adapter), base (the model
    that job was tuned from: stored with the job, so its verdicts are a query) or model (any other folder, stored
    with its own job if it is one). A registry that cannot be reached only warns: the results are in the report."""
    import logging

    from medscale.registry import Registry, RegistryError

    try:
        with Registry() as reg:
            for result, ref, role in rows:
                row = result_row(result, model=ref.label, base=ref.base, adapter=ref.adapter, role=role,
                                 checkpoint=str(ref.checkpoint) if ref.checkpoint else None)
                reg.record_result(row, job_id if role != "model" else ref.job_id)
    except RegistryError as e:
        logging.getLogger("medscale.eval").warning("%s: results not recorded in the registry (they are in the "
                                                   "report)", e)


def training_texts(paths: list[str]):
    """Every turn's text of the training records, in any layout medscale.data reads."""
    from medscale.data.sources import load_conversations

    for path in paths:
        for conv in load_conversations(path, on_bad_record="skip", max_bad_fraction=1.0):
            for m in conv:
                yield m["content"]
                if m.get("reasoning_content"):
                    yield m["reasoning_content"]


def check_contamination(report: EvalReport, benches: list[Benchmark], train_data: list[str]) -> None:
    """Beside every "better": the share of the benchmark's questions whose text overlaps the training data. Says so
    in the verdict when the training data cannot be read, rather than leaving the gain unexamined."""
    import glob

    from medscale.eval.stats import contamination

    for verdict, bench in zip(report.verdicts, benches):
        if verdict.verdict != "better":
            continue
        missing = [p for p in train_data if not glob.glob(p)]
        if not train_data or missing:
            report.results[benches.index(bench)].notes.append(
                "contamination not checked: " + (f"training data {', '.join(missing)} not found" if missing else
                                                 "no training data known (pass --train-data)"))
            continue
        questions = {q.id: q.question for q in bench.questions}
        verdict.contamination = contamination(questions, training_texts(train_data), bench.language)


def _join_process_group() -> bool:
    """Started by torchrun / accelerate with several processes: join their group (NCCL on GPUs, gloo on CPU) so
    scoring is sharded. True when this call created the group (and so must destroy it)."""
    import torch
    import torch.distributed as dist

    from medscale.dist import DistContext

    ctx = DistContext.from_env()
    if ctx.world_size <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True
