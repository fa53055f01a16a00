#!/usr/bin/env bash
# GPU check of the attempt lifecycle on one GPU (prints a table; logs under $OUT):
#   1. Qwen3-1.7B QLoRA (random weights, real tokenizer, real records) preempted with SIGTERM after its first
#      checkpoint -> exit 75 -> `medscale jobs resume` -> finishes; the registry shows both attempts.
#   2. ZeRO-3 on 1 GPU, bf16 LoRA + modules_to_save (embed/lm_head), with and without the Liger kernel.
# Needs .gpu/ (qwen3_tokenizer, model_configs.json, val.jsonl) in the repo root; run from the repo root:
#   bash bench/gpu_lifecycle_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MEDSCALE_HOME=/tmp/msh MEDSCALE_HEARTBEAT_S=2 CUDA_VISIBLE_DEVICES=0
python3 -c "
import sys; from pathlib import Path; sys.path.insert(0, 'bench')
from gpu_check import build_random
build_random('Qwen/Qwen3-1.7B', Path('.gpu/model_configs.json'), Path('.gpu/qwen3_tokenizer'), Path('/tmp/m17'))"
common=(model.path=/tmp/m17 "data.sources=[{path: .gpu/val.jsonl, format: r1-think}]" "data.eval_sources=[]"
        data.eval_size=16 train.max_steps=30 train.save_steps=10 train.logging_steps=1 eval.eval_steps=10
        track.swanlab=null)
out=$MEDSCALE_HOME/runs/qwen3-1.7b-qlora-v1
medscale train qwen3-1.7b-qlora-v1 "${common[@]}" > "$OUT/preempt.log" 2>&1 & pid=$!
for _ in $(seq 600); do [ -f "$out/checkpoint-10/manifest.json" ] && break; sleep 0.5; done
sleep 4
t0=$(date +%s.%N); kill -TERM $pid; wait $pid; pre=$?; t1=$(date +%s.%N)
medscale jobs resume qwen3-1.7b-qlora-v1 > "$OUT/resume.log" 2>&1; res=$?
COLUMNS=200 medscale jobs show qwen3-1.7b-qlora-v1 > "$OUT/jobs_show.txt" 2>&1
z3=(qwen3-1.7b-qlora-v1 "${common[@]}" model.load_in_4bit=false dist.deepspeed=zero3 train.optim=adamw_torch
    "adapter.modules_to_save=[embed_tokens, lm_head]" train.max_steps=6 train.save_steps=3)
medscale train "${z3[@]}" train.use_liger_kernel=false train.output_dir=/tmp/z3a > "$OUT/zero3.log" 2>&1; za=$?
medscale train "${z3[@]}" train.use_liger_kernel=true train.output_dir=/tmp/z3b > "$OUT/zero3_liger.log" 2>&1; zb=$?
cat "$OUT/jobs_show.txt"
printf '\n%-52s %s\n' check result
printf '%-52s %s\n' "SIGTERM after checkpoint-10: exit code (want 75)" "$pre"
printf "%-52s %s s\n" "  signal -> process gone" "$(python3 -c "print(round($t1 - $t0, 1))")"
printf '%-52s %s\n' "jobs resume to step 30: exit code (want 0)" "$res"
printf '%-52s %s\n' "ZeRO-3 1 GPU, bf16 LoRA + modules_to_save" "$za"
printf '%-52s %s\n' "ZeRO-3 1 GPU, same + Liger kernel" "$zb"
