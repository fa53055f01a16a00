#!/bin/bash
# slurm/1p7b_qlora.sh — seeds 000-002: Qwen3-1.7B QLoRA on one 16 GB GPU, recipe qwen3-1.7b-qlora-v1 (default),
# -v2 or -v3, chosen by the first argument or $MEDSCALE_RECIPE. A preempted or timed-out run saves a
# checkpoint 5 min before the limit, requeues itself and continues (see slurm/common.sh).
# Needs first:  medscale installed (`pip install -e .` in the env `python3` runs; or set MEDSCALE_PYTHON);
#               Qwen/Qwen3-1.7B in ${MEDSCALE_MODELS:-~/models}/Qwen3-1.7B; delicate_medical_r1
#               train.jsonl/val.jsonl in ${MEDSCALE_DATA:-~/data}/delicate_medical_r1.
# Submit:       cd /path/to/medscale && sbatch slurm/1p7b_qlora.sh                       (v1)
#               cd /path/to/medscale && sbatch slurm/1p7b_qlora.sh qwen3-1.7b-qlora-v3   (or MEDSCALE_RECIPE=...)
# Override:     sbatch slurm/1p7b_qlora.sh qwen3-1.7b-qlora-v2 train.max_steps=400 train.warmup_ratio=0.05
#SBATCH --job-name=1p7b-qlora
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00             # a run that hits it requeues and continues
#SBATCH --signal=B:USR1@300         # 5 min warning, to this shell only: common.sh turns it into one SIGTERM
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

source "${MEDSCALE_REPO:-$SLURM_SUBMIT_DIR}/slurm/common.sh" ||
    { echo "slurm/common.sh not found: sbatch from the medscale checkout, or set MEDSCALE_REPO" >&2; exit 2; }
recipe=${MEDSCALE_RECIPE:-qwen3-1.7b-qlora-v1}
case ${1:-} in *=*|"") ;; *) recipe=$1; shift ;; esac  # a first argument without '=' names the recipe
medscale_run "$recipe" "$@"
