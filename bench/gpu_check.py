"""GPU check: train a built-in recipe on random weights in a real model shape under a memory cap.

    python bench/gpu_check.py --shape Qwen/Qwen3-1.7B --configs model_configs.json \
        --tokenizer qwen3_tokenizer --cap-gb 16 -- qwen3-1.7b-qlora-v1 train.max_steps=20 ...

Builds the model folder (random bf16 weights, safetensors, the given tokenizer) if missing, caps this
process's usable GPU memory with torch.cuda.set_per_process_memory_fraction (a smaller card), runs
medscale.train.run on the recipe with model.path pointing at it, and prints one RESULT json line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
              "head_dim", "vocab_size", "rope_theta", "tie_word_embeddings", "max_position_embeddings", "rms_norm_eps")


def build_random(shape: str, configs: Path, tokenizer: Path, out: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    spec = json.loads(configs.read_text())["models"][shape]
    cfg = AutoConfig.for_model(spec["model_type"], **{k: spec[k] for k in SHAPE_KEYS if spec.get(k) is not None})
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", required=True)
    ap.add_argument("--configs", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=Path("/tmp/medscale-models"))
    ap.add_argument("--cap-gb", type=float, default=0)
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    recipe_args = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    path = build_random(a.shape, a.configs, a.tokenizer, a.models / a.shape.replace("/", "--"))
    if a.cap_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(a.cap_gb * 2**30 / total)
    torch.cuda.reset_peak_memory_stats()
    from medscale.recipe import load_recipe
    from medscale.train.run import run

    recipe = load_recipe(recipe_args[0], [*recipe_args[1:], f"model.path={path}"])
    s = run(recipe)
    keys = ("recipe", "global_step", "tokens_per_s", "samples_per_s", "peak_mem_alloc_gb", "peak_mem_reserved_gb",
            "mfu", "loss_first", "loss_last", "eval_loss_base", "eval_loss_final", "trainable_params")
    res = {k: getattr(s, k) for k in keys} | {"shape": a.shape, "cap_gb": a.cap_gb, "device": torch.cuda.get_device_name()}
    print("RESULT " + json.dumps(res), flush=True)
    if os.environ.get("OUT"):
        with open(Path(os.environ["OUT"]) / "results.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        shutil.copy(Path(s.paths.loss_plot), Path(os.environ["OUT"]) / f"loss-{s.recipe}.png")


if __name__ == "__main__":
    sys.exit(main())
