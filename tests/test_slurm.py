"""SLURM launcher: the per-node command, the batch scripts (run with stub srun/scontrol), `medscale submit slurm`,
`jobs resume` of a SLURM job, the stop-signal chain, and real jobs on a one-node SLURM cluster (CPU, tiny model):
a 2-process DDP run, and a preempted run that saves, requeues itself and resumes as attempt 2 of the same job.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import QUICK_STEP, REPO, cli, run_cli
from launcher import slurm as sl
from medscale.errors import EXIT_CANCELLED, EXIT_PREEMPTED
from medscale.recipe import RecipeError, builtin_names, load_recipe

SCRIPTS = sorted((REPO / "slurm").glob("*.sh"))
JOB_SCRIPTS = [p for p in SCRIPTS if p.name != "common.sh"]
R1_RECIPES = [
    "r1-distill-1.5b-lora-fast", "r1-distill-1.5b-lora-gentle", "r1-distill-7b-lora-fast",
    "r1-distill-7b-lora-gentle", "r1-distill-14b-lora-fast", "r1-distill-14b-lora-gentle",
]


# --------------------------------------------------------------------------- the scripts themselves

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_parses(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", JOB_SCRIPTS, ids=lambda p: p.name)
def test_every_job_script_has_header_signal_requeue_and_sources_common(script):
    text = script.read_text()
    header = text.split("#SBATCH", 1)[0]
    for part in ("Needs first:", "Submit:", "sbatch slurm/" + script.name, "Override:"):
        assert part in header, f"{script.name}: header lacks {part!r}"
    sbatch = re.findall(r"^#SBATCH (\S+)", text, re.M)
    for flag in ("--signal=B:USR1@300", "--requeue", "--open-mode=append", "--ntasks-per-node=1"):
        assert flag in sbatch, f"{script.name}: no #SBATCH {flag}"
    assert 'slurm/common.sh"' in text and "medscale_run " in text


def _seed004_trials():
    from medscale.sweep.spec import load_spec, plan_sweep

    return plan_sweep(*load_spec("r1-distill-seed004")).trials


def test_array_script_covers_the_sweep_definitions_trials():
    trials = _seed004_trials()
    assert sorted(t.recipe_ref for t in trials) == sorted(R1_RECIPES) == sorted(
        n for n in builtin_names() if n.startswith("r1-distill"))
    assert f"#SBATCH --array=0-{len(trials) - 1}" in (REPO / "slurm" / "r1_sweep.sh").read_text()


# --------------------------------------------------------------------------- the per-node command

def test_node_command_for_two_nodes_sets_machine_rank_address_and_total_processes(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the command is built on a GPU node
    r = load_recipe("qwen3-8b-lora-huatuo")
    extra = sl.node_overrides(r, 2)
    assert extra == ["dist.num_machines=2", "train.gradient_accumulation_steps=1"]  # keeps the batch of 32
    fitted = load_recipe("qwen3-8b-lora-huatuo", extra)
    cmd = sl.node_command(fitted, "qwen3-8b-lora-huatuo", extra, machine_rank=1, main_ip="node07", port=29555)

    def arg(flag):
        return cmd[cmd.index(flag) + 1]

    assert cmd[:3] == [sys.executable, "-m", "launcher.accelerate_main"]
    assert (arg("--num_machines"), arg("--num_processes"), arg("--machine_rank")) == ("2", "8", "1")
    assert (arg("--main_process_ip"), arg("--main_process_port")) == ("node07", "29555")
    assert arg("--config_file") == str(REPO / "cluster" / "accelerate" / "ddp_4gpu.yaml")
    assert cmd[-5:] == ["-m", "medscale.train", "qwen3-8b-lora-huatuo", *extra]
    one = sl.node_command(r, "qwen3-8b-lora-huatuo", [], machine_rank=0, main_ip="node07", port=29555)
    assert one[one.index("--num_machines") + 1] == "1" and one[one.index("--num_processes") + 1] == "4"


def test_a_node_count_that_breaks_the_recipes_batch_is_refused():
    with pytest.raises(RecipeError, match="effective_batch_size"):
        sl.node_overrides(load_recipe("qwen3-8b-lora-huatuo"), 4)
    assert sl.node_overrides(load_recipe("tiny-demo"), 2) == ["dist.num_machines=2"]  # no declared batch


def test_a_one_process_job_runs_the_training_module_itself():
    cmd = sl.node_command(load_recipe("qwen3-1.7b-qlora-v1"), "qwen3-1.7b-qlora-v1", ["train.max_steps=5"],
                          machine_rank=0, main_ip="n1", port=1)
    assert cmd == [sys.executable, "-m", "medscale.train", "qwen3-1.7b-qlora-v1", "train.max_steps=5"]


# --------------------------------------------------------------------------- batch scripts with stub srun/scontrol

def _stubs(tmp: Path) -> Path:
    """srun records its argv (NUL-separated) and its signals, then exits $STUB_RC after $STUB_SLEEP s; scontrol
    answers `show hostnames` and records `requeue`; a fake python echoes its argv."""
    bin_ = tmp / "bin"
    bin_.mkdir()
    (bin_ / "srun").write_text(textwrap.dedent("""\
        #!/bin/bash
        printf '%s\\0' "$@" > "$STUB_DIR/srun.args"
        trap 'echo USR2 >> "$STUB_DIR/srun.signals"' USR2
        trap 'echo TERM >> "$STUB_DIR/srun.signals"' TERM
        touch "$STUB_DIR/srun.started"
        end=$((SECONDS + ${STUB_SLEEP:-0}))
        while [ $SECONDS -lt $end ] && [ ! -e "$STUB_DIR/srun.finish" ]; do sleep 0.1; done
        exit "${STUB_RC:-0}"
        """))
    (bin_ / "scontrol").write_text(textwrap.dedent("""\
        #!/bin/bash
        case "$1 $2" in
          "show hostnames") echo node07; echo node08 ;;
          requeue*) echo "$2" >> "$STUB_DIR/requeued" ;;
          *) echo "stub scontrol: $*" >&2; exit 1 ;;
        esac
        """))
    # a fake python that echoes its argv, except for the medscale CLI, which the batch shell itself runs (the sweep
    # script asks it for its trial)
    (bin_ / "python").write_text(f'#!/bin/bash\n[ "$1 $2" = "-m medscale.cli" ] && exec {sys.executable} "$@"\n'
                                 'printf "%s\\0" "$@"\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    return bin_


def _batch_env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MEDSCALE_MAIN_PORT", "MEDSCALE_RECIPE"))}
    env.update(PATH=f"{_stubs(tmp)}:{env['PATH']}", STUB_DIR=str(tmp), SLURM_JOB_ID="42", SLURM_NNODES="2",
               SLURM_NODEID="0", SLURM_JOB_NODELIST="node[07-08]", SLURM_CPUS_PER_TASK="32",
               SLURM_GPUS_PER_NODE="4", SLURM_SUBMIT_DIR=str(REPO), MEDSCALE_MAIN_PORT="29555",
               MEDSCALE_PYTHON=str(tmp / "bin" / "python"))
    env.update(extra)
    return env


def _srun_args(tmp: Path) -> list[str]:
    return (tmp / "srun.args").read_text().split("\0")[:-1]


def _node_argv(tmp: Path, srun_args: list[str], node_id: str) -> list[str]:
    """Run srun's `bash -c SCRIPT ARGS` as SLURM would on node `node_id`: what the node wrapper is started with."""
    at = srun_args.index("bash")
    env = {**os.environ, "SLURM_NODEID": node_id, "SLURM_NNODES": "2"}
    out = subprocess.run(srun_args[at:], env=env, capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


def test_8b_script_starts_one_launcher_per_node_with_the_rank_read_on_each_node(tmp_path):
    r = subprocess.run(["bash", str(REPO / "slurm" / "8b_huatuo.sh"), "train.learning_rate=5e-6", "adapter.r=8"],
                       env=_batch_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    args = _srun_args(tmp_path)
    for flag in ("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=32", "--gpus-per-node=4",
                 "--kill-on-bad-exit=0"):
        assert flag in args
    script = args[args.index("-c") + 1]
    assert '"$SLURM_NODEID"' in script, "machine rank must be expanded on each node, not in the batch shell"
    assert args[args.index("-c") + 2:] == [str(tmp_path / "bin" / "python"), "node07", "29555",
                                           "qwen3-8b-lora-huatuo", "train.learning_rate=5e-6", "adapter.r=8"]
    for node in ("0", "1"):
        argv = _node_argv(tmp_path, args, node)
        assert argv[:3] == ["-m", "launcher.slurm", "node-run"]
        assert argv[argv.index("--machine-rank") + 1] == node and argv[argv.index("--main-ip") + 1] == "node07"
        # the same arguments through `node-command` give this node's accelerate command
        p = subprocess.run([sys.executable, "-m", "launcher.slurm", "node-command", *argv[3:]], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        cmd = shlex.split(p.stdout)
        assert cmd[cmd.index("--machine_rank") + 1] == node and cmd[cmd.index("--num_machines") + 1] == "2"
        assert cmd[cmd.index("--main_process_ip") + 1] == "node07" and cmd[cmd.index("--num_processes") + 1] == "8"
        assert cmd[-4:] == ["train.learning_rate=5e-6", "adapter.r=8", "dist.num_machines=2",
                            "train.gradient_accumulation_steps=1"]
    assert "job 42" in r.stdout and "main node07:29555" in r.stdout


@pytest.mark.parametrize("code,requeued", [(EXIT_PREEMPTED, True), (EXIT_CANCELLED, False), (1, False), (0, False)])
def test_exit_75_requeues_the_job_and_other_codes_do_not(tmp_path, code, requeued):
    r = subprocess.run(["bash", str(REPO / "slurm" / "1p7b_qlora.sh")],
                       env=_batch_env(tmp_path, STUB_RC=str(code)), capture_output=True, text=True, timeout=60)
    assert r.returncode == code, r.stdout + r.stderr
    assert (tmp_path / "requeued").is_file() == requeued
    if requeued:
        assert (tmp_path / "requeued").read_text().split() == ["42"]


@pytest.mark.parametrize("task", [0, 4])
def test_array_tasks_run_the_sweeps_trials_as_trials_of_one_sweep(tmp_path, task, medscale_home):
    """Array task i runs trial i of the sweep definition (its recipe, name and output dir, with the trial entry),
    and the sweep with all its trials is in the registry: `medscale sweep show` ranks what SLURM trained."""
    trial = _seed004_trials()[task]
    r = subprocess.run(["bash", str(REPO / "slurm" / "r1_sweep.sh"), "train.save_steps=5"],
                       env=_batch_env(tmp_path, SLURM_ARRAY_TASK_ID=str(task), SLURM_NNODES="1"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    args = _srun_args(tmp_path)
    at = args.index(trial.recipe_ref)
    assert args[at:] == [trial.recipe_ref, *trial.overrides, "train.save_steps=5"]
    assert f"name=r1-distill-seed004.{trial.label}" in args and f"train.output_dir={trial.output_dir}" in args
    argv = _node_argv(tmp_path, args, "0")
    p = subprocess.run([sys.executable, "-m", "launcher.slurm", "node-command", *argv[3:]], cwd=REPO,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "MEDSCALE_ENTRY": "trial"})
    assert p.returncode == 0, p.stderr
    cmd = shlex.split(p.stdout)
    at = cmd.index("medscale.sweep")  # the trial entry runs on the node
    assert cmd[at - 1] == "-m" and cmd[at + 1] == trial.recipe_ref
    from medscale.registry import Registry

    reg = Registry()
    try:
        sweep = reg.sweep("r1-distill-seed004")
        assert len(sweep.trials) == 6 and all(t.job.kind == "trial" and t.job.status == "queued" for t in sweep.trials)
    finally:
        reg.close()


def test_a_preempted_array_task_requeues_only_itself(tmp_path):
    # The first task of array 11 runs as SLURM job 11, the array's own id: `scontrol requeue 11` would requeue
    # every running task of the array.
    r = subprocess.run(["bash", str(REPO / "slurm" / "r1_sweep.sh")],
                       env=_batch_env(tmp_path, SLURM_JOB_ID="11", SLURM_ARRAY_JOB_ID="11", SLURM_ARRAY_TASK_ID="0",
                                      SLURM_NNODES="1", STUB_RC="75"), capture_output=True, text=True, timeout=60)
    assert r.returncode == EXIT_PREEMPTED, r.stdout + r.stderr
    assert (tmp_path / "requeued").read_text().split() == ["11_0"]


def test_array_task_without_a_trial_is_refused(tmp_path):
    r = subprocess.run(["bash", str(REPO / "slurm" / "r1_sweep.sh")],
                       env=_batch_env(tmp_path, SLURM_ARRAY_TASK_ID="6"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "array task 6: sweep r1-distill-seed004 has 6 trials" in r.stderr
    assert not (tmp_path / "srun.args").exists()


@pytest.mark.parametrize("args,env,want", [
    ([], {}, ["qwen3-1.7b-qlora-v1"]),
    (["qwen3-1.7b-qlora-v3", "train.max_steps=5"], {}, ["qwen3-1.7b-qlora-v3", "train.max_steps=5"]),
    (["train.max_steps=5"], {"MEDSCALE_RECIPE": "qwen3-1.7b-qlora-v2"}, ["qwen3-1.7b-qlora-v2", "train.max_steps=5"]),
])
def test_1p7b_script_picks_its_recipe(tmp_path, args, env, want):
    r = subprocess.run(["bash", str(REPO / "slurm" / "1p7b_qlora.sh"), *args],
                       env=_batch_env(tmp_path, SLURM_NNODES="1", **env), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    srun = _srun_args(tmp_path)
    assert srun[srun.index("29555") + 1:] == want


def test_warning_signal_reaches_srun_as_sigusr2_and_the_script_waits_for_the_real_exit_code(tmp_path):
    """SLURM's B:USR1 (here: twice) becomes SIGUSR2 to srun (which forwards it to the step), never a SIGTERM that
    srun would turn into a kill; the script then still gets srun's own exit code (75) and requeues."""
    proc = subprocess.Popen(["bash", str(REPO / "slurm" / "8b_huatuo.sh")],
                            env=_batch_env(tmp_path, STUB_RC="75", STUB_SLEEP="60"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    end = time.time() + 30
    while not (tmp_path / "srun.started").exists() and time.time() < end:
        time.sleep(0.05)
    for _ in range(2):
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
    (tmp_path / "srun.finish").touch()
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == EXIT_PREEMPTED, out
    assert (tmp_path / "srun.signals").read_text().split() == ["USR2", "USR2"]
    assert (tmp_path / "requeued").read_text().split() == ["42"] and "stop signal" in out


# --------------------------------------------------------------------------- the node wrapper's signal handling

FAKE_LAUNCHER = """\
import os, signal, subprocess, sys, time
# Like torchrun: on SIGTERM forward one SIGTERM to each worker, wait for them, exit 1 (a worker failed).
log = sys.argv[1]
if len(sys.argv) > 2:  # a worker: logs every SIGTERM; SIGUSR2 keeps the disposition it inherited
    signal.signal(signal.SIGTERM, lambda s, f: open(log, "a").write(f"{os.getpid()} TERM\\n"))
    open(log + ".pids", "a").write(f"worker {os.getpid()}\\n")
    end = time.time() + 5
    while time.time() < end:
        time.sleep(0.05)
    sys.exit(75)
kids = [subprocess.Popen([sys.executable, __file__, log, "worker"]) for _ in range(2)]
signal.signal(signal.SIGTERM, lambda s, f: [k.send_signal(signal.SIGTERM) for k in kids])
open(log + ".pids", "a").write(f"launcher {os.getpid()}\\n")
sys.exit(1 if any(k.wait() for k in kids) else 0)
"""


def test_node_wrapper_turns_the_step_wide_sigusr2_into_one_sigterm_per_worker(tmp_path):
    """srun delivers SIGUSR2 to every process of the step: launcher and workers ignore it, the wrapper sends one
    SIGTERM to the launcher (a second SIGUSR2 adds nothing), and each worker receives SIGTERM exactly once."""
    launcher, log = tmp_path / "fake_launcher.py", tmp_path / "signals.log"
    launcher.write_text(FAKE_LAUNCHER)
    wrapper = subprocess.Popen([sys.executable, "-c", "import sys; from launcher.slurm import run_stoppable; "
                                f"sys.exit(run_stoppable([sys.executable, {str(launcher)!r}, {str(log)!r}], {{}}))"],
                               cwd=REPO, stderr=subprocess.PIPE, text=True)
    pids = Path(str(log) + ".pids")
    end = time.time() + 60
    while (not pids.exists() or len(pids.read_text().splitlines()) < 3) and time.time() < end:
        time.sleep(0.05)
    started = [line.split() for line in pids.read_text().splitlines()]
    workers = [int(pid) for role, pid in started if role == "worker"]
    for _ in range(2):
        for pid in [wrapper.pid, *(int(pid) for _, pid in started)]:
            os.kill(pid, signal.SIGUSR2)
        time.sleep(0.3)
    err = wrapper.communicate(timeout=60)[1]
    assert wrapper.returncode == 1, err  # the launcher's code; node_run maps it to 75 from the journal
    lines = log.read_text().split("\n")[:-1]
    assert sorted(lines) == sorted(f"{pid} TERM" for pid in workers), lines
    assert err.count("stop requested") == 1


# --------------------------------------------------------------------------- medscale submit slurm / jobs resume

def test_submit_dry_run_prints_the_batch_script_and_submits_nothing(tmp_path):
    p = cli("submit", "slurm", "tiny-demo", "dist.num_processes=2", "train.max_steps=6", "--gpus-per-node", "0",
            "--dry-run", env={"PATH": str(tmp_path)})  # no sbatch on PATH: nothing can be submitted
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = [ln.split(" ", 1)[1] for ln in lines if ln.startswith("#SBATCH ")]
    for flag in ("--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=2", "--signal=B:USR1@300", "--requeue",
                 "--open-mode=append", "--export=ALL", "--job-name=tiny-demo"):
        assert flag in sbatch
    assert not any(f.startswith("--gpus") for f in sbatch), "--gpus-per-node 0 asks for no GPUs"
    assert lines[-1] == "medscale_run tiny-demo dist.num_processes=2 train.max_steps=6"
    assert f"export MEDSCALE_REPO={REPO}" in lines and 'source "$MEDSCALE_REPO/slurm/common.sh"' in lines
    assert "export MEDSCALE_ENTRY=train" in lines and "export MEDSCALE_LAUNCHER=slurm" in lines
    options = next(ln for ln in lines if ln.startswith("export MEDSCALE_LAUNCH_OPTIONS="))
    assert json.loads(shlex.split(options.split("=", 1)[1])[0])["gpus_per_node"] == "0"
    assert subprocess.run(["bash", "-n"], input=p.stdout, text=True).returncode == 0


def _plan(recipe: str, overrides: list[str], options: dict | None = None, launcher: sl.SlurmLauncher | None = None):
    from medscale.jobs.launch import LaunchRequest, entry_for

    launcher = launcher or sl.SlurmLauncher(executor=lambda cmd, script: pytest.fail("submitted"),
                                            state=lambda job: None)
    return launcher.prepare(LaunchRequest(load_recipe(recipe, overrides), recipe, overrides, entry_for("train"),
                                          options or {}))


def test_submit_options_shape_the_script():
    plan = _plan("qwen3-8b-lora-huatuo", ["train.learning_rate=5e-6"],
                 {"nodes": 2, "partition": "gpu", "time": "24:00:00", "sbatch_args": ["--qos=high"]})
    sbatch = re.findall(r"^#SBATCH (\S+)", plan.script, re.M)
    for flag in ("--nodes=2", "--gpus-per-node=4", "--cpus-per-task=32", "--partition=gpu", "--time=24:00:00",
                 "--qos=high"):
        assert flag in sbatch
    assert plan.script.rstrip().endswith("medscale_run qwen3-8b-lora-huatuo train.learning_rate=5e-6")
    cpu = _plan("tiny-demo", [], {"gpus_per_node": "0", "procs_per_node": 2})
    assert cpu.script.rstrip().endswith("medscale_run tiny-demo dist.num_processes=2")
    with pytest.raises(RecipeError, match="effective_batch_size"):
        _plan("qwen3-8b-lora-huatuo", [], {"nodes": 4})


@pytest.mark.parametrize("option,value", [
    ("partition", "gpu\ntouch /tmp/pwned"), ("account", "lab\r"), ("time", "1:00:00 --no-requeue"),
    ("output", "/tmp/x.out\n#SBATCH --requeue"), ("sbatch_args", ["--qos=high\nrm -rf ~"]),
    ("sbatch_args", ["qos=high"]), ("partition", "gpu;id"), ("account", "$(id)")])
def test_control_characters_and_shell_characters_never_reach_the_batch_script(option, value, tmp_path):
    """Defect: a newline in --partition (and others) ended the #SBATCH line and the rest ran as a command."""
    with pytest.raises(sl.LaunchError) as e:
        _plan("tiny-demo", [f"train.output_dir={tmp_path}/out"], {option: value, "gpus_per_node": "0"})
    assert ("--sbatch-arg" if option == "sbatch_args" else f"--{option}") in str(e.value)


def test_a_recipe_name_with_a_newline_is_refused_before_any_script_exists(tmp_path):
    """The recipe name becomes --job-name; a recorded recipe from a shared registry is input too."""
    bad = tmp_path / "bad.yaml"
    bad.write_text('base: tiny-demo\nname: "demo\\ntouch /tmp/pwned"\n')
    p = cli("submit", "slurm", str(bad), "--gpus-per-node", "0", "--dry-run")
    assert p.returncode == 2 and "name" in p.stderr and "#SBATCH" not in p.stdout


def test_submit_hands_the_script_to_the_executor_records_it_queued_and_returns_the_job_id(tmp_path):
    from medscale.registry import Registry

    seen = []
    launcher = sl.SlurmLauncher(executor=lambda cmd, script: seen.append((cmd, script)) or "123;cluster\n",
                                state=lambda job: None)
    out = tmp_path / "out"
    plan = _plan("tiny-demo", ["train.max_steps=6", f"train.output_dir={out}"],
                 {"gpus_per_node": "0", "output": str(tmp_path / "x.out")}, launcher)
    handle = launcher.submit(plan)
    assert handle.job_id == "123" and seen[0][0] == ["sbatch", "--parsable"] and seen[0][1] == plan.script
    reg = Registry()
    job = reg.job(reg.find(str(out)))
    assert (job.status, job.launcher, job.kind) == ("queued", "slurm", "train")
    assert job.launcher_options["gpus_per_node"] == "0" and job.launcher_options["nodes"] == 1


def test_jobs_resume_of_a_slurm_job_resubmits_the_recorded_recipe_with_its_resources(tmp_path, medscale_home):
    from medscale.jobs import ops
    from medscale.registry import AttemptInfo, JobSpec, Registry

    out = tmp_path / "run"
    r = load_recipe("tiny-demo", [f"train.output_dir={out}", "dist.num_processes=2"])
    options = {"nodes": 1, "procs_per_node": 2, "gpus_per_node": "0", "cpus_per_node": 2, "partition": "debug",
               "time": "1:00:00"}
    reg = Registry()
    try:
        reg.upsert_attempt(JobSpec(r.name, str(out), "slurm", r.to_yaml(), r.fingerprint(), launcher_options=options),
                           AttemptInfo(1, "slurm", "node07", 1, r.fingerprint(), world_size=2,
                                       launcher_ids={"slurm_job_id": "41"}, status="preempted"))
        seen = []
        launcher = sl.SlurmLauncher(executor=lambda cmd, script: seen.append(script) or "77", state=lambda job: None)
        code = ops.resume_job(reg, "tiny-demo", {"slurm": launcher})
    finally:
        reg.close()
    assert code == 0
    script = seen[0]
    recorded = medscale_home / "jobs" / "1" / "recipe.yaml"
    assert script.rstrip().endswith(f"medscale_run {recorded} train.resume=auto")
    sbatch = re.findall(r"^#SBATCH (\S+)", script, re.M)
    assert {"--cpus-per-task=2", "--partition=debug", "--time=1:00:00", "--requeue"} <= set(sbatch)
    assert not any(f.startswith("--gpus") for f in sbatch)


def test_resume_is_refused_while_the_jobs_slurm_job_is_still_queued(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "medscale_job.json").write_text(json.dumps({"name": "tiny-demo", "attempts": [
        {"number": 1, "launcher": "slurm", "host": "n", "pid": 1, "fingerprint": "f", "slurm_job_id": "41",
         "status": "preempted"}]}))
    over = [f"train.output_dir={out}"]
    pending = sl.SlurmLauncher(executor=lambda cmd, script: pytest.fail("submitted"), state=lambda job: "PENDING")
    with pytest.raises(sl.LaunchError, match="SLURM job 41 .* still PENDING.*scancel 41"):
        _plan("tiny-demo", over, {"gpus_per_node": "0"}, pending)
    gone = sl.SlurmLauncher(executor=lambda cmd, script: "43", state=lambda job: None)
    assert gone.submit(_plan("tiny-demo", over, {"gpus_per_node": "0"}, gone)).job_id == "43"


# --------------------------------------------------------------------------- a real one-node cluster

@pytest.fixture(scope="module")
def slurm_env():
    """munged + slurmctld + slurmd for this module (skipped where SLURM is not installed, failed under CI)."""
    from slurm_cluster import missing, slurm_cluster

    if why := missing():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {why}", pytrace=False)
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp"))  # short: the munge socket path must stay < 108
    try:
        with slurm_cluster(base) as env:
            yield env
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cluster(slurm_env, monkeypatch):
    for k, v in slurm_env.items():
        monkeypatch.setenv(k, v)
    return slurm_env


def _job_info(job_id: str) -> dict:
    r = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60)
    return dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv) if r.returncode == 0 else {}


def _log(info: dict) -> str:
    """For failure messages: the job's state, the end of its log and of slurmctld's."""
    path = info.get("StdOut", "")
    job = Path(path).read_text(errors="replace")[-6000:] if path and Path(path).is_file() else "(no job log)"
    ctld = Path(os.environ["SLURM_CONF"]).parent / "log" / "slurmctld.log"
    tail = "\n".join(ctld.read_text(errors="replace").splitlines()[-25:]) if ctld.is_file() else ""
    return f"{info}\n--- job log\n{job}\n--- slurmctld.log\n{tail}"


FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def _wait_job(job_id: str, timeout: float = 600) -> dict:
    """Poll until the job has ended for good (the same final state twice in a row, a second apart).

    A requeued job is held until BeginTime = requeue + cred_expire + 1 s (121 s): slurmd refuses to start a job
    whose launch credential is not newer than the revocation of its previous run ("Killing non-startable batch
    job: Job credential revoked"; the comparison is in whole seconds). Two minutes would double this test, so
    the hold is cut short: `scontrol update starttime=now` (which also runs the scheduler at once; a start time
    in the future waits for its next periodic pass) once the hold has been seen for 2 s, past that second."""
    end = time.time() + timeout
    info: dict = {}
    seen = held = None
    while time.time() < end:
        info = _job_info(job_id)
        state = (info.get("JobState", ""), info.get("Restarts"))
        if state[0] == "PENDING" and info.get("Reason") == "BeginTime":
            held = held or time.time()
            if time.time() - held >= 2:
                subprocess.run(["scontrol", "update", f"jobid={job_id}", "starttime=now"], capture_output=True,
                               timeout=60)
                held = None
        elif state[0] in FINAL:
            if state == seen:
                return info
            seen = state
        time.sleep(1)
    subprocess.run(["scancel", job_id], capture_output=True)
    raise AssertionError(f"SLURM job {job_id} did not end in {timeout} s:\n{_log(info)}")


def _submit(*args: str, env: dict | None = None) -> str:
    p = run_cli("submit", "slurm", *args, "--gpus-per-node", "0", env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return re.search(r"Submitted SLURM job (\d+)", p.stdout).group(1)


def _job_row(out: Path) -> dict:
    from medscale.registry import Registry

    reg = Registry()
    try:
        return reg.job(reg.find(str(out))).to_dict()
    finally:
        reg.close()


def _demo(model: Path, out: Path, *extra: str) -> list[str]:
    return ["tiny-demo", "dist.num_processes=2", f"model.path={model}", f"train.output_dir={out}",
            "eval.eval_strategy=no", "track.swanlab=null", *QUICK_STEP, *extra]


@pytest.mark.slow
def test_sbatch_runs_two_process_ddp_and_the_registry_records_the_slurm_job(cluster, tiny_model_dir, tmp_path):
    out = tmp_path / "ddp"
    job_id = _submit(*_demo(tiny_model_dir, out, "train.max_steps=6", "train.save_steps=3"))
    info = _wait_job(job_id)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), _log(info)
    job = _job_row(out)
    assert job["status"] == "succeeded" and job["launcher"] == "slurm" and job["attempts"] == 1
    (attempt,) = job["attempt_list"]
    assert attempt["launcher"] == "slurm" and attempt["launcher_ids"]["slurm_job_id"] == job_id
    assert attempt["world_size"] == 2
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_per_rank"] == [6, 6]
    # a static script's job records what it asked SLURM for, so `jobs resume` asks for it again
    assert job["launcher_options"]["nodes"] == 1 and job["launcher_options"]["cpus_per_node"] >= 1


@pytest.mark.slow
def test_warning_signal_saves_exits_75_requeues_and_the_next_start_resumes(cluster, tiny_model_dir, tmp_path):
    """`scancel --signal=USR1 --batch` is what `#SBATCH --signal=B:USR1@300` sends before the time limit."""
    from medscale.registry import Registry

    out = tmp_path / "pre"
    env = {"MEDSCALE_HEARTBEAT_S": "0.5"}  # reaches the job through sbatch's --export=ALL
    job_id = _submit(*_demo(tiny_model_dir, out, "train.max_steps=30", "train.save_steps=1000",
                            "train.logging_steps=1"), env=env)
    end = time.time() + 600
    while True:
        reg = Registry()
        try:
            rows = reg.jobs()
        finally:
            reg.close()
        if rows and rows[0].step >= 2:
            break
        info = _job_info(job_id)
        assert info.get("JobState") in (None, "PENDING", "CONFIGURING", "RUNNING") and time.time() < end, \
            f"the job never reached step 2:\n{_log(info)}"
        time.sleep(0.2)
    r = subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = _wait_job(job_id, timeout=900)
    log = _log(info)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), log
    job = _job_row(out)
    first, second = job["attempt_list"]
    assert (first["status"], second["status"], job["status"]) == ("preempted", "completed", "succeeded")
    assert first["launcher_ids"]["slurm_job_id"] == second["launcher_ids"]["slurm_job_id"] == job_id
    saved = out / f"checkpoint-{first['step']}"
    assert 2 <= first["step"] < 30 and second["resumed_from"] == str(saved) and second["step"] == 30
    assert {(c["step"], c["verified"], c["attempt"]) for c in job["checkpoints"]} >= {(first["step"], True, 1)}
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 30
    full = Path(info["StdOut"]).read_text(errors="replace")
    assert full.count("stop requested") == 1 and "scontrol requeue" in full
    assert len(re.findall(r"Sending process \d+ closing signal SIGTERM", full)) == 2  # one per worker
