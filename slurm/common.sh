# slurm/common.sh — sourced by every medscale SLURM script (and by the scripts `medscale submit slurm` renders).
# The one place that starts training on the nodes of a job and handles preemption:
#
#   medscale_run RECIPE [key=value ...]
#
# 1. srun starts ONE task per node: `python -m launcher.slurm node-run`, which builds that node's
#    `accelerate launch --num_machines N --machine_rank R --main_process_ip H --main_process_port P
#    --num_processes <total> --config_file cluster/accelerate/<cfg>.yaml -m medscale.train RECIPE ...`
#    (launcher/slurm.py; `python -m launcher.slurm node-command ...` prints it). R is $SLURM_NODEID read ON
#    EACH NODE (it sits in single quotes below; expanded in this batch shell it would be 0 on every node).
#    H is the first host of the allocation, where this batch shell runs; P a port free on it now.
# 2. Stop signal, exactly once: `#SBATCH --signal=B:USR1@300` signals only this shell, 5 min before the time
#    limit (test it: `scancel --signal=USR1 --batch JOBID`). The trap sends SIGUSR2 to srun, which forwards it
#    to every process of the step on every node; only the node wrapper acts on it (accelerate/torchrun and the
#    workers run with SIGUSR1/SIGUSR2 ignored) and sends ONE SIGTERM to its torchrun, which forwards one to each
#    worker and waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT (300 s) while they save a verified checkpoint.
#    Not `kill -TERM <srun>`: srun then kills the step ("forcing job termination"). Not a SIGTERM to the step:
#    every worker would get it twice (directly and from torchrun). Not SIGUSR1 to torchrun: it dies of it.
# 3. Exit code 75 (preempted, checkpoint saved): `scontrol requeue` of this job; it starts again as the
#    same SLURM job (needs --requeue; SLURM holds it ~2 min, BeginTime, before it may start), and the recipe's
#    train.resume=auto makes that a new attempt from the newest verified checkpoint. 4 (cancelled with
#    `medscale jobs cancel`), 0 and any other code end the job: no requeue.
#
# Environment: MEDSCALE_PYTHON (default python3: the env with medscale installed, same on every node),
# MEDSCALE_REPO (default: the checkout holding this file), MEDSCALE_MAIN_PORT (default: a free port),
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT (default 300). MEDSCALE_HOME / MEDSCALE_REGISTRY_URL reach the job through
# sbatch's --export=ALL (the default) and must name storage / a database every node can reach.

MEDSCALE_EXIT_PREEMPTED=75  # medscale/errors.py
MEDSCALE_EXIT_CANCELLED=4
MEDSCALE_REPO=${MEDSCALE_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export MEDSCALE_REPO
if [ -d "$MEDSCALE_REPO/launcher" ]; then  # a checkout: use its launcher/ and medscale/ (an install has them)
    export PYTHONPATH="$MEDSCALE_REPO${PYTHONPATH:+:$PYTHONPATH}"
fi

_medscale_srun=""
_medscale_warned=""
_medscale_interrupted=""

_medscale_on_warning() {
    _medscale_interrupted=1
    if [ -z "$_medscale_warned" ]; then
        echo "medscale: $(date '+%F %T') stop signal (SLURM time limit or preemption warning): saving a checkpoint"
    fi
    _medscale_warned=1
    # srun forwards SIGUSR2 to every process of its step, on every node (SIGTERM it would turn into a kill).
    [ -n "$_medscale_srun" ] && kill -USR2 "$_medscale_srun" 2>/dev/null
    return 0
}

_medscale_free_port() {  # _medscale_free_port PYTHON: a TCP port free on this host now
    "$1" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

medscale_requeue() {  # medscale_requeue EXIT_CODE: put this job back in the queue, then end with EXIT_CODE
    # An array task by ARRAYID_TASKID: the first task's SLURM_JOB_ID is the array's own id, and requeueing that
    # would requeue (kill) every running task of the array.
    local self=$SLURM_JOB_ID
    [ -n "$SLURM_ARRAY_JOB_ID" ] && self=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
    echo "medscale: $(date '+%F %T') preempted with a verified checkpoint: scontrol requeue $self" \
         "(restart $((${SLURM_RESTART_COUNT:-0} + 1)); it resumes from that checkpoint)"
    local try
    for try in 1 2 3; do  # a busy slurmctld can time out; a job without --requeue fails every time
        scontrol requeue "$self" && break
        [ "$try" = 3 ] && echo "medscale: requeue failed (submitted without --requeue?): continue later with" \
                               "\`medscale jobs resume\`" >&2
        [ "$try" != 3 ] && sleep 5
    done
    exit "$1"  # SLURM ends this run of the job as it requeues it
}

medscale_run() {
    local recipe=$1
    if [ -z "$recipe" ]; then echo "medscale_run: usage: medscale_run RECIPE [key=value ...]" >&2; exit 2; fi
    shift
    if [ -z "$SLURM_JOB_ID" ]; then
        echo "medscale: not inside a SLURM job: submit with sbatch (or use \`medscale train $recipe\` here)" >&2
        exit 2
    fi
    trap _medscale_on_warning USR1
    export MEDSCALE_LAUNCHER=slurm  # the registry records each attempt as a SLURM one, with $SLURM_JOB_ID
    export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}
    local py=${MEDSCALE_PYTHON:-python3} main_ip port rc
    main_ip=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
    # The batch script runs on the first node of the allocation: a port free here is free on the main host.
    port=${MEDSCALE_MAIN_PORT:-$(_medscale_free_port "$py")}
    echo "medscale: $(date '+%F %T') job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_NNODES:-1}" \
         "node(s) [$SLURM_JOB_NODELIST], main $main_ip:$port: $recipe $*"
    if [ -n "$_medscale_warned" ]; then  # the warning came before training started: nothing to save
        medscale_requeue "$MEDSCALE_EXIT_PREEMPTED"
    fi
    # --kill-on-bad-exit=0: a node that stops first must not get the others killed while rank 0 still saves.
    # --cpus-per-task: slurm 22.05's srun does not inherit it from sbatch (the launcher would get 1 CPU).
    srun --nodes="${SLURM_NNODES:-1}" --ntasks-per-node=1 \
        --cpus-per-task="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}" \
        --kill-on-bad-exit=0 ${SLURM_GPUS_PER_NODE:+--gpus-per-node="$SLURM_GPUS_PER_NODE"} \
        bash -c 'trap "" USR1 USR2
                 exec "$0" -m launcher.slurm node-run --nodes "$SLURM_NNODES" --machine-rank "$SLURM_NODEID" \
                      --main-ip "$1" --port "$2" -- "${@:3}"' \
        "$py" "$main_ip" "$port" "$recipe" "$@" &
    _medscale_srun=$!
    [ -n "$_medscale_warned" ] && kill -USR2 "$_medscale_srun" 2>/dev/null  # warned while srun was starting
    while :; do  # a trapped signal ends `wait` early (status 128+10): wait again for srun's own status
        _medscale_interrupted=""
        wait "$_medscale_srun"
        rc=$?
        [ -n "$_medscale_interrupted" ] || break
    done
    _medscale_srun=""
    case $rc in
        0) echo "medscale: $(date '+%F %T') finished" ;;
        "$MEDSCALE_EXIT_PREEMPTED") medscale_requeue "$rc" ;;
        "$MEDSCALE_EXIT_CANCELLED") echo "medscale: cancelled (medscale jobs cancel): not requeued" ;;
        *) echo "medscale: training failed with exit code $rc: not requeued" >&2 ;;
    esac
    exit "$rc"
}
