"""How long `medscale export --merge` takes for an 8B model, parity check included.

    PYTHONUNBUFFERED=1 python bench/export_time.py --tokenizer QWEN3_TOKENIZER_DIR --configs model_configs.json \
        [--shape Qwen/Qwen3-8B] [--prompts 2] [--new-tokens 4] [--out DIR]

Builds random bf16 weights in the real shape (on the GPU, saved as safetensors) and a LoRA adapter of the
qwen3-8b-lora-huatuo recipe (r16 on q,k,v,o,gate,up,down; random A and B, so the merge changes every target weight)
beside its resolved recipe and the real Qwen3 tokenizer, as a training run leaves them. Then times the export: the
reference (base + adapter, fp32 on CPU, greedy continuations), the merge and the sharded safetensors write, and the
parity check (the exported folder loaded fp32 on CPU). Prints one RESULT json line; writes export_time.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def build_job(shape: str, configs: Path, tokenizer: Path, root: Path) -> Path:
    """A base folder and an adapter folder in the real shape, as a finished LoRA run leaves them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from gpu_check import SHAPE_KEYS
    from medscale.recipe import load_recipe

    spec = json.loads(configs.read_text())["models"][shape]
    cfg = AutoConfig.for_model(spec["model_type"], **{k: spec[k] for k in SHAPE_KEYS if spec.get(k) is not None})
    base, adapter = root / "base", root / "job"
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(base, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(tokenizer)
    tok.save_pretrained(base)
    recipe = load_recipe("qwen3-8b-lora-huatuo", [f"model.path={base}", f"train.output_dir={adapter}",
                                                  "dist.num_processes=1", "train.effective_batch_size=8"])
    a = recipe.adapter
    peft = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.lora_alpha, target_modules=a.target_modules,
                                            init_lora_weights=False))  # random B too: a merge that changes weights
    peft.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    (adapter / "recipe.resolved.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    del model, peft
    torch.cuda.empty_cache()
    return adapter


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--configs", type=Path, required=True)
    ap.add_argument("--shape", default="Qwen/Qwen3-8B")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=4)
    ap.add_argument("--root", type=Path, default=None, help="where the job and the export go (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    a = ap.parse_args()
    os.environ.setdefault("MEDSCALE_HOME", tempfile.mkdtemp(prefix="medscale-bench-home-"))
    root = a.root or Path(tempfile.mkdtemp(prefix="export-bench-"))
    t0 = time.perf_counter()
    job = build_job(a.shape, a.configs, a.tokenizer, root)
    build_s = time.perf_counter() - t0
    from medscale.export.merge import ExportError, export

    t0 = time.perf_counter()
    try:
        result = export(str(job), merge=True, out=root / "merged", prompts=a.prompts, new_tokens=a.new_tokens)
    except ExportError as e:  # the time is still a figure; the failure is what to look at
        print("RESULT " + json.dumps({"shape": a.shape, "build_s": round(build_s, 1), "failed": str(e)[:2000],
                                      "export_s_until_failure": round(time.perf_counter() - t0, 1)}), flush=True)
        return 1
    total_s = time.perf_counter() - t0
    import torch

    res = {"shape": a.shape, "device": torch.cuda.get_device_name(), "cpu_threads": torch.get_num_threads(),
           "build_s": round(build_s, 1), "export_s": round(total_s, 1), **result.seconds,
           "size_gb": round(result.size_bytes / 1e9, 2), "shards": len([f for f in result.files if f.startswith(
               "model-")]), "dtype": result.dtype, "parity": result.parity.line(),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1)}
    print("RESULT " + json.dumps(res), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "export_time.json").write_text(json.dumps({**res, "parity_detail": result.parity.__dict__}, indent=1))
    if a.root is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
