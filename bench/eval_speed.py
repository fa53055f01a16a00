"""Evaluation throughput: questions/s of `medscale eval` (letter mode, batched) on random weights in the real Qwen3
shapes with the real tokenizer and the real benchmark files, and the projected time of the four Chinese medical
benchmarks (CMMLU medical, C-Eval medical, MedQA-zh, CMExam) at that shape.

    python bench/eval_speed.py --assets .gpu --eval-data .gpu/eval --shapes Qwen/Qwen3-1.7B,Qwen/Qwen3-8B \
        [--per-bench 128] [--batch-size 16]

Each benchmark is timed on a fixed subset (its questions differ in length: CMExam and MedQA are longer than CMMLU),
then extrapolated to its full size. Prints one table and writes $OUT/eval_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    import torch

    from gpu_check import build_random
    from medscale.benchmarks import MEDICAL_ZH
    from medscale.eval.run import evaluate_benchmark, load_benchmarks
    from medscale.model.infer import free_memory, load_for_inference

    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", type=Path, default=Path(".gpu"))
    ap.add_argument("--eval-data", type=Path, default=Path(".gpu/eval"))
    ap.add_argument("--shapes", default="Qwen/Qwen3-1.7B,Qwen/Qwen3-8B")
    ap.add_argument("--per-bench", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args()
    full = {b.name: len(b.questions) for b in load_benchmarks(list(MEDICAL_ZH), str(a.eval_data))}
    subsets = load_benchmarks(list(MEDICAL_ZH), str(a.eval_data), a.per_bench, seed=0)
    rows = []
    for shape in a.shapes.split(","):
        path = build_random(shape, a.assets / "model_configs.json", a.assets / "qwen3_tokenizer",
                            Path("/tmp/medscale-models") / shape.replace("/", "--"))
        model, tok = load_for_inference(path, dtype="bfloat16")
        evaluate_benchmark(model, tok, subsets[0].subset(16, 1), batch_size=a.batch_size)  # warm-up: kernels
        total_s = 0.0
        for bench in subsets:
            torch.cuda.synchronize()
            r = evaluate_benchmark(model, tok, bench, batch_size=a.batch_size)
            qps = r.n / r.seconds
            projected = full[bench.name] / qps
            total_s += projected
            rows.append({"shape": shape, "benchmark": bench.name, "timed_questions": r.n,
                         "questions_per_s": round(qps, 1), "full_size": full[bench.name],
                         "projected_s": round(projected, 1)})
        rows.append({"shape": shape, "benchmark": "four medical (total)", "full_size": sum(full.values()),
                     "projected_s": round(total_s, 1),
                     "questions_per_s": round(sum(full.values()) / total_s, 1)})
        del model
        free_memory()
    device = torch.cuda.get_device_name(0)
    out = Path(os.environ.get("OUT", "/tmp"))
    (out / "eval_speed.json").write_text(json.dumps({"device": device, "batch_size": a.batch_size, "mode": "letter",
                                                     "rows": rows}, indent=1))
    print(f"\n== eval throughput on {device} (letter mode, batch {a.batch_size}, random weights) ==")
    print(f"{'shape':24s} {'benchmark':22s} {'q/s':>8s} {'questions':>10s} {'projected':>10s}")
    for r in rows:
        print(f"{r['shape']:24s} {r['benchmark']:22s} {r['questions_per_s']:8.1f} {r['full_size']:10d} "
              f"{r['projected_s']:9.0f}s")


if __name__ == "__main__":
    main()
