"""Benchmarks during training: a Trainer callback that scores `eval.benchmarks` at every evaluation, logs
`bench/<name>/acc`, and warns the moment the tuned score falls below the base's."""
from __future__ import annotations

import logging
from typing import Callable

from transformers import TrainerCallback

from medscale.eval.bench import Benchmark
from medscale.eval.result import BenchResult
from medscale.eval.run import evaluate_benchmark, load_benchmarks
from medscale.eval.stats import paired_verdict
from medscale.recipe import GenerationSection, Recipe

log = logging.getLogger("medscale.eval")


class BenchmarkCallback(TrainerCallback):
    """At each evaluation event, score every benchmark (the same fixed subset each time, so steps pair) with the
    model being trained, and the control set when one is given. The base's score is measured once, at the first
    evaluation, with the adapter switched off (exactly the model the run started from, also after a resume), unless
    `base` results are given. Every process must run it: scoring is sharded across them.

    Logging: with `log` (pass `trainer.log`) the figures reach every logger (SwanLab, the log history);
    without it they are added to the evaluation's metrics and to its entry of `state.log_history`."""

    def __init__(self, benchmarks: list[Benchmark], mode: str = "letter", shots: int = 0, batch_size: int = 8,
                 system_prompt: str | None = None, *, generation: GenerationSection | None = None,
                 base: dict[str, BenchResult] | None = None, log: Callable[[dict], None] | None = None,
                 control: dict | None = None):
        self.benchmarks, self.mode, self.shots, self.batch_size = benchmarks, mode, shots, batch_size
        self.system_prompt, self.generation, self.log = system_prompt, generation, log
        self.control = control  # measure_control's keyword arguments (path, limit, ...), or None
        self.base: dict[str, BenchResult] = dict(base or {})
        self.latest: dict[str, BenchResult] = {}
        self.warnings: list[str] = []

    @classmethod
    def from_recipe(cls, recipe: Recipe, **kw) -> "BenchmarkCallback":
        e = recipe.eval
        benches = load_benchmarks(e.benchmarks, e.data_dir, e.benchmark_limit, recipe.train.seed)
        control = (dict(path=e.control, limit=e.benchmark_limit, max_length=recipe.data.max_length,
                        batch_size=e.per_device_eval_batch_size, system_prompt=recipe.data.system_prompt,
                        data_dir=e.data_dir, seed=recipe.train.seed) if e.control else None)
        return cls(benches, e.benchmark_mode, e.shots, e.per_device_eval_batch_size, recipe.data.system_prompt,
                   generation=recipe.generation, control=control, **kw)

    def _score(self, model, tok, bench: Benchmark, label: str, step: int) -> BenchResult:
        return evaluate_benchmark(model, tok, bench, self.mode, self.shots, batch_size=self.batch_size,
                                  system_prompt=self.system_prompt, generation=self.generation,
                                  model_meta={"label": label, "step": step})

    def on_evaluate(self, args, state, control, *, model=None, processing_class=None, metrics=None, **kwargs):
        from medscale.eval.verdict import without_adapter

        logs: dict[str, float] = {}
        for bench in self.benchmarks:
            if bench.name not in self.base:
                with without_adapter(model):
                    self.base[bench.name] = self._score(model, processing_class, bench, "base", state.global_step)
            result = self._score(model, processing_class, bench, f"step {state.global_step}", state.global_step)
            self.latest[bench.name] = result
            logs[f"bench/{bench.name}/acc"] = result.acc
            base = self.base[bench.name]
            if result.acc < base.acc:
                v = paired_verdict(base, result, a_label=base.model["label"], b_label=f"step {state.global_step}")
                msg = (f"benchmark {bench.name} at step {state.global_step} fell below the base: "
                       f"{100 * result.acc:.1f}% vs {100 * base.acc:.1f}% ({v.verdict}, 95% CI "
                       f"{100 * v.ci_low:+.1f} to {100 * v.ci_high:+.1f} points, n={v.n})")
                self.warnings.append(msg)
                if state.is_world_process_zero:
                    log.warning(msg)
                logs[f"bench/{bench.name}/below_base"] = 1.0
        if self.control:
            from medscale.eval.control import measure_control

            c = measure_control(model, processing_class, **self.control)
            logs[f"control/{c.kind}"] = c.value
        if metrics is not None:
            metrics.update(logs)
        if self.log is not None:
            self.log(logs)
        elif state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(logs)  # the evaluation's own entry, just logged by the Trainer
        else:
            state.log_history.append({**logs, "step": state.global_step})
        return control
