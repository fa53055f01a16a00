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
             system_prompt: str | None = None, dtype: str = "auto",
             train_data: list[str] | None = None) -> EvalReport:
    """Evaluate MODEL on the benchmarks; with `against` (another model), score it on the same questions and give
    the paired verdict of MODEL against it, with a contamination check beside every "better" (against
    `train_data`, default: the data sources in the run's recipe.resolved.yaml)."""
    from medscale.eval.resolve import resolve_model

    benches = load_benchmarks(benchmarks, data_dir, limit, seed, skip_bad)
    started_group = _join_process_group()
    targets = [resolve_model(model_ref, adapter, checkpoint)] + ([resolve_model(against)] if against else [])

    def measure(base, adapter_path, meta) -> list[BenchResult]:
        from medscale.model.infer import free_memory, load_for_inference

        model, tok = load_for_inference(base, adapter_path, dtype, trust_remote_code=meta["trust_remote_code"])
        prompt = system_prompt if system_prompt is not None else meta.get("system_prompt")
        results = [evaluate_benchmark(model, tok, b, mode, shots, batch_size, prompt, generation, meta, seed)
                   for b in benches]
        del model
        free_memory()
        return results

    results = measure(*targets[0])
    report = EvalReport(model=targets[0][2], results=results)
    if against:
        report.against = measure(*targets[1])
        report.verdicts = [paired_verdict(a, b) for a, b in zip(report.against, results)]
        check_contamination(report, benches, train_data or _trained_on(targets[0][1]))
    if started_group:
        import torch.distributed as dist

        dist.destroy_process_group()
    return report


def _trained_on(adapter) -> list[str]:
    """The training data paths recorded in a run's resolved recipe ([] for a plain model folder)."""
    from medscale.model.infer import trained_recipe

    return [src["path"] for src in (trained_recipe(adapter).get("data") or {}).get("sources") or []]


def training_texts(paths: list[str]):
    """Every turn's text of the training records, in any layout medscale.data reads."""
    from medscale.data.formats import load_conversations

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
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True
