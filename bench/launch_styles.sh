#!/usr/bin/env bash
# Throughput of the seed 003 recipe (qwen3-8b-lora-huatuo: Qwen3-8B shape, random weights, real Qwen3 tokenizer,
# real medical_sft records) through medscale's launch styles on N GPUs of this host, and the plain HF Trainer +
# PEFT baseline (../shared/gpu/hf_baseline.py) on one GPU in the same call. Prints a table; logs under $OUT.
#   bash bench/launch_styles.sh [N_GPUS] [STEPS]       (repo root; STYLES="ddp zero3 baseline" by default; also zero2)
# Needs .gpu/ in the repo root: qwen3_tokenizer/, model_configs.json, medical_sft_1K_format.jsonl, hf_baseline.py.
set -uo pipefail
N=${1:-$(nvidia-smi -L | wc -l)}; STEPS=${2:-20}; STYLES=${STYLES:-ddp zero3 baseline}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; export MEDSCALE_HOME=/tmp/msh
python3 -c "
import sys; from pathlib import Path; sys.path.insert(0, 'bench')
from gpu_check import build_random
build_random('Qwen/Qwen3-8B', Path('.gpu/model_configs.json'), Path('.gpu/qwen3_tokenizer'), Path('/tmp/m8b'))"
common=(model.path=/tmp/m8b "data.sources=[{path: .gpu/medical_sft_1K_format.jsonl, format: sharegpt}]"
        data.eval_size=0 eval.eval_strategy=no "train.max_steps=$STEPS" train.save_steps=100000 train.logging_steps=5
        track.swanlab=null train.effective_batch_size=null "dist.num_processes=$N")
declare -A extra=([ddp]="" [zero2]="dist.deepspeed=zero2" [zero3]="dist.deepspeed=zero3")
for s in $STYLES; do
  if [ "$s" = baseline ]; then
    CUDA_VISIBLE_DEVICES=0 python3 .gpu/hf_baseline.py --shape qwen3-8b --lora_r 16 --lora_alpha 32 --lora_dropout 0.05 \
      --bs 4 --accum 2 --steps "$STEPS" --median 112 --sigma 1.0 > "$OUT/baseline.log" 2>&1
    continue
  fi
  medscale train qwen3-8b-lora-huatuo "${common[@]}" ${extra[$s]} "train.output_dir=/tmp/o_$s" > "$OUT/$s.log" 2>&1
  cp "/tmp/o_$s/run_summary.json" "$OUT/summary_$s.json" 2>/dev/null
done
python3 - "$OUT" "$N" <<'PY'
import json, sys, pathlib
out, n = pathlib.Path(sys.argv[1]), sys.argv[2]
print(f"\n{'style':10s} {'GPUs':>4s} {'tokens/s/GPU':>13s} {'samples/s':>10s} {'peak GB':>8s} {'MFU':>6s}  steps")
for f in sorted(out.glob("summary_*.json")):
    s = json.loads(f.read_text())
    print(f"{f.stem[8:]:10s} {s['world_size']:>4d} {s.get('tokens_per_s_per_device', 0):>13.0f} "
          f"{s.get('samples_per_s', 0):>10.2f} {s.get('peak_mem_reserved_gb', 0):>8.1f} {s.get('mfu', 0):>6.3f}  "
          f"{s['steps_per_rank']}")
b = out / "baseline.log"
lines = [l for l in b.read_text().splitlines() if l.startswith("RESULT")] if b.exists() else []
if lines:
    r = json.loads(lines[-1][7:])
    print(f"{'hf-baseline':10s} {1:>4d} {r.get('tokens_per_s', 0):>13.0f} {r.get('samples_per_s', 0):>10.2f} "
          f"{r.get('peak_reserved_gb', r.get('peak_mem_reserved_gb', 0)):>8.1f}")
PY
