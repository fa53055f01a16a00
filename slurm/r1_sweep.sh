#!/bin/bash
# slurm/r1_sweep.sh — seed 004: the six DeepSeek-R1-Distill LoRA runs (1.5B/7B/14B x fast/gentle) as one job
# array, one GPU each; array task i runs R1_RECIPES[i]. Each task is its own job in the registry, and a
# preempted task saves, requeues itself and continues (see slurm/common.sh).
# Needs first:  medscale installed (`pip install -e .` in the env `python3` runs; or set MEDSCALE_PYTHON);
#               deepseek-ai/DeepSeek-R1-Distill-Qwen-{1.5B,7B,14B} in ${MEDSCALE_MODELS:-~/models};
#               medical-o1-reasoning-SFT/medical_o1_sft_Chinese.json in ${MEDSCALE_DATA:-~/data}.
# Submit:       cd /path/to/medscale && sbatch slurm/r1_sweep.sh
#               cd /path/to/medscale && sbatch --array=2,3 slurm/r1_sweep.sh      (only the 7B pair)
# Override:     sbatch slurm/r1_sweep.sh train.learning_rate=3e-6       (applies to every task)
#SBATCH --job-name=r1-sweep
#SBATCH --array=0-5
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@300         # 5 min warning, to this shell only: common.sh turns it into one SIGTERM
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out

R1_RECIPES=(
    r1-distill-1.5b-lora-fast r1-distill-1.5b-lora-gentle
    r1-distill-7b-lora-fast r1-distill-7b-lora-gentle
    r1-distill-14b-lora-fast r1-distill-14b-lora-gentle
)
source "${MEDSCALE_REPO:-$SLURM_SUBMIT_DIR}/slurm/common.sh" ||
    { echo "slurm/common.sh not found: sbatch from the medscale checkout, or set MEDSCALE_REPO" >&2; exit 2; }
task=${SLURM_ARRAY_TASK_ID:-}
if [[ ! $task =~ ^[0-9]+$ ]] || [ "$task" -ge "${#R1_RECIPES[@]}" ]; then
    echo "r1_sweep.sh: array task '$task' has no recipe (use --array=0-$((${#R1_RECIPES[@]} - 1)))" >&2
    exit 2
fi
medscale_run "${R1_RECIPES[$task]}" "$@"
