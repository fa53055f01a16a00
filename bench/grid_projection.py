"""Seed 004's grid on one GPU: measure each model shape for a few steps, extrapolate the whole sweep's wall time.

    PYTHONUNBUFFERED=1 python bench/grid_projection.py --tokenizer QWEN3_TOKENIZER_DIR \
        --configs model_configs.json --data medical_o1_zh_916.jsonl [--shapes 1.5B,7B] [--steps 2] [--out DIR]

For each DeepSeek-R1-Distill-Qwen shape (random bf16 weights in the real shape from --configs, the real Qwen3
tokenizer, real Chinese medical-o1 records), it trains the shipped gentle recipe of that size (4-bit LoRA r16,
8192 tokens, gradient checkpointing, the Liger kernel, 2 samples per micro-batch: exactly what a sweep trial runs,
through medscale.train.run) for 1 warm-up + --steps timed optimizer steps, evaluating at step 0 and at the end on
--eval-records held-out records. From that: seconds per micro-batch (optimizer steps only, warm-up left out), per
held-out record evaluated, and to load the model. The projection of every trial of medscale/sweeps/
r1-distill-seed004.yaml is then

    load + first step + (steps - 1) x accumulation x micro-batch + evaluations (every 5 steps from 0) x 50 records

(fast: 60 steps at accumulation 32, batch 64; gentle: 30 steps at accumulation 4, batch 8), summed for one GPU
(trials one after another) and spread over --gpus GPUs (longest first). 14B is measured with --shapes 1.5B,7B,14B
(minutes more: it is built and quantised here); without it, its figures are extrapolated from 7B by parameter count
and said to be. Prints one RESULT json line per shape and a PROJECTION table; writes projection.json to --out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

SHAPES = {"1.5B": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "7B": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
          "14B": "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"}
EVAL_EVERY, EVAL_RECORDS = 5, 50  # seed 004: eval_steps=5 from step 0, the recipes' 50 held-out records


def measure(shape: str, args) -> dict:
    """Train the shape's gentle recipe for 1 + --steps optimizer steps; its timings."""
    import torch

    from gpu_check import build_random
    from medscale.recipe import load_recipe
    from medscale.train.run import run

    t0 = time.perf_counter()
    model_dir = build_random(SHAPES[shape], args.configs, args.tokenizer, args.models / shape)
    build_s = time.perf_counter() - t0
    out = Path(tempfile.mkdtemp(prefix=f"grid-{shape}-"))
    steps = 1 + args.steps
    recipe = load_recipe(f"r1-distill-{shape.lower()}-lora-gentle", [
        f"model.path={model_dir}", f"train.output_dir={out}", "track.swanlab=null", f"train.max_steps={steps}",
        f"data.sources=[{{path: '{args.data}', format: medical-o1, limit: {500 + args.eval_records}}}]",
        f"data.eval_size={args.eval_records}", f"eval.eval_steps={steps}", "train.save_steps=1000",
        "train.warmup_steps=0", "eval.benchmarks=[]", "eval.control=null"])
    torch.cuda.reset_peak_memory_stats()
    s = run(recipe)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    evals = [h["eval_runtime"] for h in history if "eval_runtime" in h]
    accum = recipe.train.gradient_accumulation_steps
    step_s = accum * recipe.train.per_device_train_batch_size / s.samples_per_s
    micro_s = step_s / accum
    eval_record_s = min(evals) / args.eval_records  # the step-0 evaluation also warms the kernels up
    setup_s = s.wall_s - (s.train_runtime_s or 0)  # loading, quantising, data, the attempt's record
    res = {"shape": shape, "device": torch.cuda.get_device_name(), "build_random_s": round(build_s, 1),
           "setup_s": round(setup_s, 1), "first_step_s": round(s.first_step_s or step_s, 2),
           "micro_batch_s": round(micro_s, 3), "eval_s_per_record": round(eval_record_s, 4),
           "tokens_per_s": round(s.tokens_per_s or 0), "peak_reserved_gb": round(s.peak_mem_reserved_gb or 0, 1),
           "timed_steps": args.steps, "accumulation_measured": accum, "measured": True}
    print("RESULT " + json.dumps(res), flush=True)
    return res


def scaled(from_: dict, shape: str, configs: Path) -> dict:
    """A shape not measured here: the measured one's figures times the ratio of parameter counts."""
    models = json.loads(configs.read_text())["models"]
    k = models[SHAPES[shape]]["approx_params"] / models[SHAPES[from_["shape"]]]["approx_params"]
    return {**from_, "shape": shape, "measured": False, "scaled_from": from_["shape"], "factor": round(k, 2),
            **{key: round(from_[key] * k, 4) for key in ("setup_s", "first_step_s", "micro_batch_s",
                                                          "eval_s_per_record")}}


def trial_seconds(m: dict, steps: int, accum: int) -> float:
    evals = steps // EVAL_EVERY + 1
    return (m["setup_s"] + m["first_step_s"] + (steps - 1) * accum * m["micro_batch_s"]
            + evals * EVAL_RECORDS * m["eval_s_per_record"])


def project(measured: dict[str, dict], gpus: int) -> dict:
    from medscale.sweep.spec import load_spec, plan_sweep

    plan = plan_sweep(*load_spec("r1-distill-seed004"))
    rows = []
    for t in plan.trials:
        size = t.recipe.model.path.rsplit("-", 1)[-1]  # ...-Qwen-7B
        m = measured[size]
        secs = trial_seconds(m, t.recipe.train.max_steps, t.recipe.train.gradient_accumulation_steps)
        rows.append({"trial": t.label, "steps": t.recipe.train.max_steps,
                     "batch": t.recipe.train.per_device_train_batch_size * t.recipe.train.gradient_accumulation_steps,
                     "minutes": round(secs / 60, 1), "from": "measured" if m["measured"] else
                     f"scaled from {m['scaled_from']} x{m['factor']}", "addition": "ADDITION" in (t.note or "")})
    lanes = [0.0] * gpus
    for r in sorted(rows, key=lambda r: -r["minutes"]):
        lanes[lanes.index(min(lanes))] += r["minutes"]
    seed_only = sum(r["minutes"] for r in rows if not r["addition"])
    return {"trials": rows, "one_gpu_minutes": round(sum(r["minutes"] for r in rows), 1),
            "one_gpu_minutes_seed_trials_only": round(seed_only, 1), "gpus": gpus,
            "wall_minutes_on_gpus": round(max(lanes), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", type=Path, required=True, help="the real Qwen3 tokenizer folder")
    ap.add_argument("--configs", type=Path, required=True, help="model_configs.json (the real shapes)")
    ap.add_argument("--data", type=Path, required=True, help="Chinese medical-o1 records (Question/Complex_CoT/...)")
    ap.add_argument("--shapes", default="1.5B,7B", help="shapes to measure (1.5B, 7B, 14B)")
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps per shape (after 1 warm-up)")
    ap.add_argument("--eval-records", type=int, default=8, help="held-out records of each evaluation")
    ap.add_argument("--gpus", type=int, default=4, help="also project the wall time on this many GPUs")
    ap.add_argument("--models", type=Path, default=Path("/tmp/medscale-models"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    a = ap.parse_args()
    os.environ.setdefault("MEDSCALE_HOME", tempfile.mkdtemp(prefix="medscale-bench-home-"))
    measured = {s: measure(s, a) for s in a.shapes.split(",")}
    biggest = measured[max(measured, key=lambda s: float(s[:-1]))]
    for s in SHAPES:
        measured.setdefault(s, scaled(biggest, s, a.configs))
    p = project(measured, a.gpus)
    print("PROJECTION seed 004 grid (medscale/sweeps/r1-distill-seed004.yaml) on "
          f"{next(m['device'] for m in measured.values() if m['measured'])}")
    print(f"{'trial':14s} {'steps':>5s} {'batch':>5s} {'minutes':>8s}  source")
    for r in p["trials"]:
        print(f"{r['trial']:14s} {r['steps']:5d} {r['batch']:5d} {r['minutes']:8.1f}  {r['from']}"
              + ("  (addition)" if r["addition"] else ""))
    print(f"one GPU, trials one after another: {p['one_gpu_minutes']} min ({p['one_gpu_minutes_seed_trials_only']} "
          f"without the addition); on {a.gpus} GPUs: {p['wall_minutes_on_gpus']} min")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "projection.json").write_text(json.dumps({"measured": measured, **p}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
