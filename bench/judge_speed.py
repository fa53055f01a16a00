"""Judge throughput (pairs judged per minute) of an R1-7B-shaped judge (random weights) on one GPU: huatuo100's
questions with two answers each (GPT-4's reference answer as A, its first half as B), every pair in both orders with
medscale's rubric prompt, through the engine's in-process backend (continuous batching on CUDA), every reply forced
to --new-tokens tokens (a reasoning judge writes its think block and the verdict lines: 512-1024 tokens).

    CUDA_VISIBLE_DEVICES=0 python bench/judge_speed.py --configs .gpu/model_configs.json --tokenizer .gpu/tok \
        --eval-data .gpu/eval --pairs 100 --new-tokens 768
    python bench/judge_speed.py --tiny --pairs 4 --new-tokens 8      # CPU smoke run

Random weights write no verdict line: every reply counts unparseable, which the line printed says; the number
measured is the time. Writes $OUT/judge_speed.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def sides(eval_data: Path | None, n: int):
    from medscale.judge.sources import Answers, open_questions

    qs = open_questions("huatuo100", eval_data) if eval_data else open_questions("seed004")
    qs = (qs * (n // len(qs) + 1))[:n]
    qs = [replace(q, id=f"{q.id}#{i}") for i, q in enumerate(qs)]
    full = {q.id: q.reference or q.prompt * 8 for q in qs}
    return qs, [Answers("reference", full, {}), Answers("half", {k: v[:len(v) // 2] for k, v in full.items()}, {})]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path("/work/shared/realdata/model_configs.json"))
    ap.add_argument("--tokenizer", type=Path, default=Path("/work/shared/realdata/qwen3_tokenizer"))
    ap.add_argument("--eval-data", type=Path, default=None)
    ap.add_argument("--shape", default="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--new-tokens", type=int, default=768)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run on the tiny random Qwen3")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "judge_speed.json")
    a = ap.parse_args()
    import torch

    from gen_speed import build, tiny
    from medscale.data.chat import render_prompt
    from medscale.generate.engine import Request, generate
    from medscale.generate.local import LocalBackend
    from medscale.generate.settings import SamplingSettings
    from medscale.judge import protocol
    from medscale.judge.run import judge_prompts

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = tiny() if a.tiny else build(a.shape, a.configs, a.tokenizer, device)
    qs, (ref, half) = sides(a.eval_data, a.pairs)
    prompts = judge_prompts("pairwise", [ref, half], qs, "auto")
    reqs = [Request(i, [{"role": "user", "content": p}]) for i, p in prompts]
    prompt_tokens = [len(tok.encode(render_prompt(tok, r.messages, None), add_special_tokens=False)) for r in reqs]
    backend = LocalBackend(model, tok, ignore_eos=True, chunk=len(reqs))
    t0 = time.perf_counter()
    run = generate(reqs, SamplingSettings(do_sample=False, max_new_tokens=a.new_tokens), backend)
    seconds = time.perf_counter() - t0
    replies = {g.id: g.text for g in run.generations}
    pairs = [protocol.judge_pair(q.id, replies[f"{q.id}|AB"], replies[f"{q.id}|BA"], 0, 0) for q in qs]
    s = protocol.summarise_pairs(pairs)
    row = {"shape": "tiny" if a.tiny else a.shape, "device": torch.cuda.get_device_name(0) if device == "cuda"
           else "cpu", "pairs": len(qs), "replies": len(reqs), "new_tokens_each": a.new_tokens,
           "mean_prompt_tokens": round(sum(prompt_tokens) / len(prompt_tokens), 1), "seconds": round(seconds, 2),
           "pairs_per_minute": round(60 * len(qs) / seconds, 1), "output_tok_s": round(run.tokens / seconds, 1),
           "backend": run.backend, "unparseable_replies": s.unparseable_replies}
    print(json.dumps(row, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
