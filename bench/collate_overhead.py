"""CPU cost of medscale's collator per micro-batch (the GPU must never wait on it), per data.batching.

    python bench/collate_overhead.py RECIPE DATA_FILE FORMAT TOKENIZER_DIR [--batches 200]

Tokenizes the records with the recipe's data section, then times the collator on the micro-batches the
Trainer would draw (per_device_train_batch_size samples, or one packed row). Compare the milliseconds
with the step time of a GPU run (bench/speed.py): with dataloader_num_workers=0 the collator runs on the
training process between steps.
"""
from __future__ import annotations

import argparse
import random
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("data")
    ap.add_argument("format")
    ap.add_argument("tokenizer")
    ap.add_argument("--batches", type=int, default=200)
    a = ap.parse_args()
    from medscale.data.pipeline import build_datasets
    from medscale.model.tokenizer import load_tokenizer
    from medscale.plan import decide
    from medscale.recipe import load_recipe

    print(f"{'batching':14s} {'ms/micro-batch':>15s} {'tokens/micro-batch':>19s} {'us/1k tokens':>13s}")
    for batching in ("padded", "padding_free", "packed"):
        r = load_recipe(a.recipe, [f"data.sources=[{{path: {a.data}, format: {a.format}}}]", "data.eval_sources=[]",
                                   "data.eval_size=0", "eval.eval_strategy=no", "data.num_proc=1",
                                   f"data.batching={batching}"])
        r.model.path = a.tokenizer
        data = build_datasets(r.data, load_tokenizer(r.model), r.train.seed, decide(r).token_budget)
        per = 1 if batching == "packed" else r.train.per_device_train_batch_size
        rng = random.Random(0)
        batches = [[data.train[rng.randrange(len(data.train))] for _ in range(per)] for _ in range(a.batches)]
        t, tokens = time.perf_counter(), 0
        for feats in batches:
            tokens += data.collator(feats)["input_ids"].numel()
        el = time.perf_counter() - t
        print(f"{batching:14s} {1e3 * el / a.batches:15.3f} {tokens / a.batches:19.0f} {1e6 * el / tokens * 1e3:13.1f}")


if __name__ == "__main__":
    main()
