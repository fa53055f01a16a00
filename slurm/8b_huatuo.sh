#!/bin/bash
# slurm/8b_huatuo.sh — seed 003: Qwen3-8B bf16 LoRA on HuatuoGPT-sft-data-v1 (recipe qwen3-8b-lora-huatuo),
# 4 GPUs per node, DDP. One node by default; `sbatch --nodes=N` runs it on N nodes unchanged (one accelerate
# launcher per node, 4N processes). The recipe's effective batch (32) is kept: on 2 nodes
# gradient_accumulation_steps drops from 2 to 1; 4+ nodes need train.effective_batch_size=<larger> too.
# A preempted or timed-out run saves a checkpoint 5 min before the limit, requeues itself and continues
# (see slurm/common.sh); `medscale jobs show qwen3-8b-lora-huatuo` lists its attempts.
# Needs first:  medscale installed on every node (`pip install -e .` in the env `python3` runs; or set
#               MEDSCALE_PYTHON); Qwen/Qwen3-8B in ${MEDSCALE_MODELS:-~/models}/Qwen3-8B and
#               HuatuoGPT-sft-data-v1.jsonl in ${MEDSCALE_DATA:-~/data}; with several nodes these, $MEDSCALE_HOME
#               (runs, registry) and the checkout must be on storage every node sees.
# Submit:       cd /path/to/medscale && sbatch slurm/8b_huatuo.sh         (from the checkout: it finds common.sh)
#               cd /path/to/medscale && sbatch --nodes=2 slurm/8b_huatuo.sh
# Override:     sbatch slurm/8b_huatuo.sh train.learning_rate=5e-6 adapter.r=8
#SBATCH --job-name=8b-huatuo
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1         # one accelerate launcher per node; it starts one process per GPU
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32          # per node: 8 per GPU for tokenization and data loading
#SBATCH --time=24:00:00             # a run that hits it requeues and continues: a shorter limit costs restarts only
#SBATCH --signal=B:USR1@300         # 5 min warning, to this shell only: common.sh turns it into one SIGTERM per process
#SBATCH --requeue                   # needed for the self-requeue on exit 75 (and on node failure)
#SBATCH --open-mode=append          # every restart appends to the same log
#SBATCH --output=slurm-%x-%j.out

source "${MEDSCALE_REPO:-$SLURM_SUBMIT_DIR}/slurm/common.sh" ||
    { echo "slurm/common.sh not found: sbatch from the medscale checkout, or set MEDSCALE_REPO" >&2; exit 2; }
medscale_run qwen3-8b-lora-huatuo "$@"
