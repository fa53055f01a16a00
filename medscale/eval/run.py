"""The eval entry: benchmarks in, typed results out. `run_eval` is what `medscale eval` (and, through the
launchers, an eval job) calls; `evaluate_benchmark` is the library step the training callback and the lead's
end-of-run verdict reuse."""
from __future__ import annotations

from medscale.eval.bench import Benchmark, load_benchmark
from medscale.eval.result import BenchResult, EvalReport
from medscale.eval.score import score
from medscale.eval.stats import paired_verdict, summarise
from medscale.recipe import BenchmarkSource, GenerationSection


def evaluate_benchmark(model, tok, bench: Benchmark, mode: str = "letter", shots: int = 0, batch_size: int = 8,
                       system_prompt: str | None = None, generation: GenerationSection | None = None,
                       model_meta: dict | None = None, seed: int = 0) -> BenchResult:
    """Score one (already loaded, possibly subset) benchmark and summarise it with intervals."""
    outcomes, seconds = score(model, tok, bench, mode, shots, batch_size, system_prompt, generation, seed)
    notes = []
    if shots and not bench.dev:
        notes.append(f"{bench.name} has no dev split: each question's {shots} examples are other questions of the "
                     f"benchmark (never itself)")
    if system_prompt:
        notes.append("asked with the run's system prompt")
    return summarise(outcomes, benchmark=bench.name, fingerprint=bench.fingerprint(), language=bench.language,
                     mode=mode, shots=shots, model=model_meta, skipped=bench.skipped, notes=notes, seconds=seconds)


def load_benchmarks(refs: list[str | BenchmarkSource], data_dir: str | None = None, limit: int | None = None,
                    seed: int = 0, skip_bad: bool | None = None) -> list[Benchmark]:
    """Every benchmark loaded (and cut to its fixed subset) before any model is: bad input fails in seconds."""
    return [load_benchmark(r, data_dir, skip_bad).subset(limit, seed) for r in refs]


def run_eval(model_ref: str, benchmarks: list[str | BenchmarkSource], adapter: str | None = None,
             checkpoint: int | None = None, against: str | None = None, mode: str = "letter", shots: int = 0,
             limit: int | None = None, seed: int = 0, data_dir: str | None = None, batch_size: int = 8,
             generation: GenerationSection | None = None, skip_bad: bool | None = None,
             system_prompt: str | None = None, dtype: str = "auto") -> EvalReport:
    """Evaluate MODEL on the benchmarks; with `against` (another model), score it on the same questions and give
    the paired verdict of MODEL against it."""
    from medscale.eval.resolve import resolve_model

    benches = load_benchmarks(benchmarks, data_dir, limit, seed, skip_bad)
    targets = [resolve_model(model_ref, adapter, checkpoint)] + ([resolve_model(against)] if against else [])

    def measure(base, adapter_path, meta) -> list[BenchResult]:
        from medscale.model.infer import load_for_inference

        model, tok = load_for_inference(base, adapter_path, dtype, trust_remote_code=meta["trust_remote_code"])
        prompt = system_prompt if system_prompt is not None else meta.get("system_prompt")
        results = [evaluate_benchmark(model, tok, b, mode, shots, batch_size, prompt, generation, meta, seed)
                   for b in benches]
        del model
        return results

    results = measure(*targets[0])
    report = EvalReport(model=targets[0][2], results=results)
    if against:
        report.against = measure(*targets[1])
        report.verdicts = [paired_verdict(a, b) for a, b in zip(report.against, results)]
    return report
