"""Tokenization throughput of the data pipeline: records/s for N records on this machine.

    python bench/tokenize_throughput.py --source ../shared/realdata/medicalgpt/medical_sft_1K_format.jsonl \
        --tokenizer ../shared/realdata/qwen3_tokenizer --records 100000 --num-proc 2

Replicates the source file to N records (a temp file), then times medscale.data.pipeline.build_datasets
(read, convert, render with the chat template, tokenize with loss masks, filter) without the cache.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=2048)
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from medscale.data.pipeline import build_datasets
    from medscale.recipe import DataSection

    lines = [ln for ln in Path(a.source).read_text(encoding="utf-8").splitlines() if ln.strip()]
    with tempfile.TemporaryDirectory() as d:
        big = Path(d) / "big.jsonl"
        big.write_text("\n".join(lines[i % len(lines)] for i in range(a.records)) + "\n", encoding="utf-8")
        tok = AutoTokenizer.from_pretrained(a.tokenizer)
        data = DataSection(sources=[{"path": str(big)}], max_length=a.max_length, num_proc=a.num_proc)
        t = time.perf_counter()
        built = build_datasets(data, tok, seed=0)
        dt = time.perf_counter() - t
    s = built.stats["train"]
    print(f"records {s['records']}  kept {s['kept']}  tokens {s['tokens']}  num_proc {a.num_proc}")
    print(f"RESULT {s['records'] / dt:.0f} records/s, {s['tokens'] / dt:.0f} tokens/s ({dt:.1f} s)")


if __name__ == "__main__":
    main()
