"""The eval entry: benchmarks in, typed results out. `run_eval` is what `medscale eval` (and, through the
launchers, an eval job) calls; `evaluate_benchmark` is the library step the training callback and the lead's
end-of-run verdict reuse."""
from __future__ import annotations

from medscale.eval.bench import Benchmark, load_benchmark
from medscale.eval.result import BenchResult, EvalReport
from medscale.eval.score import process_group_rank, score
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
    result = summarise(outcomes, benchmark=bench.name, fingerprint=bench.fingerprint(), language=bench.language,
                       mode=mode, shots=shots, model=model_meta, skipped=bench.skipped, notes=notes, seconds=seconds)
    result.processes = process_group_rank()[1]
    return result


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
    started_group = _join_process_group()
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
    if started_group:
        import torch.distributed as dist

        dist.destroy_process_group()
    return report


def _join_process_group() -> bool:
    """Started by torchrun / accelerate with several processes: join their group (NCCL on GPUs, gloo on CPU) so
    scoring is sharded. True when this call created the group (and so must destroy it)."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True
