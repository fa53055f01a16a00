#!/bin/bash
# slurm/r1_sweep.sh — the SLURM path of a sweep definition (default: medscale/sweeps/r1-distill-seed004.yaml, seed
# 004's grid): array task i runs trial i of the sweep, one GPU each, with the trial's recipe, name and output dir
# exactly as `medscale sweep run` would (the trial entry: train, then eval). Each task registers the sweep and its
# trials in the registry (jobs of kind trial), so `medscale sweep show r1-distill-seed004` ranks them and a later
# `medscale sweep run` skips the finished ones. A preempted task saves, requeues itself and continues (slurm/common.sh).
# Needs first:  medscale installed (`pip install -e .` in the env `python3` runs; or set MEDSCALE_PYTHON);
#               deepseek-ai/DeepSeek-R1-Distill-Qwen-{1.5B,7B,14B} in ${MEDSCALE_MODELS:-~/models};
#               medical-o1-reasoning-SFT/medical_o1_sft_Chinese.json in ${MEDSCALE_DATA:-~/data};
#               MEDSCALE_HOME (or MEDSCALE_REGISTRY_URL) on storage every node shares.
# Submit:       cd /path/to/medscale && sbatch slurm/r1_sweep.sh
#               cd /path/to/medscale && sbatch --array=1,3 slurm/r1_sweep.sh        (only the two 7B trials)
#               MEDSCALE_SWEEP=my-sweep.yaml sbatch --array=0-3 slurm/r1_sweep.sh   (another sweep file, 4 trials)
#               (`medscale sweep run SWEEP --dry-run` lists a sweep's trials in array order)
# Or:           medscale sweep run r1-distill-seed004 --launcher slurm [--dry-run]   (the sweep driver submits only the
#               unfinished trials as one array, rendered like this script; --launch-opt partition=gpu ...)
# Override:     sbatch slurm/r1_sweep.sh train.save_steps=5        (applies to every task)
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

source "${MEDSCALE_REPO:-$SLURM_SUBMIT_DIR}/slurm/common.sh" ||
    { echo "slurm/common.sh not found: sbatch from the medscale checkout, or set MEDSCALE_REPO" >&2; exit 2; }
sweep=${MEDSCALE_SWEEP:-r1-distill-seed004}
task=${SLURM_ARRAY_TASK_ID:-}
if [[ ! $task =~ ^[0-9]+$ ]]; then
    echo "r1_sweep.sh: not an array task (SLURM_ARRAY_TASK_ID='$task'): submit with sbatch --array" >&2
    exit 2
fi
# The trial's recipe and overrides, NUL-separated (any character survives); registers the sweep and its trials.
mapfile -d '' trial < <("${MEDSCALE_PYTHON:-python3}" -m medscale.cli sweep slurm-task "$sweep" "$task")
[ "${#trial[@]}" -gt 0 ] || exit 2   # the command said why (an unknown sweep, a task past its last trial)
export MEDSCALE_ENTRY=trial          # every node runs the trial entry (launcher/slurm.py node-run --entry)
medscale_run "${trial[@]}" "$@"
